"""The speakers of an event, in real Chromium with auth on: a laptop that freezes, a takeover
from the Speak page, the interpreters' booth.

A speaker's laptop is a Chromium of its own (its microphone a WAV tone); freezing it is
SIGSTOP on every process of that Chromium (SIGCONT when the test ends). Listeners are a
phone (390x844, touch) or, where a gap is measured to the millisecond, a Python listener
that timestamps each packet (tests/scenarios/test_handover.py's Arrivals). Screenshots go to
test-output/screenshots/ (copied to docs/screenshots/ by hand), axe-core checks the Speak
page in each of its states.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path
from typing import Any

import anyio
import pytest

from relay_app.client import RelayClient, ToneTrack, dominant_frequency
from relay_app.tools.testing import ServerProcess, deep_merge

from ..helpers import SECRET, assert_no_leaks, serving, token
from ..scenarios.test_booth import whip_publisher
from ..scenarios.test_handover import Arrivals
from .test_browser import BROWSER_CONFIG, chromium, heard_by_page, wait_state, write_tone_wav
from .test_hall import (
    every_control_reachable_by_keyboard,
    no_serious_accessibility_problems,
    phone_page,
    play_with_at_most_one_tap,
    shoot,
)

pytestmark = pytest.mark.anyio

CHANNELS = {
    "english": {"label": "English", "description": "Interpretation"},
    "floor": {"label": "Floor", "description": "The room, as spoken"},
    "french": {"label": "Français", "description": "Interprétation"},
}
LAPTOP = {"viewport": {"width": 900, "height": 1000}}
LOST = "The speaker's connection dropped. Waiting for them or the next speaker…"

# The booth's ear (window.relaySender.ear): dominant frequency of what it plays.
EAR_JS = """
async (seconds) => {
  const stream = window.relaySender.ear.remoteStream;
  if (!stream) return null;
  const ctx = new AudioContext();
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 16384;
  ctx.createMediaStreamSource(stream).connect(analyser);
  await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
  const spectrum = new Float32Array(analyser.frequencyBinCount);
  analyser.getFloatFrequencyData(spectrum);
  let best = 1;
  for (let i = 2; i < spectrum.length; i++) if (spectrum[i] > spectrum[best]) best = i;
  const freq = best * ctx.sampleRate / analyser.fftSize;
  await ctx.close();
  return freq;
}
"""


@pytest.fixture(scope="module")
def relay_mode() -> str:
    return "forward"  # page logic: the relay mode does not change it


@pytest.fixture(scope="module")
def event(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    config = deep_merge(BROWSER_CONFIG, {"auth": {"secret": SECRET}, "channels": CHANNELS})
    config["streams"] = {"allow_unlisted_channels": False}  # (the default stale sweep)
    metrics = {"Authorization": f"Bearer {token('metrics')}"}
    yield from serving(tmp_path_factory.mktemp("speakers"), config, metrics)


@pytest.fixture
def server(event: ServerProcess) -> Iterator[ServerProcess]:
    yield event
    assert_no_leaks(event)


def speak_url(server: ServerProcess, name: str, channel: str = "english") -> str:
    return f"{server.base_url}/send?token={token('send', stream=channel, name=name)}"


@asynccontextmanager
async def laptop(tmp_path: Path, hz: float) -> AsyncIterator[Any]:
    """A speaker's laptop: a Chromium of its own whose microphone plays `hz`."""
    microphone = write_tone_wav(tmp_path / f"mic-{hz:g}-{time.monotonic_ns()}.wav", hz)
    async with chromium(tmp_path, microphone=microphone) as browser:
        browser.microphone = microphone
        yield browser


async def speak_page(browser: Any, url: str) -> Any:
    context = await browser.new_context(**LAPTOP, bypass_csp=True)  # (axe-core is injected)
    page = await context.new_page()
    page.on("console", lambda message: print(f"[speak] {message.type}: {message.text}"))
    await page.goto(url)
    await wait_state(page, "idle")
    return page


async def laptop_page(browser: Any, url: str) -> Any:
    """A page on a speaker's laptop that is not the Speak page (the operator's console)."""
    context = await browser.new_context(**LAPTOP, bypass_csp=True)  # (axe-core is injected)
    page = await context.new_page()
    await page.goto(url)
    return page


