"""The browser tests' one Chromium per module (chromium() and the pages' helpers are in
test_browser.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest


@pytest.fixture(scope="module")
async def module_chromium(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> AsyncIterator[Any]:
    """One Chromium for the module's tests (a launch costs about a second), as
    test_browser.chromium makes it; a module with `AUTOPLAY = False` gets one where pages
    need a tap to play. Tests take it through `own_contexts`, which closes what they leave."""
    from .test_browser import chromium  # (skips the test, as that module does, without one)

    autoplay = getattr(request.module, "AUTOPLAY", True)
    async with chromium(tmp_path_factory.mktemp("chromium"), autoplay=autoplay) as launched:
        yield launched
