"""The docs say what the code does: generated config table, every log event documented."""

from __future__ import annotations

from relay_app.config import configuration_markdown
from relay_app.logs import LEGACY_MESSAGES

from .server import REPO


def test_configuration_doc_matches_the_settings_model() -> None:
    doc = (REPO / "docs" / "configuration.md").read_text()
    assert doc == configuration_markdown(), (
        "docs/configuration.md is stale: run `.venv/bin/python -m relay_app.config > "
        "docs/configuration.md`"
    )


def test_troubleshooting_doc_maps_every_guide_pattern_to_its_event() -> None:
    doc = (REPO / "docs" / "troubleshooting.md").read_text()
    for event in LEGACY_MESSAGES:
        assert f"`{event}`" in doc, event