async def status(page: Any) -> str:
    return str(await page.text_content("#status") or "")


async def microphone_released(page: Any) -> bool:
    return bool(
        await page.evaluate(
            "() => window.relaySender.micTracks.length > 0 && "
            "window.relaySender.micTracks.every((t) => t.readyState === 'ended')"
        )
    )


def processes_of(microphone: Path) -> list[int]:
    """Every process of the Chromium whose fake microphone is `microphone`: its browser
    process (the only one given that file) and all that descend from it."""
    parents: dict[int, int] = {}
    roots = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            command = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
        flag = f"--use-file-for-fake-audio-capture={microphone}".encode()
        if flag in command and not any(part.startswith(b"--type=") for part in command):
            roots.append(int(entry))
    found = set(roots)
    while True:
        more = {pid for pid, parent in parents.items() if parent in found} - found
        if not more:
            return sorted(found)
        found |= more


@contextmanager
def frozen(microphone: Path) -> Iterator[float]:
    """The laptop freezes (SIGSTOP on every process of its Chromium) until the block ends;
    yields when it froze (time.monotonic())."""
    pids = processes_of(microphone)
    assert len(pids) >= 3, pids  # the browser, its renderer, its audio and network services
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield time.monotonic()
    finally:
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


async def wait_text(page: Any, selector: str, text: str, timeout: float = 15) -> None:
    await page.wait_for_function(
        "([s, t]) => (document.querySelector(s)?.textContent || '').includes(t)",
        arg=[selector, text],
        timeout=timeout * 1000,
    )


async def test_a_frozen_laptop_is_shown_to_listeners_and_the_console_and_frees_its_channel(
    server: ServerProcess, tmp_path: Path
) -> None:
    async with (
        laptop(tmp_path, 440) as marie,
        chromium(tmp_path, autoplay=False) as phone_browser,
    ):
        speaker = await speak_page(marie, speak_url(server, "Marie"))
        await speaker.click("#start")
        await wait_state(speaker, "sending")
        assert await status(speaker) == "You are on air on English. Everyone listening hears you."
        listen = f"{server.base_url}/listen/english?token={token('receive', stream='english')}"
        phone = await phone_page(phone_browser, listen)
        await play_with_at_most_one_tap(phone)
        assert abs((await heard_by_page(phone, 1.5))["freq"] - 440) <= 10
        console = await (await phone_browser.new_context(**LAPTOP)).new_page()
        await console.goto(f"{server.base_url}/admin#token={token('admin')}")
        state = 'tr[data-channel="english"] td.state'
        await wait_text(console, state, "On air: Marie")
        with frozen(marie.microphone) as froze:
            await wait_state(phone, "speaker-lost", timeout=5)
            told = time.monotonic() - froze
            assert await status(phone) == LOST
            await wait_text(console, state, "Silent for", timeout=5)
            seen = time.monotonic() - froze
            await shoot(phone, "listen-speaker-lost")
            await wait_state(phone, "waiting", timeout=10)
            freed = time.monotonic() - froze
            print(f"frozen laptop: told {told:.2f} s, console {seen:.2f} s, freed {freed:.2f} s")
            assert told <= 2.0 and freed <= 5 + 1.0, (told, freed)
            assert seen <= 2.0 + 2.0  # (the console looks every 2 s)
            assert await status(phone) == LOST
            # The channel is free: the next speaker needs no takeover; the phone follows.
            paul = token("send", stream="english", name="Paul")
            async with RelayClient.connect(server.ws_url, token=paul) as next_speaker:
                await next_speaker.start_sending(ToneTrack(660), channel="english")
                await wait_state(phone, "playing", timeout=10)
                await anyio.sleep(1.0)
                assert abs((await heard_by_page(phone, 1.5))["freq"] - 660) <= 10
                await wait_text(console, state, "On air: Paul")
        # Back from its freeze, the laptop is told why it is off air, its microphone given back.
        await wait_state(speaker, "ended", timeout=15)
        assert "freed for the next speaker" in await status(speaker)
        assert await microphone_released(speaker)
        for page in (speaker, phone, console):
            await page.context.close()


