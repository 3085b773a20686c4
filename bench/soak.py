"""Benchmark CLI: `.venv/bin/python bench/soak.py` (its scenarios live in
relay_app/tools/soak.py, shared with the tests)."""

from relay_app.tools.soak import main

if __name__ == "__main__":
    main()
