"""Benchmark CLI: `.venv/bin/python bench/slow_readers.py` (its scenarios live in
relay_app/tools/slow_readers.py, shared with the tests)."""

from relay_app.tools.slow_readers import main

if __name__ == "__main__":
    main()
