"""`python -m relay_app.perf`: the guide's latency measurement (tools/perf.py)."""

import sys

from relay_app.tools.perf import main

if __name__ == "__main__":
    sys.exit(main())
