"""The operator's console at an event with auth on: who is connected, Disconnect, Remove.

Real Chromium against a real server with `auth.secret` and two channels: phones (390x844,
touch, an Android browser's User-Agent) open an invite from the console, the operator's
console (on a laptop, 1280x800, and on a phone) disconnects one and removes another. A
disconnected phone is told so and stays off (no new /ws connection in the server's log for
20 s, more than twice the page's longest wait between retries); a removed one reloads into
the plain "withdrawn" sentence, with no audio; another phone with the same invite plays on.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest

from relay_app.client import RelayClient, ToneTrack
from relay_app.core import protocol as p
from relay_app.tools.testing import ServerProcess

from ..helpers import assert_no_leaks, token
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
ANDROID = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Mobile Safari/537.36"
)
ANDROID_PHONE = {**PHONE, "user_agent": ANDROID}
# Seconds a disconnected page must stay off: more than twice the longest wait of relay.js's
# reconnect loop (0.5 s, doubling up to 8 s), so a page still in that loop would have tried.
OFF_FOR = 20.0
WITHDRAWN = "This invitation was withdrawn by the operator."


@pytest.fixture(scope="module")
def relay_mode() -> str:
    return "forward"  # page logic: the relay mode does not change it


# The module's server: conftest.secure_server (auth on) with these channels.
SECURE_CONFIG = {"channels": CHANNELS}


@pytest.fixture(scope="module")
def event_server(secure_server: ServerProcess) -> ServerProcess:
    return secure_server


@pytest.fixture
def server(event_server: ServerProcess) -> Iterator[ServerProcess]:
    yield event_server
    assert_no_leaks(event_server)


AUTOPLAY = False  # the module's Chromium is as on a phone: nothing plays before a tap


@pytest.fixture
async def browser(module_chromium: Any) -> AsyncIterator[Any]:
    async with own_contexts(module_chromium) as shared:
        yield shared


ADMIN = token("admin", ttl=3600, subject="operator")


def invite_url(server: ServerProcess, channel: str, **extra: Any) -> str:
    made = server.post(
        "/admin/invites",
        headers={"Authorization": f"Bearer {ADMIN}"},
        json={"channel": channel, **extra},
    ).json()
    return f"{server.base_url}/listen/{channel}?token={made['token']}"


async def new_page(browser: Any, url: str, options: dict[str, Any]) -> Any:
    # bypass_csp: only so that axe-core can be injected; the pages' own CSP is tested elsewhere.
    context = await browser.new_context(**options, bypass_csp=True)
    page = await context.new_page()
    page.on("console", lambda message: print(f"[page] {message.type}: {message.text}"))
    await page.goto(url)
    return page


async def console(browser: Any, server: ServerProcess, options: dict[str, Any]) -> Any:
    page = await new_page(browser, f"{server.base_url}/admin#token={ADMIN}", options)
    await wait_state(page, "ready")
    return page


def ws_sessions(server: ServerProcess) -> int:
    """WebSocket sessions and refusals the server has logged so far (every /ws attempt)."""
    return len(server.find("client_connected")) + len(server.find("connection_refused"))


async def row_of(page: Any, connection_id: str) -> Any:
    row = page.locator(f'tr[data-connection="{connection_id}"]')
    await row.wait_for()
    return row


def phone_session(server: ServerProcess) -> dict[str, Any]:
    """The newest Android phone's /ws session on the admin API."""
    sessions = server.get("/admin/sessions", headers={"Authorization": f"Bearer {ADMIN}"})
    phones = [
        s
        for s in sessions.json()["sessions"]
        if s["device"] == "Chrome on Android" and s["via"] == "ws"
    ]
    assert phones, sessions.json()
    return dict(phones[-1])


async def no_audio(page: Any) -> None:
    state = await page.evaluate(
        """() => ({
            pc: window.relayReceiver.pc === null,
            src: !document.getElementById('audio').srcObject
                 && !document.getElementById('audio').getAttribute('src'),
            playing: !document.getElementById('audio').paused,
        })"""
    )
    assert state == {"pc": True, "src": True, "playing": False}, state


