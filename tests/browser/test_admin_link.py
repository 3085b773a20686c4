"""Admin links (`/admin#token=...`) in real Chromium against a real server with auth on: a
link's token never replaces a token that works unless the operator says so, and a token the
server refuses replaces nothing.

Each link is opened in a new tab of one browser context (one device: the tabs share its
localStorage), as an operator clicking a link in a chat or an e-mail would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from relay_app.tools.testing import ServerProcess

from ..helpers import SECRET, assert_no_leaks, serving, token
from .test_browser import own_contexts, screenshot
from .test_hall import no_serious_accessibility_problems

pytestmark = pytest.mark.anyio

STORED = "relay_app.admin_token"  # admin.js keeps the operator's token here


@pytest.fixture(scope="module")
def relay_mode() -> str:
    return "forward"  # page logic: the relay mode does not change it


@pytest.fixture(scope="module")
def console_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    metrics = {"Authorization": f"Bearer {token('metrics')}"}
    yield from serving(tmp_path_factory.mktemp("console"), {"auth": {"secret": SECRET}}, metrics)


@pytest.fixture
def server(console_server: ServerProcess) -> Any:
    yield console_server
    assert_no_leaks(console_server)


@pytest.fixture
async def device(module_chromium: Any) -> AsyncIterator[Any]:
    """One browser profile: its tabs share localStorage. (CSP bypassed only so that axe-core
    can be injected.)"""
    async with own_contexts(module_chromium) as browser:
        yield await browser.new_context(bypass_csp=True)


async def open_tab(device: Any, url: str) -> Any:
    page = await device.new_page()
    page.on("console", lambda message: print(f"[page] {message.type}: {message.text}"))
    await page.goto(url)
    return page


async def settled(page: Any) -> str:
    """The console's state once it has tried the API: ready or unauthorized."""
    await page.wait_for_function(
        "() => ['ready', 'unauthorized'].includes(document.body?.dataset.state)", timeout=15000
    )
    return str(await page.evaluate("() => document.body?.dataset.state"))


async def stored(page: Any) -> str | None:
    value = await page.evaluate("key => localStorage.getItem(key)", STORED)
    return None if value is None else str(value)


async def notice(page: Any) -> str:
    await page.wait_for_selector("#notice:not([hidden])")
    return str(await page.text_content("#notice"))


async def test_a_link_with_a_refused_token_never_replaces_a_working_one(
    server: ServerProcess, device: Any
) -> None:
    good = token("admin", subject="operator")
    first = await open_tab(device, f"{server.base_url}/admin#token={good}")
    assert await settled(first) == "ready"  # nothing stored yet: a working link's token is kept
    assert await stored(first) == good
    assert await first.is_hidden("#link-token")
    await first.close()
    for bad in ("junk", token("receive"), token("admin", ttl=-60)):  # wrong, not admin, expired
        tab = await open_tab(device, f"{server.base_url}/admin#token={bad}")
        assert await settled(tab) == "ready", await tab.text_content("#status")
        assert await stored(tab) == good
        said = await notice(tab)
        assert "not accepted" in said and "keeps the admin token it had" in said, said
        await screenshot(tab, "console-link-refused")
        assert await tab.evaluate("() => location.href") == f"{server.base_url}/admin"
        await tab.close()


async def test_a_link_with_another_working_token_asks_before_replacing(
    server: ServerProcess, device: Any
) -> None:
    good, other = token("admin", subject="operator"), token("admin", subject="deputy")
    first = await open_tab(device, f"{server.base_url}/admin#token={good}")
    assert await settled(first) == "ready"  # (the token is stored once the server took it)
    await first.close()
    tab = await open_tab(device, f"{server.base_url}/admin#token={other}")
    await tab.wait_for_selector("#link-token:not([hidden])")
    assert await settled(tab) == "ready"  # it works meanwhile on the token it has
    assert await stored(tab) == good
    await screenshot(tab, "console-link-token")
    await no_serious_accessibility_problems(tab)
    await tab.click("#link-token-keep")
    assert "kept" in await notice(tab)
    assert await tab.is_hidden("#link-token")
    assert await stored(tab) == good
    await tab.close()
    tab = await open_tab(device, f"{server.base_url}/admin?token={other}")  # the query form
    await tab.wait_for_selector("#link-token:not([hidden])")
    await tab.click("#link-token-use")
    assert "now uses the admin token from the link" in await notice(tab)
    assert await stored(tab) == other
    assert await settled(tab) == "ready"
    assert await tab.evaluate("() => location.href") == f"{server.base_url}/admin"
    await tab.close()


async def test_a_working_link_replaces_a_token_that_no_longer_works_without_asking(
    server: ServerProcess, device: Any
) -> None:
    tab = await open_tab(device, f"{server.base_url}/admin")
    assert await settled(tab) == "unauthorized"  # nothing stored: paste one
    await tab.evaluate("([key, old]) => localStorage.setItem(key, old)", [STORED, "expired"])
    await tab.close()
    good = token("admin")
    tab = await open_tab(device, f"{server.base_url}/admin#token={good}")
    assert await settled(tab) == "ready"
    assert await stored(tab) == good
    assert await tab.is_hidden("#link-token")
    await tab.close()


async def test_a_refused_link_on_a_new_device_stores_nothing(
    server: ServerProcess, device: Any
) -> None:
    tab = await open_tab(device, f"{server.base_url}/admin#token=junk")
    assert await settled(tab) == "unauthorized"
    assert await stored(tab) is None
    status = await tab.text_content("#status")
    assert status == (
        "The admin token in the link you opened is not accepted here (wrong or expired). "
        "Paste an admin token to use this console."
    ), status
    await tab.close()