async def test_a_vanished_whip_publisher_is_shown_to_a_phone_and_frees_its_channel(
    server: ServerProcess, tmp_path: Path
) -> None:
    url = f"{server.base_url}/whip/english"
    async with chromium(tmp_path, autoplay=False) as phone_browser:
        with whip_publisher(url, token("send", stream="english", name="OBS")) as publisher:
            listen = f"{server.base_url}/listen/english?token={token('receive', stream='english')}"
            phone = await phone_page(phone_browser, listen)
            await play_with_at_most_one_tap(phone)
            publisher.send_signal(signal.SIGSTOP)
            froze = time.monotonic()
            await wait_state(phone, "speaker-lost", timeout=5)
            told = time.monotonic() - froze
            await wait_state(phone, "waiting", timeout=10)
            freed = time.monotonic() - froze
            print(f"stopped WHIP publisher: listener told {told:.2f} s, freed {freed:.2f} s")
            assert told <= 2.0 and freed <= 5 + 1.0, (told, freed)
            async with RelayClient.connect(
                server.ws_url, token=token("send", stream="english", name="Paul")
            ) as next_speaker:
                await next_speaker.start_sending(ToneTrack(660), channel="english")
                await wait_state(phone, "playing", timeout=10)
        await phone.context.close()


async def test_take_over_from_the_speak_page_is_heard_at_once_and_releases_the_microphone(
    server: ServerProcess, tmp_path: Path
) -> None:
    async with (
        laptop(tmp_path, 440) as marie_laptop,
        laptop(tmp_path, 660) as paul_laptop,
        RelayClient.connect(server.ws_url, token=token("receive")) as listener,
    ):
        marie = await speak_page(marie_laptop, speak_url(server, "Marie"))
        await marie.click("#start")
        await wait_state(marie, "sending")
        await listener.start_receiving("english")
        arrivals = Arrivals(listener.pc)
        await listener.wait_audio(1.0)
        # A token for every channel may speak, not take one over: no Take over button.
        anyone = f"{server.base_url}/send?token={token('send', name='Eve')}&channel=english"
        eve = await speak_page(paul_laptop, anyone)
        await eve.click("#start")
        await wait_state(eve, "busy")
        assert await status(eve) == "Marie is already speaking on English."
        assert await eve.is_hidden("#takeover") and await eve.is_hidden("#wait")
        assert await microphone_released(eve)
        await eve.context.close()
        paul = await speak_page(paul_laptop, speak_url(server, "Paul"))
        await paul.click("#start")
        await wait_state(paul, "busy")
        assert await status(paul) == "Marie is already speaking on English."
        await no_serious_accessibility_problems(paul)
        await every_control_reachable_by_keyboard(paul)
        await paul.click("#takeover")  # one confirmation
        text = await paul.text_content("#confirm-text")
        assert text == "Take over English from Marie? Listeners will hear you instead, at once."
        await shoot(paul, "speak-take-over")
        await no_serious_accessibility_problems(paul)
        await anyio.sleep(1.0)  # (as in the booth test: only the takeover is measured)
        moment = time.monotonic()
        await paul.keyboard.press("Enter")  # (the focus is on "Yes, take over")
        await wait_state(paul, "sending")
        await wait_state(marie, "ended")
        assert await status(marie) == "Paul took over English. Press Start to speak again."
        assert await microphone_released(marie)
        assert (
            await marie.evaluate("() => document.getElementById('level-text').textContent") == "—"
        )
        await anyio.sleep(1.5)
        assert abs(dominant_frequency(listener.recorder.audio(1.0), 48000) - 660) <= 10
        seconds, sequence_step, _ = arrivals.gap_after(moment)
        print(f"take over from the page: gap at the listener {seconds * 1000:.0f} ms")
        assert seconds <= 0.1 and sequence_step == 1
        # The operator's Stop: the speaker is told, the microphone released.
        stopped = server.post(
            "/admin/streams/english/stop", headers={"Authorization": f"Bearer {token('admin')}"}
        )
        assert stopped.status_code == 200
        await wait_state(paul, "ended")
        assert (
            await status(paul)
            == "The operator stopped your microphone. Press Start to speak again."
        )
        assert await microphone_released(paul)
        for page in (marie, paul):
            await page.context.close()