async def test_the_console_names_everyone_and_disconnect_keeps_a_phone_off(
    server: ServerProcess, browser: Any
) -> None:
    """Rows say who, what, where, on what; Disconnect tells the phone in plain words and its
    page opens no new connection for OFF_FOR s (meanwhile the console is photographed,
    checked with axe-core and walked with the keyboard); its Reload button brings it back."""
    marie, jean = token("send", name="Marie"), token("send", name="Jean")
    press = invite_url(server, "french", name="Press").rsplit("token=", 1)[1]
    async with (
        RelayClient.connect(server.ws_url, token=marie) as speaker,
        RelayClient.connect(server.ws_url, token=jean) as interpreter,
        RelayClient.connect(server.ws_url, token=press) as journalist,
        RelayClient.connect(server.ws_url, token=token("receive")) as desk,
    ):
        await speaker.start_sending(ToneTrack(440), channel="english")
        await interpreter.start_sending(ToneTrack(660), channel="french")
        await journalist.start_receiving("french")
        await desk.send(p.StartReceiving(stream_id="nowhere", name="Sound desk"))
        phone = await new_page(browser, invite_url(server, "english"), ANDROID_PHONE)
        await play_with_at_most_one_tap(phone)
        row = phone_session(server)
        operator = await console(browser, server, LAPTOP)
        phone_row = await row_of(operator, row["connection_id"])
        text = await phone_row.inner_text()
        for words in (row["name"], "Listening", "English", "Chrome on Android"):
            assert words in text, text
        assert row["name"].startswith("Listener ")
        for client, words in [
            (speaker, ("Marie", "Speaking", "English", "Python client")),
            (interpreter, ("Jean", "Speaking", "Français")),
            (journalist, ("Press", "came with an invite", "Listening", "Français")),
            (desk, ("Sound desk", "Connected", "—")),
        ]:
            shown = await (await row_of(operator, client.connection_id)).inner_text()
            assert all(word in shown for word in words), shown
        await operator.wait_for_function(
            "() => document.getElementById('status').textContent"
            " === '2 speaking, 2 listening, 1 connected.'"
        )
        await operator.screenshot(path=str(SHOTS / "console.png"), full_page=True)
        # Each button says what it does: visible words beside the table, tied to the button.
        help_text = await operator.text_content("#help-disconnect") or ""
        assert "stays off until they reload" in help_text
        disconnect = phone_row.get_by_role("button", name=f"Disconnect {row['name']}")
        assert await disconnect.get_attribute("aria-describedby") == "help-disconnect"

        await disconnect.click()
        await wait_state(phone, "dismissed")
        said = await phone.text_content("#status") or ""
        assert said == "The operator disconnected you. Reload this page to connect again.", said
        await no_audio(phone)
        attempts, since = ws_sessions(server), time.monotonic()
        notice = await operator.text_content("#notice") or ""
        assert f"{row['name']} was disconnected" in notice, notice

        # The time the phone stays off, used to look at the console.
        await operator.wait_for_function(
            "id => !document.querySelector(`tr[data-connection='${id}']`)",
            arg=row["connection_id"],
        )
        await no_serious_accessibility_problems(operator)
        await every_control_reachable_by_keyboard(operator)
        small = await console(browser, server, PHONE)
        await row_of(small, speaker.connection_id)
        await small.screenshot(path=str(SHOTS / "console-phone.png"), full_page=True)
        await no_serious_accessibility_problems(small)
        await every_control_reachable_by_keyboard(small)
        await small.context.close()
        await phone.screenshot(path=str(SHOTS / "listen-disconnected.png"), full_page=True)
        await no_serious_accessibility_problems(phone)
        await anyio.sleep(max(0.0, OFF_FOR - (time.monotonic() - since)))
        assert ws_sessions(server) == attempts, "the disconnected page connected again"
        assert await phone.evaluate("() => document.body?.dataset.state") == "dismissed"
        await no_audio(phone)
        assert not speaker.closed.is_set()
        # Disconnect withdrew nothing: its Reload button plays again.
        await phone.click("#reload")
        await play_with_at_most_one_tap(phone)
        await operator.context.close()
        await phone.context.close()


