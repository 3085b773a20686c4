"""`python -m relay_app.client send|listen` (cli.py)."""

import sys

from .cli import main

sys.exit(main())
