"""`python -m relay_app.config [--example]`: docs/configuration.md or docs/config.example.json.

The settings themselves are relay_app.core.config; the generators are relay_app.tools.docs.
"""

import sys

from relay_app.tools.docs import configuration_markdown, example_config

if __name__ == "__main__":
    print(example_config() if "--example" in sys.argv else configuration_markdown(), end="")
