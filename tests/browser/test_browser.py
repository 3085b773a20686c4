"""Real Chromium (Debian's /usr/bin/chromium) against the real server: the web client, end to end.

The sender's microphone is a WAV file the test writes (Chromium's fake capture device); the
receiver page's audio is measured in the page with a WebAudio AnalyserNode. Media stays on
127.0.0.1: the server gathers on loopback and Chromium allows loopback candidates.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import av
import numpy as np
import pytest
import zxingcpp

from relay_app.audio.levels import rms_dbfs
from relay_app.client import RelayClient, ToneTrack, dominant_frequency
from relay_app.tools.testing import REPO, ServerProcess, deep_merge

from ..helpers import assert_no_leaks, finish_server, serving, write_wav

pytestmark = pytest.mark.anyio

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = REPO / "test-output" / "screenshots"

if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but Chromium is missing at {CHROMIUM}", pytrace=False)
    pytest.skip(
        f"Chromium not found at {CHROMIUM}: `apt-get install -y chromium` to run the browser tests",
        allow_module_level=True,
    )

playwright_api = pytest.importorskip("playwright.async_api")

BROWSER_CONFIG = {
    "webrtc": {
        # Stable levels for measuring: no browser processing on the fake microphone.
        "audio_constraints": {
            "echo_cancellation": False,
            "noise_suppression": False,
            "auto_gain_control": False,
            "sample_rate": 48000,
        }
    },
    "streams": {"cleanup_interval": 1.0, "stale_after": 5.0},
}

# Measures audio in the page over `seconds`: dominant frequency and RMS. With a URL, of an
# <audio> element playing it (same origin as the page); without, of the receiver page's remote
# WebRTC stream.
ANALYSE_JS = """
async ([url, seconds]) => {
  const ctx = new AudioContext();
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 16384;
  analyser.smoothingTimeConstant = 0.5;
  const audio = url ? new Audio(url) : null;
  if (audio) {
    ctx.createMediaElementSource(audio).connect(analyser);
    await audio.play();
  } else {
    const stream = window.relayReceiver.remoteStream;
    if (!stream) return null;
    ctx.createMediaStreamSource(stream).connect(analyser);
  }
  await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
  const spectrum = new Float32Array(analyser.frequencyBinCount);
  analyser.getFloatFrequencyData(spectrum);
  let best = 1;
  for (let i = 2; i < spectrum.length; i++) if (spectrum[i] > spectrum[best]) best = i;
  const wave = new Float32Array(analyser.fftSize);
  analyser.getFloatTimeDomainData(wave);
  const rms = Math.sqrt(wave.reduce((sum, x) => sum + x * x, 0) / wave.length);
  const result = {freq: best * ctx.sampleRate / analyser.fftSize, rms};
  if (audio) {
    result.playing = !audio.paused;
    audio.pause();
  }
  await ctx.close();
  return result;
}
"""


def write_tone_wav(path: Path, frequency: float, seconds: float = 4.0, rate: int = 48000) -> Path:
    t = np.arange(int(rate * seconds)) / rate
    return write_wav(path, 0.5 * np.sin(2 * np.pi * frequency * t), rate)


@pytest.fixture(scope="module")
def browser_server(tmp_path_factory: pytest.TempPathFactory, relay_mode: str) -> Any:
    config = deep_merge(BROWSER_CONFIG, {"relay": {"mode": relay_mode}})
    yield from serving(tmp_path_factory.mktemp("browser-server"), config)


@pytest.fixture
def server(browser_server: ServerProcess) -> Any:
    yield browser_server
    assert_no_leaks(browser_server)


def chromium_args(microphone: Path, autoplay: bool = True) -> list[str]:
    """Headless Debian Chromium on loopback, its microphone the WAV file `microphone`; without
    `autoplay`, pages need a tap before they play (as on a phone)."""
    args = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={microphone}",
        "--allow-loopback-in-peer-connection",
        # Real host addresses instead of mDNS .local names: resolving those would send
        # multicast queries off this machine. On a LAN the server resolves them.
        "--disable-features=WebRtcHideLocalIpsWithMdns",
    ]
    if autoplay:
        args.append("--autoplay-policy=no-user-gesture-required")
    return args


@asynccontextmanager
async def chromium(
    tmp_path: Path,
    autoplay: bool = True,
    executable: str = CHROMIUM,
    microphone: Path | None = None,
) -> AsyncIterator[Any]:
    """A Chromium whose microphone plays the WAV file `microphone` (a 440 Hz tone unless
    given) in a loop, closed when the block ends."""
    microphone = microphone or write_tone_wav(tmp_path / "tone440.wav", 440)
    async with playwright_api.async_playwright() as pw:
        launched = await pw.chromium.launch(
            executable_path=executable, headless=True, args=chromium_args(microphone, autoplay)
        )
        try:
            yield launched
        finally:
            await launched.close()


@asynccontextmanager
async def own_contexts(browser: Any) -> AsyncIterator[Any]:
    """`browser` for one test: the contexts (devices, tabs) it leaves open are closed after
    it, so the next test starts with none."""
    before = set(browser.contexts)
    try:
        yield browser
    finally:
        for context in set(browser.contexts) - before:
            await context.close()


@pytest.fixture
async def browser(module_chromium: Any) -> AsyncIterator[Any]:
    async with own_contexts(module_chromium) as shared:
        yield shared


async def open_page(browser: Any, url: str) -> Any:
    # Under the page's own CSP (no bypass): predicates are functions, never eval'd strings.
    context = await browser.new_context(viewport={"width": 420, "height": 820})
    page = await context.new_page()
    page.on("console", lambda message: print(f"[page] {message.type}: {message.text}"))
    await page.goto(url)
    return page


async def wait_state(page: Any, state: str, timeout: float = 15) -> None:
    await page.wait_for_function(
        "state => document.body?.dataset.state === state", arg=state, timeout=timeout * 1000
    )


async def start_sender_page(browser: Any, server: ServerProcess) -> tuple[Any, str]:
    page = await open_page(browser, server.base_url + "/send")
    await wait_state(page, "idle")
    await page.click("#start")
    await wait_state(page, "sending")
    stream_id = await page.text_content("#stream-id")
    assert stream_id and stream_id.startswith("stream_")
    return page, stream_id


async def heard_by_page(page: Any, seconds: float = 1.5) -> dict[str, float]:
    result = await page.evaluate(ANALYSE_JS, [None, seconds])
    assert result is not None, "the receiver page has no remote stream"
    return dict(result)


async def settled_tone(page: Any, hz: float, tries: int = 3) -> dict[str, float]:
    """`heard_by_page`, again (up to `tries` windows) while the peak is off `hz`: right after
    playing starts, and on a loaded machine, Chromium's jitter buffer may stretch or squeeze
    the audio for a moment, which moves the peak by a few bins."""
    heard = await heard_by_page(page)
    for _ in range(tries - 1):
        if abs(heard["freq"] - hz) <= 10:
            break
        heard = await heard_by_page(page)
    return heard


async def screenshot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


async def test_chromium_sender_python_receiver_hears_440(
    server: ServerProcess, browser: Any
) -> None:
    page, stream_id = await start_sender_page(browser, server)
    async with RelayClient.connect(server.ws_url) as receiver:
        assert await receiver.start_receiving(stream_id) == stream_id
        await receiver.wait_audio(2.5)
        audio = receiver.recorder.audio(2.0)
        assert rms_dbfs(audio) > -35
        assert abs(dominant_frequency(audio, receiver.recorder.sample_rate) - 440) <= 10
        # The sender page's meter is fed by the server's visualization messages.
        await page.wait_for_function("() => Number(document.getElementById('level').value) > 0")
        await screenshot(page, "sender-sending")
    await page.context.close()


async def test_python_sender_chromium_receiver_hears_880(
    server: ServerProcess, browser: Any
) -> None:
    async with RelayClient.connect(server.ws_url) as sender:
        stream_id = await sender.start_sending(ToneTrack(880))
        page = await open_page(browser, server.base_url + "/listen")
        await wait_state(page, "playing")
        assert await page.text_content("#stream-id") == stream_id
        # The Listen page meters what it plays (WebAudio): no level messages for listeners.
        await page.wait_for_function("() => Number(document.getElementById('level').value) > 0")
        heard = await settled_tone(page, 880)
        assert abs(heard["freq"] - 880) <= 10, heard
        assert heard["rms"] > 0.01, heard
        await page.wait_for_function("() => Number(document.getElementById('level').value) > 0")
        await page.wait_for_function(
            "() => document.getElementById('stream-select').options.length === 2"
        )
        await screenshot(page, "receiver-playing")
        await page.context.close()


@pytest.mark.mode_independent  # (both modes' fan-out: test_audio_relay; Chromium's ear: the 880)
async def test_chromium_sender_two_chromium_receivers_both_hear(
    server: ServerProcess, browser: Any
) -> None:
    sender_page, stream_id = await start_sender_page(browser, server)
    receivers = [await open_page(browser, server.base_url + "/listen") for _ in range(2)]
    for page in receivers:
        await wait_state(page, "playing")
        heard = await settled_tone(page, 440)
        assert abs(heard["freq"] - 440) <= 10, heard
        assert await page.text_content("#stream-id") == stream_id
    assert len(server.find("relay_subscribe", stream_id=stream_id)) >= 2
    for page in [sender_page, *receivers]:
        await page.context.close()


@pytest.mark.mode_independent  # page logic: the relay mode does not change it
async def test_receiver_page_waits_retries_then_plays_without_reload(
    server: ServerProcess, browser: Any
) -> None:
    page = await open_page(browser, server.base_url + "/listen")
    await wait_state(page, "waiting")
    assert "Waiting for someone to speak" in (await page.text_content("#status") or "")
    connection_id = await page.text_content("#connection-id")
    with anyio.fail_after(10):
        while len(server.find("no_stream_for_receiver", connection_id=connection_id)) < 2:
            await anyio.sleep(0.1)  # it retried at least once, every 2 s
    async with RelayClient.connect(server.ws_url) as sender:
        await sender.start_sending(ToneTrack(660))
        await wait_state(page, "playing", timeout=10)
        heard = await settled_tone(page, 660)
        assert abs(heard["freq"] - 660) <= 10, heard
        await page.context.close()


@pytest.mark.mode_independent  # page logic: the relay mode does not change it
async def test_sender_closes_tab_receiver_sees_end_then_rejoins(
    server: ServerProcess, browser: Any
) -> None:
    sender_page, stream_id = await start_sender_page(browser, server)
    page = await open_page(browser, server.base_url + "/listen")
    await wait_state(page, "playing")
    await sender_page.context.close()  # the tab goes away
    await page.wait_for_function(
        "() => document.getElementById('status').textContent.includes('speaker has stopped')",
        timeout=10000,
    )
    async with RelayClient.connect(server.ws_url) as sender:
        new_id = await sender.start_sending(ToneTrack(550))
        await wait_state(page, "playing", timeout=10)
        assert await page.text_content("#stream-id") == new_id != stream_id
        heard = await settled_tone(page, 550)
        assert abs(heard["freq"] - 550) <= 10, heard
        await page.context.close()


@pytest.mark.mode_independent  # page logic: the relay mode does not change it
async def test_receiver_page_reconnects_after_server_restart(
    browser: Any, tmp_path: Path, relay_mode: str
) -> None:
    """WebSocket loss: the page backs off, reconnects to the restarted server, plays again."""
    from relay_app.tools.testing import free_port

    ports = {"port": free_port(), "audio_port": free_port()}
    config = deep_merge(BROWSER_CONFIG, {"relay": {"mode": relay_mode}, "server": ports})
    first = ServerProcess(tmp_path, config).start()
    page = await open_page(browser, first.base_url + "/listen")
    await wait_state(page, "waiting")
    finish_server(first)
    await wait_state(page, "disconnected")
    second = ServerProcess(tmp_path, config).start()
    try:
        async with RelayClient.connect(second.ws_url) as sender:
            await sender.start_sending(ToneTrack(770))
            await wait_state(page, "playing", timeout=20)
            heard = await settled_tone(page, 770)
            assert abs(heard["freq"] - 770) <= 10, heard
            await page.context.close()
        assert_no_leaks(second)
    finally:
        finish_server(second)


@pytest.mark.mode_independent  # page logic: the relay mode does not change it
async def test_listen_page_offers_the_http_stream_and_an_audio_element_plays_it(
    server: ServerProcess, browser: Any
) -> None:
    """Listening without WebRTC: the Listen page's link, played by a plain <audio> element."""
    async with RelayClient.connect(server.ws_url) as sender:
        stream_id = await sender.start_sending(ToneTrack(880))
        page = await open_page(browser, server.base_url + "/listen")
        await wait_state(page, "playing")
        link = await page.get_attribute("#http-url", "href")
        assert link == f"{server.status_url}/stream/{stream_id}.ogg"
        await page.context.close()
        # A page on the audio port, so WebAudio may read the element's samples.
        player = await open_page(browser, server.status_url + "/health")
        heard = await player.evaluate(ANALYSE_JS, [link, 3])
        assert heard["playing"] and abs(heard["freq"] - 880) <= 10, heard
        assert heard["rms"] > 0.01, heard
        await player.context.close()
    server.wait_event("http_listener_ended", stream_id=stream_id)


