"""`python -m relay_app.prometheus`: docs/metrics.md, the metrics a scrape returns
(relay_app.endpoints.prometheus serves them; relay_app.tools.docs writes the table)."""

import asyncio

from relay_app.tools.docs import default_metrics_markdown

if __name__ == "__main__":
    print(asyncio.run(default_metrics_markdown()), end="")