async def test_the_booth_return_channel_the_partner_and_the_one_tap_hand_over(
    server: ServerProcess, tmp_path: Path
) -> None:
    floor = token("send", stream="floor", name="The floor")
    async with (
        laptop(tmp_path, 440) as marie_laptop,
        laptop(tmp_path, 660) as paul_laptop,
        RelayClient.connect(server.ws_url, token=floor) as the_floor,
        RelayClient.connect(server.ws_url, token=token("receive")) as listener,
    ):
        await the_floor.start_sending(ToneTrack(880), channel="floor")
        marie = await speak_page(marie_laptop, speak_url(server, "Marie"))
        await marie.click("#start")
        await wait_state(marie, "sending")
        await wait_text(marie, "#booth-people", "Speaking: Marie (you). Nobody is waiting.")
        assert await marie.input_value("#return") == ""  # nothing until the speaker picks
        await marie.select_option("#return", "floor")  # (kept on the device from now on)
        await wait_text(marie, "#ear-status", "You hear Floor.")
        await anyio.sleep(1.0)
        heard = await marie.evaluate(EAR_JS, 1.5)
        assert heard is not None and abs(heard - 880) <= 10, heard  # the floor, while speaking
        await listener.start_receiving("english")
        arrivals = Arrivals(listener.pc)
        await listener.wait_audio(1.0)
        paul = await speak_page(paul_laptop, speak_url(server, "Paul"))
        await paul.click("#wait")
        await wait_state(paul, "waiting")
        await paul.select_option("#return", "floor")  # for when he speaks
        await wait_text(paul, "#booth-people", "Speaking: Marie. Waiting: Paul (you).")
        await wait_text(paul, "#ear-status", "You hear English.")
        await anyio.sleep(1.0)
        heard = await paul.evaluate(EAR_JS, 1.5)
        assert heard is not None and abs(heard - 440) <= 10, heard  # the partner hears Marie
        await wait_text(marie, "#booth-people", "Speaking: Marie (you). Waiting: Paul.")
        assert await marie.text_content("#hand-over") == "Hand over to Paul"
        await shoot(marie, "speak-booth")
        await shoot(paul, "speak-booth-waiting")
        await no_serious_accessibility_problems(marie)
        await every_control_reachable_by_keyboard(marie)
        await no_serious_accessibility_problems(paul)
        # (axe-core's answer is parsed on this process's event loop, where the listener
        # stamps its packets: a second's rest, so that only the hand-over is measured)
        await anyio.sleep(1.0)
        moment = time.monotonic()
        await marie.click("#hand-over")  # one tap
        await wait_state(paul, "sending")
        assert await status(paul) == "You are on air on English. Everyone listening hears you."
        await wait_state(marie, "ended")
        assert await status(marie) == "Paul took over English. Press Start to speak again."
        assert await microphone_released(marie)
        await anyio.sleep(1.5)
        assert abs(dominant_frequency(listener.recorder.audio(1.0), 48000) - 660) <= 10
        seconds, sequence_step, _ = arrivals.gap_after(moment)
        print(f"booth hand-over: gap at the listener {seconds * 1000:.0f} ms")
        assert seconds <= 0.1 and sequence_step == 1
        # Now Paul hears the floor in his headphones (his choice, made while he waited).
        await wait_text(paul, "#ear-status", "You hear Floor.")
        await anyio.sleep(1.0)
        heard = await paul.evaluate(EAR_JS, 1.5)
        assert heard is not None and abs(heard - 880) <= 10, heard
        # Marie waits for her turn again; the operator hands English back from the console.
        await marie.click("#wait")
        await wait_state(marie, "waiting")
        console = await laptop_page(marie_laptop, f"{server.base_url}/admin#token={token('admin')}")
        button = 'tr[data-channel="english"] button:has-text("Hand over to Marie")'
        await console.wait_for_selector(button)
        await no_serious_accessibility_problems(console)
        await console.click(button)
        await wait_state(marie, "sending")
        await wait_state(paul, "ended")
        assert await status(paul) == "Marie took over English. Press Start to speak again."
        assert await microphone_released(paul)
        for page in (marie, paul, console):
            await page.context.close()