async def test_listen_page_lists_channels_by_label_and_follows_the_channel_across_senders(
    tmp_path: Path, browser: Any
) -> None:
    config = deep_merge(
        BROWSER_CONFIG,
        {"channels": {"english": {"label": "English booth"}, "french": {"label": "Cabine FR"}}},
    )
    for server in serving(tmp_path, config):
        async with RelayClient.connect(server.ws_url) as french:
            await french.start_sending(ToneTrack(880), channel="french")
            async with RelayClient.connect(server.ws_url) as english:
                await english.start_sending(ToneTrack(440), channel="english")
                page = await _listen_by_label(server, browser)
            # The interpreter's laptop reconnects: the page plays again without a click, on
            # the same socket and the same peer connection (a handover, no new offer).
            await wait_state(page, "waiting")
            connection_id = await page.text_content("#connection-id")
            await page.evaluate("() => { window.firstPc = window.relayReceiver.pc; }")
            async with RelayClient.connect(server.ws_url) as english:
                await english.start_sending(ToneTrack(660), channel="english")
                await wait_state(page, "playing", timeout=20)
                heard = await settled_tone(page, 660)
                assert abs(heard["freq"] - 660) <= 10, heard
                assert await page.text_content("#connection-id") == connection_id
                assert await page.evaluate("() => window.relayReceiver.pc === window.firstPc")
                # The next interpreter takes the booth over: the page plays on, same connection.
                async with RelayClient.connect(server.ws_url) as relief:
                    await relief.start_sending(ToneTrack(550), channel="english", takeover=True)
                    await anyio.sleep(1)
                    heard = await settled_tone(page, 550)
                    assert abs(heard["freq"] - 550) <= 10, heard
                    assert await page.evaluate("() => window.relayReceiver.pc === window.firstPc")
            await page.context.close()


