"""`python -m relay_app.check`: the guide's connectivity check (tools/check.py)."""

import sys

from relay_app.tools.check import main

if __name__ == "__main__":
    sys.exit(main())
