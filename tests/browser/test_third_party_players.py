"""WHEP players we did not write, in real Chromium: Eyevinn's @eyevinn/webrtc-player with its
default options (it offers video and audio, video first) and whip-whep's WHEP client as its
README uses it (`addTransceiver("audio")`: sendrecv). Both must hear the sender's tone with the
fast path on, with a port per peer connection and on the one UDP port (`webrtc.udp_port`).

The players come from the npm registry, pinned, bundled by .ci/run into
test-output/npm/players.js; the page is served on the relay's own origin (Playwright answers
for one URL of it), so their POSTs are same-origin, as a page a venue hosts would be.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest

from relay_app.client import RelayClient, ToneTrack
from relay_app.tools.testing import REPO, ServerProcess, free_udp_port

from ..helpers import unavailable
from ..scenarios.test_one_udp_port import udp_ports_of
from .test_browser import own_contexts

pytestmark = pytest.mark.anyio

PLAYERS = REPO / "test-output" / "npm" / "players.js"
PAGE = (
    '<!doctype html><html lang="en"><body><video id="v" autoplay playsinline></video></body></html>'
)

EYEVINN = """async (url) => {
  const video = document.getElementById("v");
  const player = new window.WebRTCPlayer({ video, type: "whep" });  // the defaults
  await player.load(new URL(url));
  player.unmute();
  return "loaded";
}"""

WHIP_WHEP = """async (url) => {
  const pc = new RTCPeerConnection({ bundlePolicy: "max-bundle" });
  pc.addTransceiver("audio");  // as its README: sendrecv
  pc.addTransceiver("video");
  pc.ontrack = (event) => {
    if (event.track.kind === "audio") document.getElementById("v").srcObject = event.streams[0];
  };
  await new window.WHEPClient().view(pc, url);
  return "viewing";
}"""

# The dominant frequency of what the <video> element plays, over `seconds`.
HEARD = """async (seconds) => {
  const media = document.getElementById("v");
  const stream = media.srcObject;
  if (!stream || !stream.getAudioTracks().length) return null;
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
}"""


@pytest.fixture(scope="module")
def relay_mode() -> str:
    return "forward"  # the fast path: where the section order mattered


@pytest.fixture
async def browser(module_chromium: Any) -> AsyncIterator[Any]:
    if not PLAYERS.exists():
        unavailable(f"the npm players are not bundled at {PLAYERS}: run .ci/run")
    async with own_contexts(module_chromium) as shared:
        yield shared


async def heard(page: Any, tries: int = 10) -> float | None:
    """What the player plays, measured again while it is not (yet) the tone: a player sets
    its element's stream only once its connection is up."""
    frequency = None
    for _ in range(tries):
        frequency = await page.evaluate(HEARD, 1.5)
        if frequency is not None and abs(frequency - 440) <= 10:
            return float(frequency)
        await anyio.sleep(0.5)
    return frequency


PLAYERS_AND_SCRIPTS = [("eyevinn", EYEVINN), ("whip-whep", WHIP_WHEP)]


@pytest.mark.parametrize(("player", "script"), PLAYERS_AND_SCRIPTS)
async def test_a_third_party_whep_player_hears_the_tone_on_the_fast_path(
    server: ServerProcess, browser: Any, player: str, script: str
) -> None:
    await plays_the_tone(server, browser, player, script)


@pytest.mark.parametrize(("player", "script"), PLAYERS_AND_SCRIPTS)
async def test_a_third_party_whep_player_hears_the_tone_on_one_udp_port(
    make_forward_server: Callable[..., ServerProcess], browser: Any, player: str, script: str
) -> None:
    port = free_udp_port()
    server = make_forward_server({"webrtc": {"udp_port": port}})
    assert server.proc is not None
    await plays_the_tone(server, browser, player, script)
    assert udp_ports_of(server.proc.pid) == [port]


async def plays_the_tone(server: ServerProcess, browser: Any, player: str, script: str) -> None:
    """`player` loaded by `script` in a page of the relay's origin plays a speaker's tone."""
    async with RelayClient.connect(server.ws_url) as sender:
        # An unnamed stream: its players end with it (a channel's would wait for its next
        # sender, and a closed tab says no goodbye: only ICE consent would tell, ~30 s later).
        stream_id = await sender.start_sending(ToneTrack(440))
        context = await browser.new_context(bypass_csp=True)
        page = await context.new_page()
        page.on("console", lambda message: print(f"[{player}] {message.type}: {message.text}"))
        page_url = f"{server.base_url}/interop-{player}.html"
        await page.route(page_url, lambda route: route.fulfill(body=PAGE, content_type="text/html"))
        await page.goto(page_url)
        await page.add_script_tag(path=str(PLAYERS))
        await page.evaluate(script, f"{server.base_url}/whep/{stream_id}")
        assert await heard(page) == pytest.approx(440, abs=10), player
        await context.close()