async def _listen_by_label(server: ServerProcess, browser: Any) -> Any:
    """/listen/french plays French; picking English by its label is remembered."""
    page = await open_page(browser, server.base_url + "/listen/french")
    await wait_state(page, "playing")
    assert await page.text_content("#stream-id") == "french"
    heard = await settled_tone(page, 880)
    assert abs(heard["freq"] - 880) <= 10, heard
    labels = await page.eval_on_selector_all(
        "#stream-select option", "options => options.map(o => o.textContent)"
    )
    assert "English booth" in labels and "Cabine FR" in labels, labels
    # Picking another channel is remembered on this device for the next visit.
    await page.select_option("#stream-select", "english")
    await wait_state(page, "playing")
    await page.wait_for_function(
        "() => document.getElementById('stream-id').textContent === 'english'"
    )
    assert page.url.endswith("/listen/english")
    again = await page.context.new_page()
    await again.goto(server.base_url + "/listen")
    await again.wait_for_function(
        "() => document.getElementById('stream-id').textContent === 'english'"
    )
    await again.close()
    return page


@pytest.mark.mode_independent  # page logic: the relay mode does not change it
async def test_speak_page_sends_on_the_channel_it_is_given(
    server: ServerProcess, browser: Any
) -> None:
    page = await open_page(browser, server.base_url + "/send?channel=booth-1")
    await wait_state(page, "idle")
    assert await page.input_value("#channel") == "booth-1"
    await page.click("#start")
    await wait_state(page, "sending")
    assert await page.text_content("#stream-id") == "booth-1"
    async with RelayClient.connect(server.ws_url) as receiver:
        assert await receiver.start_receiving("booth-1") == "booth-1"
        await receiver.wait_audio(1.0)
    await page.context.close()