async def test_remove_survives_a_reload_and_another_phone_with_the_invite_plays_on(
    server: ServerProcess, browser: Any
) -> None:
    """Remove by keyboard alone: the dialog says how many use the same invite, the phone is
    told, and reloaded it reads the withdrawn sentence and plays nothing; a neighbour with
    the same invite plays on, and a new phone can still open it."""
    invite = invite_url(server, "english")
    async with RelayClient.connect(server.ws_url, token=token("send", name="Marie")) as speaker:
        await speaker.start_sending(ToneTrack(440), channel="english")
        removed = await new_page(browser, invite, ANDROID_PHONE)
        await play_with_at_most_one_tap(removed)
        target = phone_session(server)
        neighbour = await new_page(browser, invite, ANDROID_PHONE)
        await play_with_at_most_one_tap(neighbour)
        operator = await console(browser, server, PHONE)
        row = await row_of(operator, target["connection_id"])
        assert "came with an invite that 1 other connection uses" in await row.inner_text()
        # Keyboard only: focus Remove, Enter; the dialog opens on Cancel (the safe answer).
        await row.get_by_role("button", name=f"Remove {target['name']}").focus()
        await operator.keyboard.press("Enter")
        await operator.wait_for_selector("#remove-dialog[open]")
        assert await operator.evaluate("() => document.activeElement.id") == "remove-cancel"
        text = await operator.text_content("#remove-dialog") or ""
        assert "this device's own pass is withdrawn" in text, text
        assert "1 other connection uses" in text and "remove all 2" in text, text
        await no_serious_accessibility_problems(operator)
        await operator.screenshot(path=str(SHOTS / "console-remove.png"), full_page=True)
        reached = set()
        for _ in range(5):  # Tab reaches each of its buttons (and the browser's own controls)
            await operator.keyboard.press("Tab")
            reached.add(await operator.evaluate("() => document.activeElement.id"))
        assert reached - {""} == {"remove-confirm", "remove-invite", "remove-cancel"}, reached
        await operator.keyboard.press("Escape")  # Esc cancels: nothing happens
        await operator.wait_for_selector("#remove-dialog:not([open])", state="hidden")
        assert await removed.evaluate("() => document.body?.dataset.state") == "playing"
        await row.get_by_role("button", name=f"Remove {target['name']}").focus()
        await operator.keyboard.press("Enter")
        await operator.focus("#remove-confirm")
        await operator.keyboard.press("Enter")

        await wait_state(removed, "removed")
        said = await removed.text_content("#status") or ""
        assert said.startswith("The operator removed you from this event"), said
        notice = await operator.text_content("#notice") or ""
        assert f"{target['name']} was removed: their device's pass is withdrawn" in notice
        refused = len(server.find("connection_refused"))
        await removed.reload()
        await wait_state(removed, "removed")
        said = await removed.text_content("#status") or ""
        assert said.startswith(WITHDRAWN), said
        await anyio.sleep(5)  # and it does not keep trying
        assert len(server.find("connection_refused")) == refused + 1
        assert await removed.evaluate("() => document.body?.dataset.state") == "removed"
        await no_audio(removed)
        await removed.screenshot(path=str(SHOTS / "listen-removed.png"), full_page=True)
        await no_serious_accessibility_problems(removed)
        # The neighbour plays on; a new phone opens the same invite.
        heard = await heard_by_page(neighbour, 1.0)
        assert abs(heard["freq"] - 440) <= 10, heard
        newcomer = await new_page(browser, invite, ANDROID_PHONE)
        await play_with_at_most_one_tap(newcomer)
        for page in (removed, neighbour, newcomer, operator):
            await page.context.close()
