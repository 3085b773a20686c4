"""The people in the hall: a phone that scans an invite, the On air page, the operator's
console; pages without jargon, usable with a screen reader and a keyboard.

Real Chromium at a phone's size (390x844, touch) against a real server with auth on. Each
page is checked with axe-core (installed from npm by .ci/run into test-output/) and
photographed into test-output/screenshots/ (copied to docs/screenshots/ by hand).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from relay_app.client import RelayClient, ToneTrack
from relay_app.tools.testing import REPO, ServerProcess

from ..helpers import SECRET, serving, token, unavailable
from .test_browser import (
    heard_by_page,
    own_contexts,
    playwright_api,
    wait_state,
)

pytestmark = pytest.mark.anyio

AXE = REPO / "test-output" / "npm" / "node_modules" / "axe-core" / "axe.min.js"
# Written on every run (test-output/ is git-ignored); docs/screenshots/ holds a copy, refreshed
# by hand: cp test-output/screenshots/*.png docs/screenshots/
SHOTS = REPO / "test-output" / "screenshots"
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}
CHANNELS = {
    "english": {"label": "English", "description": "Floor language, interpreted"},
    "french": {"label": "Français", "description": "Interprétation"},
}
# Inside and beyond the jargon the pages used to show.
JARGON = ("dBFS", "stream_", "code 1", "start_sending", "takeover", "Connection ")


@pytest.fixture(scope="module")
def relay_mode() -> str:
    return "forward"  # page logic: the relay mode does not change it


@pytest.fixture(scope="module")
def hall(tmp_path_factory: pytest.TempPathFactory) -> Any:
    config = {"auth": {"secret": SECRET}, "channels": CHANNELS}
    metrics = {"Authorization": f"Bearer {token('metrics')}"}
    yield from serving(tmp_path_factory.mktemp("hall"), config, metrics)


AUTOPLAY = False  # the module's Chromium is as on a phone: nothing plays before a tap


@pytest.fixture
async def phone_browser(module_chromium: Any) -> AsyncIterator[Any]:
    async with own_contexts(module_chromium) as shared:
        yield shared


async def phone_page(browser: Any, url: str) -> Any:
    # bypass_csp: only so that axe-core can be injected; the pages' own CSP is tested elsewhere.
    context = await browser.new_context(**PHONE, bypass_csp=True)
    page = await context.new_page()
    page.on("console", lambda message: print(f"[page] {message.type}: {message.text}"))
    await page.goto(url)
    return page


async def no_serious_accessibility_problems(page: Any) -> None:
    if not AXE.exists():
        unavailable(f"axe-core is missing at {AXE}: run .ci/run or npm install it there")
    await page.add_script_tag(path=str(AXE))
    result = await page.evaluate("async () => await axe.run(document)")
    serious = [
        (v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3])
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    assert not serious, serious


# A control as the keyboard walk knows it: by what it is, not by the element (a console
# re-renders its lists while it is walked, so an element may be replaced by its twin).
DESCRIBE = """(e) => [e.tagName, e.id, e.getAttribute('aria-label') || '',
    (e.textContent || '').trim().slice(0, 40), e.getAttribute('href') || ''].join('|')"""


async def every_control_reachable_by_keyboard(page: Any) -> None:
    """Tab from the top reaches every visible control of the page."""
    controls = await page.evaluate(
        f"""() => [...document.querySelectorAll(
              'a[href], button, select, input, summary, audio[controls]')]
            .filter((e) => !e.disabled && e.offsetParent !== null)
            .filter((e) => e.tagName === 'SUMMARY' || !e.closest('details:not([open])'))
            .map({DESCRIBE})"""
    )
    reached: set[str] = set()
    await page.evaluate("() => document.activeElement && document.activeElement.blur()")
    for _ in range(len(controls) * 3 + 5):
        await page.keyboard.press("Tab")
        reached.add(
            await page.evaluate(
                f"() => document.activeElement ? ({DESCRIBE})(document.activeElement) : ''"
            )
        )
    missed = sorted(set(controls) - reached)
    assert not missed, missed


async def plain_words(page: Any) -> None:
    text = await page.evaluate(
        "() => [...document.body.querySelectorAll('main > *:not(details)')]"
        ".map((e) => e.innerText).join(' ')"
    )
    assert not [word for word in JARGON if word in text], text


async def shoot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


async def play_with_at_most_one_tap(page: Any) -> None:
    """A phone plays after one tap on Play (Chromium without a user gesture blocks autoplay;
    it may let a page play at once, e.g. once the browser has captured audio)."""
    await page.wait_for_function(
        "() => ['blocked', 'playing'].includes(document.body?.dataset.state)", timeout=20000
    )
    state, text = await page.evaluate(
        "() => [document.body?.dataset.state, document.getElementById('status').textContent]"
    )
    if state == "blocked":  # (read together: the page may start playing on its own meanwhile)
        assert text == "Tap Play to start listening."
        # (it may start by itself and hide the button first: then no tap is needed)
        with contextlib.suppress(playwright_api.Error):
            await page.tap("#play", timeout=3000)
    await wait_state(page, "playing")


def invite_from_cli(server: ServerProcess, channel: str) -> str:
    url = f"{server.base_url}/listen/{channel}"
    result = subprocess.run(
        [sys.executable, "-m", "relay_app", "invite", "--channel", channel, "--url", url],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "RELAY_AUTH__SECRET": SECRET},
        timeout=30,
        check=True,
    )
    return result.stdout.strip().splitlines()[-1]


async def test_a_phone_opens_an_invite_from_the_cli_and_plays_after_one_tap(
    hall: ServerProcess, phone_browser: Any
) -> None:
    invite = invite_from_cli(hall, "english")
    assert "?token=" in invite
    async with RelayClient.connect(hall.ws_url, token=token("send")) as speaker:
        await speaker.start_sending(ToneTrack(440), channel="english")
        page = await phone_page(phone_browser, invite)
        await play_with_at_most_one_tap(page)
        assert "Playing English" in (await page.text_content("#status") or "")
        heard = await heard_by_page(page, 2.0)
        assert abs(heard["freq"] - 440) <= 10, heard
        await plain_words(page)
        await shoot(page, "listen-phone")
        await no_serious_accessibility_problems(page)
        await every_control_reachable_by_keyboard(page)
        await page.context.close()
    # Without a token: plain words, once, and no reconnect loop.
    page = await phone_page(phone_browser, f"{hall.base_url}/listen/english")
    await wait_state(page, "unauthorized", timeout=15)
    assert "needs an invitation" in (await page.text_content("#status") or "")
    await anyio.sleep(3)
    assert await page.evaluate("() => document.body?.dataset.state") == "unauthorized"
    await shoot(page, "listen-no-invite")
    await page.context.close()


async def test_the_on_air_page_shows_every_channel_and_its_listeners_live(
    hall: ServerProcess, phone_browser: Any
) -> None:
    receive = token("receive")
    async with (
        RelayClient.connect(hall.ws_url, token=token("send")) as speaker,
        RelayClient.connect(hall.ws_url, token=receive) as listener,
    ):
        await speaker.start_sending(ToneTrack(440), channel="english")
        await listener.start_receiving("english")
        page = await phone_page(phone_browser, f"{hall.base_url}/?token={receive}")
        english = 'li[data-channel="english"] .on-air'
        await page.wait_for_function(
            "s => (document.querySelector(s) || {}).textContent?.includes('1 listening')",
            arg=english,
        )
        assert "Not on air" in (await page.text_content('li[data-channel="french"]') or "")
        assert "Floor language" in (await page.text_content('li[data-channel="english"]') or "")
        async with RelayClient.connect(hall.ws_url, token=receive) as second:
            await second.start_receiving("english")
            await page.wait_for_function(  # it updates by itself
                "s => document.querySelector(s).textContent.includes('2 listening')", arg=english
            )
        await plain_words(page)
        await shoot(page, "on-air")
        await no_serious_accessibility_problems(page)
        await every_control_reachable_by_keyboard(page)
        await page.context.close()


async def test_the_operator_console_disconnects_a_speaker_and_locks_a_channel(
    hall: ServerProcess, phone_browser: Any
) -> None:
    admin = {"Authorization": f"Bearer {token('admin')}"}
    async with RelayClient.connect(hall.ws_url, token=token("send")) as speaker:
        await speaker.start_sending(ToneTrack(440), channel="english")
        context = await phone_browser.new_context(**PHONE, bypass_csp=True)
        page = await context.new_page()
        await page.goto(f"{hall.base_url}/admin#token={token('admin')}")
        await wait_state(page, "ready")
        assert await page.evaluate("() => location.hash") == ""  # the token left the URL
        row = 'tr[data-role="sender"] button:has-text("Disconnect")'
        await page.wait_for_selector(row)
        await shoot(page, "console-hall")  # (console.png: test_operator.py's, with more rows)
        await no_serious_accessibility_problems(page)
        await every_control_reachable_by_keyboard(page)
        # Lock with the keyboard alone: focus the button, press Enter.
        await page.focus('tr[data-channel="french"] button:has-text("Lock")')
        await page.keyboard.press("Enter")
        await page.wait_for_selector('tr[data-channel="french"] button:has-text("Unlock")')
        channels = hall.get("/admin/channels", headers=admin).json()["channels"]
        assert [c["locked"] for c in channels if c["channel"] == "french"] == [True]
        await page.click(row)  # disconnect the speaker: told so, and closed normally
        with anyio.fail_after(10):
            await speaker.closed.wait()
        assert speaker.close_code == 1000
        assert any(m.type == "disconnected" for m in speaker.messages)
        sessions = hall.get("/admin/sessions", headers=admin).json()["sessions"]
        assert [s for s in sessions if s["role"] == "sender"] == []
        # An invite from the console: a QR code that carries a token for that channel.
        await page.click('tr[data-channel="english"] button:has-text("Invite")')
        await page.wait_for_selector("#invite:not([hidden])")
        source = await page.get_attribute("#invite-qr", "src") or ""
        assert "channel=english" in source and "invite=" in source
        await context.close()
    hall.post("/admin/channels/french/unlock", headers=admin)


async def test_leaving_in_every_ordinary_way_is_no_error(
    hall: ServerProcess, phone_browser: Any
) -> None:
    """Stop, a closed tab, navigating away, switching to screen-off: nothing counted as an
    error, nothing logged at warning or above."""
    before, seen = hall.metrics()["errors"], len(hall.events)
    receive = token("receive")
    speak = await phone_page(
        phone_browser, f"{hall.base_url}/send?channel=english&token={token('send')}"
    )
    await wait_state(speak, "idle")
    await no_serious_accessibility_problems(speak)  # the Speak page too
    await speak.click("#start")
    await wait_state(speak, "sending")
    listeners = []
    for _ in range(3):
        page = await phone_page(phone_browser, f"{hall.base_url}/listen/english?token={receive}")
        await play_with_at_most_one_tap(page)
        listeners.append(page)
    await listeners[0].context.close()  # the tab is closed
    await listeners[1].goto("about:blank")  # navigating away
    await listeners[2].click("#background")  # screen-off mode (plain HTTP), then closed
    await anyio.sleep(2)
    await listeners[2].context.close()
    await speak.click("#stop")  # the speaker presses Stop
    await wait_state(speak, "idle")
    await speak.context.close()
    hall.wait_idle()
    assert hall.metrics()["errors"] == before
    loud = [e for e in hall.events[seen:] if e.get("level") in ("warning", "error", "critical")]
    assert not loud, loud