# WHIP and WHEP for a browser, both: offer, wait for ICE gathering (no trickle), POST the
# offer, apply a 201's answer; returns the response.
POST_OFFER_JS = """
  async function postOffer(pc, url) {
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise((resolve) => {
      if (pc.iceGatheringState === "complete") return resolve();
      pc.onicegatheringstatechange = () => pc.iceGatheringState === "complete" && resolve();
    });
    const response = await fetch(url, {
      method: "POST", headers: {"Content-Type": "application/sdp"}, body: pc.localDescription.sdp,
    });
    if (response.status === 201) {
      await pc.setRemoteDescription({type: "answer", sdp: await response.text()});
    }
    return response;
  }
"""

WHEP_JS = (
    """
async (channel) => {
  // A WHEP player in a few lines of plain browser code: no relay_app JavaScript."""
    + POST_OFFER_JS
    + """
  const pc = new RTCPeerConnection({iceServers: []});
  pc.addTransceiver("audio", {direction: "recvonly"});
  const remote = new Promise((resolve) => {
    pc.ontrack = (event) => resolve(event.streams[0] || new MediaStream([event.track]));
  });
  const response = await postOffer(pc, `/whep/${channel}`);
  if (response.status !== 201) return {status: response.status, body: await response.text()};
  const stream = await remote;
  const audio = new Audio();  // Chromium feeds WebAudio from a remote stream that plays
  audio.srcObject = stream;
  audio.muted = true;
  await audio.play();
  window.relayReceiver = {remoteStream: stream};
  window.whep = {pc, location: response.headers.get("Location")};
  return {status: response.status, location: window.whep.location};
}
"""
)


