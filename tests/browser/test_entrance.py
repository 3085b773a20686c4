"""The entrance of an event with auth on: the operator opens the entrance display from the
console, a phone scans one of its codes and plays; no page shows a code or a link that leads
to "This page needs an invitation".

Real Chromium (a phone: 390x844 with touch; a laptop: 1280x800) against a real server with
`auth.secret` and two channels. The codes are read back from screenshots with Debian's zbar
(`zbarimg`), as a phone's camera would read the screen, and every link they hold is opened in
a fresh phone (no stored token) that must play the channel's tone.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import jwt
import pytest

from relay_app.client import RelayClient, ToneTrack
from relay_app.tools.testing import ServerProcess

from ..helpers import SECRET, assert_no_leaks, need, serving, token
from .test_browser import heard_by_page, own_contexts, wait_state
from .test_hall import (
    CHANNELS,
    PHONE,
    SHOTS,
    every_control_reachable_by_keyboard,
    no_serious_accessibility_problems,
    play_with_at_most_one_tap,
)

pytestmark = pytest.mark.anyio

LAPTOP = {"viewport": {"width": 1280, "height": 800}}
# A phone's real screen (390x844 at 3 pixels per point): what a visitor shows another phone.
PHONE_SCREEN = {**PHONE, "device_scale_factor": 3}
TONES = {"english": 440.0, "french": 660.0}
SPOKEN = {"english": "English", "french": "Français"}
INVITE_SECONDS = 12 * 3600  # entrance.js: an invite works for the day of an event


@pytest.fixture(scope="module")
def relay_mode() -> str:
    return "forward"  # page logic: the relay mode does not change it


# The module's server: conftest.secure_server (auth on) with these channels.
SECURE_CONFIG = {"channels": CHANNELS}


@pytest.fixture(scope="module")
def event_server(secure_server: ServerProcess) -> ServerProcess:
    return secure_server


@pytest.fixture
def event(event_server: ServerProcess) -> Iterator[ServerProcess]:
    yield event_server
    assert_no_leaks(event_server)


AUTOPLAY = False  # the module's Chromium is as on a phone: nothing plays before a tap


@pytest.fixture
async def phones(module_chromium: Any) -> AsyncIterator[Any]:
    async with own_contexts(module_chromium) as shared:
        yield shared


@contextlib.asynccontextmanager
async def speakers(server: ServerProcess) -> AsyncIterator[None]:
    """A tone on each channel: 440 Hz on English, 660 Hz on Français."""
    async with (
        RelayClient.connect(server.ws_url, token=token("send")) as english,
        RelayClient.connect(server.ws_url, token=token("send")) as french,
    ):
        await english.start_sending(ToneTrack(TONES["english"]), channel="english")
        await french.start_sending(ToneTrack(TONES["french"]), channel="french")
        yield


async def device(browser: Any, shape: dict[str, Any] = PHONE) -> Any:
    """A new device (its own storage). CSP bypassed only so that axe-core can be injected."""
    return await browser.new_context(**shape, bypass_csp=True)


async def open_page(context: Any, url: str) -> Any:
    page = await context.new_page()
    page.on("console", lambda message: print(f"[page] {message.type}: {message.text}"))
    await page.goto(url)
    return page


def decoded(png: Path) -> list[str]:
    """What zbar reads in an image: one text per code found."""
    zbarimg = need("zbarimg", "zbar-tools")
    result = subprocess.run(
        # (QR codes only: zbar also finds a stray EAN-8 in a code's modules now and then)
        [zbarimg, "--raw", "-q", "-Sdisable", "-Sqrcode.enable", str(png)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode in (0, 4), result.stderr  # 4: no code in the image
    return [line for line in result.stdout.splitlines() if line]


def invite_of(url: str) -> dict[str, Any]:
    """The claims of the token in a Listen link (checked with the server's secret)."""
    tokens = parse_qs(urlsplit(url).query).get("token")
    assert tokens, f"no token in {url}"
    claims: dict[str, Any] = jwt.decode(tokens[0], SECRET, ["HS256"], audience="relay_app")
    return claims


async def plays(browser: Any, url: str, channel: str) -> None:
    """A fresh phone (no stored token) opens `url` and plays `channel`'s tone."""
    context = await device(browser)
    try:
        page = await open_page(context, url)
        await play_with_at_most_one_tap(page)
        assert f"Playing {SPOKEN[channel]}" in (await page.text_content("#status") or "")
        heard = await heard_by_page(page, 2.0)
        assert abs(heard["freq"] - TONES[channel]) <= 15, (channel, heard)
    finally:
        await context.close()


async def codes_ready(page: Any, count: int) -> None:
    """The entrance display shows `count` codes, each loaded."""
    await wait_state(page, "ready")
    await page.wait_for_function(
        "n => { const imgs = [...document.querySelectorAll('#codes img')];"
        " return imgs.length === n && imgs.every((i) => i.complete && i.naturalWidth > 0); }",
        arg=count,
        timeout=15000,
    )


async def shoot_codes(page: Any, name: str) -> list[str]:
    """A screenshot of what the screen shows (no scrolling), and the codes zbar reads in it."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    await page.screenshot(path=str(path))
    return decoded(path)


async def fits_the_screen(page: Any) -> None:
    overflow = await page.evaluate(
        "() => [document.documentElement.scrollWidth - innerWidth,"
        " document.documentElement.scrollHeight - innerHeight]"
    )
    assert overflow[0] <= 0 and overflow[1] <= 0, f"scrolls by {overflow} px"


def by_channel(urls: list[str], server: ServerProcess) -> dict[str, str]:
    found = {}
    for url in urls:
        assert url.startswith(f"{server.base_url}/listen/"), url
        found[urlsplit(url).path.removeprefix("/listen/")] = url
    return found


async def visible_codes(page: Any, tmp_path: Path) -> list[str]:
    """What each QR code a page shows decodes to (a screenshot of each, read by zbar)."""
    texts = []
    images = page.locator("img[src^='/qr.svg']")
    for index in range(await images.count()):
        image = images.nth(index)
        if not await image.is_visible():
            continue
        path = tmp_path / f"code-{index}.png"
        # (shown is not drawn: a code built while others wait its turn comes a moment later)
        await image.evaluate("img => img.decode()")
        await image.screenshot(path=str(path), scale="device")
        found = decoded(path)
        assert len(found) == 1, f"code {index} of {page.url}: {found}"
        texts += found
    return texts


async def visible_links(page: Any) -> list[str]:
    return list(
        await page.evaluate(
            "() => [...document.querySelectorAll('a[href]')]"
            ".filter((a) => a.offsetParent !== null).map((a) => a.href)"
        )
    )


def needs_no_invitation(links: list[str], server: ServerProcess) -> None:
    """Every link to a page that plays or sends carries a token."""
    for link in links:
        path = urlsplit(link).path
        if link.startswith(server.base_url) and (path.startswith(("/listen", "/send"))):
            assert "token=" in link, f"{link} leads to 'needs an invitation'"


async def test_a_phone_scans_the_entrance_display_opened_from_the_console_and_plays(
    event: ServerProcess, phones: Any
) -> None:
    operator = await device(phones)
    console = await open_page(operator, f"{event.base_url}/admin")
    await wait_state(console, "unauthorized")
    # The console says to paste a token, and shows where.
    assert "Paste an admin token" in (await console.text_content("#status") or "")
    assert await console.is_visible("#login") and await console.is_visible("#admin-token")
    await console.focus("#admin-token")
    await console.keyboard.type(token("admin", subject="operator"))
    await console.keyboard.press("Enter")
    await wait_state(console, "ready")
    async with speakers(event):
        async with operator.expect_page() as opened:
            await console.click("#open-entrance")
        entrance = await opened.value
        entrance.on("console", lambda message: print(f"[entrance] {message.text}"))
        await entrance.wait_for_load_state()
        await codes_ready(entrance, 2)
        await fits_the_screen(entrance)
        urls = by_channel(await shoot_codes(entrance, "entrance-phone"), event)
        assert sorted(urls) == ["english", "french"], urls
        labels = await entrance.locator("#codes .label").all_text_contents()
        assert labels == ["English", "Français"]
        for channel, url in urls.items():
            claims = invite_of(url)
            assert claims["role"] == "receive" and claims["stream"] == channel, claims
            assert claims["exp"] - claims["iat"] == INVITE_SECONDS
            assert claims["exp"] > time.time() + INVITE_SECONDS - 120
        await no_serious_accessibility_problems(entrance)
        await every_control_reachable_by_keyboard(entrance)
        for channel, url in urls.items():
            await plays(phones, url, channel)
        # Full screen on request, and back.
        await entrance.click("#fullscreen")
        # The label follows the browser's fullscreenchange event, which comes a moment
        # after document.fullscreenElement is set: wait for what the visitor sees.
        await entrance.wait_for_function(
            "() => document.fullscreenElement !== null"
            " && document.getElementById('fullscreen').textContent === 'Leave full screen'"
        )
        await entrance.keyboard.press("Enter")  # (the button keeps the focus)
        await entrance.wait_for_function("() => document.fullscreenElement === null")
    await operator.close()


async def test_a_console_refusing_its_token_shows_where_to_paste_another(
    event: ServerProcess, phones: Any
) -> None:
    operator = await device(phones)
    console = await open_page(operator, f"{event.base_url}/admin#token={token('admin', ttl=-60)}")
    await wait_state(console, "unauthorized")
    assert "not accepted" in (await console.text_content("#notice") or "")
    for shown in ("#status", "#notice", "#login", "#admin-token"):
        assert await console.is_visible(shown), shown
    assert not await console.is_visible("#open-entrance")  # nothing to make codes with
    await no_serious_accessibility_problems(console)
    await every_control_reachable_by_keyboard(console)
    await console.fill("#admin-token", token("admin"))
    await console.press("#admin-token", "Enter")
    await wait_state(console, "ready")
    assert await console.is_visible("#open-entrance") and await console.is_hidden("#login")
    await operator.close()


async def test_the_entrance_display_fills_a_laptop_screen_with_codes_that_play(
    event: ServerProcess, phones: Any
) -> None:
    laptop = await device(phones, LAPTOP)
    console = await open_page(laptop, f"{event.base_url}/admin#token={token('admin')}")
    await wait_state(console, "ready")
    entrance = await open_page(laptop, f"{event.base_url}/entrance")
    await codes_ready(entrance, 2)
    await fits_the_screen(entrance)
    side = await entrance.evaluate("() => document.querySelector('#codes img').clientWidth")
    assert side >= 400, f"codes of {side} px on a 1280x800 screen"  # readable from metres
    urls = by_channel(await shoot_codes(entrance, "entrance-laptop"), event)
    assert sorted(urls) == ["english", "french"], urls
    await no_serious_accessibility_problems(entrance)
    async with speakers(event):
        await plays(phones, urls["french"], "french")
    await laptop.close()


async def test_the_entrance_display_renews_its_invites_every_hour(
    event: ServerProcess, phones: Any
) -> None:
    """A code scanned at any moment holds at least 11 hours: the display mints new invites
    every hour (the page's clock is moved on; the server's is not)."""
    operator = await device(phones, LAPTOP)
    await operator.clock.install()
    console = await open_page(operator, f"{event.base_url}/admin#token={token('admin')}")
    await wait_state(console, "ready")
    entrance = await open_page(operator, f"{event.base_url}/entrance")
    await codes_ready(entrance, 2)
    first = by_channel(await shoot_codes(entrance, "entrance-renewal"), event)
    old = await entrance.get_attribute("#codes img", "src")
    await anyio.sleep(1.5)  # (tokens minted in the same second are the same token)
    await entrance.clock.fast_forward("01:00:05")
    await entrance.wait_for_function(
        "old => document.querySelector('#codes img').getAttribute('src') !== old",
        arg=old,
        timeout=20000,
    )
    await codes_ready(entrance, 2)
    renewed = by_channel(await shoot_codes(entrance, "entrance-renewal"), event)
    assert sorted(renewed) == ["english", "french"], renewed
    for channel in renewed:
        assert renewed[channel] != first[channel]
        assert invite_of(renewed[channel])["exp"] > invite_of(first[channel])["exp"]
        assert invite_of(renewed[channel])["stream"] == channel
    await operator.close()


async def test_a_device_that_cannot_mint_shows_no_code_and_no_link_that_needs_one(
    event: ServerProcess, phones: Any, tmp_path: Path
) -> None:
    for stored in (None, "expired-or-wrong", token("admin", ttl=-60)):
        context = await device(phones)
        if stored is not None:
            await context.add_init_script(
                f"localStorage.setItem('relay_app.admin_token', {stored!r})"
            )
        entrance = await open_page(context, f"{event.base_url}/entrance")
        await wait_state(entrance, "needs-admin")
        assert await entrance.locator("#codes img").count() == 0
        said = await entrance.text_content("#status") or ""
        assert ("not accepted" if stored else "open it from the console") in said, said
        assert await entrance.is_visible("#console")
        await no_serious_accessibility_problems(entrance)
        on_air = await open_page(context, f"{event.base_url}/")
        await wait_state(on_air, "unauthorized")
        assert "needs an invitation" in (await on_air.text_content("#status") or "")
        assert await visible_codes(on_air, tmp_path) == []
        assert [urlsplit(link).path for link in await visible_links(on_air)] == ["/admin"]
        await context.close()


async def test_a_visitors_on_air_page_shows_only_codes_and_links_that_play(
    event: ServerProcess, phones: Any, tmp_path: Path
) -> None:
    async with speakers(event):
        # An invite for English: its own channel's code and link, nothing for Français.
        invite = token("receive", stream="english", ttl=3600, invite=True)
        visitor = await device(phones, PHONE_SCREEN)
        page = await open_page(visitor, f"{event.base_url}/?token={invite}")
        await wait_state(page, "ready")
        await page.wait_for_selector("li[data-channel='english'] img")
        assert await page.locator("li[data-channel='french']").count() == 0  # not its channel
        codes = await visible_codes(page, tmp_path)
        assert codes and all(invite_of(code)["stream"] == "english" for code in codes), codes
        needs_no_invitation(await visible_links(page), event)
        await no_serious_accessibility_problems(page)
        await every_control_reachable_by_keyboard(page)
        for code in set(codes):
            await plays(phones, code, "english")
        await visitor.close()
        # A receive token for every channel: a code for each, and the big one.
        invite = token("receive", ttl=3600, invite=True)
        visitor = await device(phones, PHONE_SCREEN)
        page = await open_page(visitor, f"{event.base_url}/?token={invite}")
        await wait_state(page, "ready")
        await page.wait_for_selector("li[data-channel='french'] img")
        await page.wait_for_selector("#qr-figure:not([hidden])")
        codes = await visible_codes(page, tmp_path)
        assert len(codes) == 3, codes
        assert f"{event.base_url}/listen?token={invite}" in codes
        needs_no_invitation(await visible_links(page), event)
        for channel, url in by_channel([c for c in codes if "/listen/" in c], event).items():
            await plays(phones, url, channel)
        await visitor.close()
        # A speaker's token (both: it may take English over) and a device's own token are no
        # invitations: the page plays with them, but shows no code of them to others.
        for own in (token("both", stream="english", ttl=3600), token("receive", ttl=3600)):
            visitor = await device(phones, PHONE_SCREEN)
            page = await open_page(visitor, f"{event.base_url}/?token={own}")
            await wait_state(page, "ready")
            await page.wait_for_selector("li[data-channel='english'] a")
            assert await page.locator("li img, #qr-figure:not([hidden])").count() == 0
            await visitor.close()


async def test_the_operators_on_air_page_shows_invites_minted_with_its_admin_token(
    event: ServerProcess, phones: Any, tmp_path: Path
) -> None:
    operator = await device(phones, PHONE_SCREEN)
    console = await open_page(operator, f"{event.base_url}/admin#token={token('admin')}")
    await wait_state(console, "ready")
    page = await open_page(operator, f"{event.base_url}/")
    await wait_state(page, "ready")
    await page.wait_for_selector("li[data-channel='french'] img")
    codes = await visible_codes(page, tmp_path)
    assert sorted(by_channel(codes, event)) == ["english", "french"], codes
    assert all(invite_of(code)["exp"] - invite_of(code)["iat"] == INVITE_SECONDS for code in codes)
    links = await visible_links(page)
    needs_no_invitation(links, event)
    assert f"{event.base_url}/entrance" in links
    plays_links = await page.locator("li[data-channel] a.button").evaluate_all(
        "links => links.map((a) => a.href)"
    )
    assert len(plays_links) == 2 and all("token=" in link for link in plays_links)
    await no_serious_accessibility_problems(page)
    await every_control_reachable_by_keyboard(page)
    async with speakers(event):
        await plays(phones, plays_links[0], "english")
    await operator.close()


async def test_the_listen_and_speak_pages_on_air_links_keep_the_invite(
    event: ServerProcess, phones: Any
) -> None:
    context = await device(phones)
    receive, both, send = token("receive"), token("both"), token("send", stream="english")
    listen = await open_page(context, f"{event.base_url}/listen/english?token={receive}")
    await listen.wait_for_function("() => document.body?.dataset.state !== 'loading'")
    on_air = listen.locator("header a", has_text="On air")
    assert await on_air.get_attribute("href") == f"/?token={receive}"
    assert await listen.locator("header a", has_text="Speak instead").is_hidden()  # cannot send
    await on_air.click()
    await wait_state(listen, "ready")  # the On air page, with the visitor's invite
    for speak_token, state in ((both, "ready"), (send, "speaker")):
        speak = await open_page(
            context, f"{event.base_url}/send?channel=english&token={speak_token}"
        )
        await wait_state(speak, "idle")
        link = speak.locator("header a", has_text="On air")
        assert await link.get_attribute("href") == f"/?token={speak_token}"
        await link.click()
        await wait_state(speak, state)  # never "needs an invitation"
        if state == "speaker":  # a send token lists nothing: the page points back to Speak
            assert "for speaking" in (await speak.text_content("#status") or "")
            back = speak.locator("header a", has_text="Speak")
            assert await back.get_attribute("href") == f"/send?token={speak_token}"
            await no_serious_accessibility_problems(speak)
        await speak.close()
    await context.close()


async def test_on_an_open_server_the_entrance_display_needs_no_admin_token(
    tmp_path: Path, phones: Any
) -> None:
    for server in serving(tmp_path, {"channels": {"hall": {"label": "Main hall"}}}):
        context = await device(phones)
        entrance = await open_page(context, f"{server.base_url}/entrance")
        await codes_ready(entrance, 1)
        urls = await shoot_codes(entrance, "entrance-open")
        assert urls == [f"{server.base_url}/listen/hall"], urls
        await context.close()