@pytest.mark.mode_independent  # (WHEP in both modes: test_whip; this is the browser's side)
async def test_chromium_plays_a_channel_over_whep_with_plain_fetch(
    server: ServerProcess, browser: Any
) -> None:
    async with RelayClient.connect(server.ws_url) as sender:
        await sender.start_sending(ToneTrack(660), channel="whep-test")
        page = await open_page(browser, server.base_url + "/health")
        started = await page.evaluate(WHEP_JS, "whep-test")
        assert started["status"] == 201, started
        assert started["location"].startswith("/whep/whep-test/")
        heard = await settled_tone(page, 660)
        assert abs(heard["freq"] - 660) <= 10, heard
        deleted = await page.evaluate(
            "async () => (await fetch(window.whep.location, {method: 'DELETE'})).status"
        )
        assert deleted == 200
        await page.context.close()


async def test_listen_page_keeps_a_phone_playing_and_the_home_page_shows_its_qr_code(
    tmp_path: Path, browser: Any
) -> None:
    config = deep_merge(BROWSER_CONFIG, {"channels": {"hall": {"label": "Main hall"}}})
    for server in serving(tmp_path, config):
        async with RelayClient.connect(server.ws_url) as sender:
            await sender.start_sending(ToneTrack(550), channel="hall")
            page = await open_page(browser, server.base_url + "/listen/hall")
            await wait_state(page, "playing")
            await page.wait_for_function(
                "() => navigator.mediaSession.metadata && "
                "navigator.mediaSession.metadata.title === 'Main hall'"
            )
            assert await page.evaluate("navigator.mediaSession.playbackState") == "playing"
            # Requested while playing; headless Chromium may grant or refuse it.
            wake = await page.evaluate("window.relayReceiver.phone.wakeLockState")
            assert wake == "active" or wake.startswith("denied"), wake
            # Screen off: the same <audio> element plays the plain-HTTP stream instead.
            await page.evaluate("window.relayReceiver.useHttp(true)")
            await page.wait_for_function(
                "() => { const a = document.getElementById('audio');"
                " return a.currentSrc.endsWith('/stream/hall.ogg') && a.currentTime > 1; }",
                timeout=15000,
            )
            assert await page.evaluate("window.relayReceiver.httpMode.auto") is True
            await page.context.close()
        await _home_page_qr_code_decodes(server, browser)


async def _home_page_qr_code_decodes(server: ServerProcess, browser: Any) -> None:
    page = await open_page(browser, server.base_url + "/")
    await page.wait_for_function("() => document.getElementById('qr-url').href.includes('://')")
    shown = await page.get_attribute("#qr-url", "href")
    assert shown == f"{server.base_url}/listen"
    png = await page.locator("#qr").screenshot()
    with av.open(io.BytesIO(png)) as image:
        gray = next(image.decode(video=0)).to_ndarray(format="gray")
    found = zxingcpp.read_barcodes(gray)
    assert [code.text for code in found] == [shown]
    await page.context.close()
