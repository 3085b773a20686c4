"""The handover gap, for every kind of output: a channel's speaker changes and each kind of
listener hears the next one after no more than the real silence, on one timeline.

Kinds of output: a WebRTC listener on the fast path, one that negotiated RED, one fed
through an aiortc track (relay.fast_path off), one in transcode mode, a plain-HTTP Ogg
listener, the channel's recording, and a WebRTC listener on node B of a channel spoken on
node A (B's upstream of it; real Redis). Kinds whose server is set up alike listen to one
channel at once (`SETUPS`: the fast path, RED, Ogg and the recording share one), and each is
measured across the same handover. Each is a real listener of a real server; what it
received is turned into timed pieces of its media timeline (`Piece`: an RTP packet and its
timestamp, an Ogg page and its granule position), and across the handover (`measure`):

- the wall-clock silence: from the arrival of the last speaker's last packet to that of the
  next speaker's first (an Ogg page's first packet came as long before the page as the
  page's audio, less one packet, lasts) is at most 100 ms on a takeover;
- the timeline: it moves on by the time that really passed, within 100 ms (a recording, which
  has no arrival times, against the fast-path listener of the same channel): never back,
  never seconds ahead, on a takeover and after a real pause alike.

bench/handover.py measures the same over many handovers.
"""

from __future__ import annotations

import itertools
import shutil
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import anyio
import pytest

from relay_app.audio.ogg import OPUS_RATE, opus_samples, page_granule, page_samples
from relay_app.audio.recording import SILENCE
from relay_app.client import RelayClient, ToneTrack
from relay_app.core import protocol as p
from relay_app.tools.ogg_listener import ogg_listener
from relay_app.tools.testing import RedisProcess, ServerProcess, cluster_config, deep_merge
from relay_app.webrtc.sdp import red_payload_type

from .test_handover import Arrivals

pytestmark = pytest.mark.anyio

CHANNELS = {"stage": {"label": "Main stage"}}
FRAME = 960  # one 20 ms packet at 48 kHz
BOUND = 0.1  # seconds: the handover gap, and the timeline's error across it
PAUSE = 1.0  # seconds between one speaker stopping and the next starting

# Kinds whose server is set up alike share one channel, measured at each of its listeners
# across the same handovers; a kind that needs its own setting has its own. (The fast path,
# RED and Ogg listen to a recorded channel: the recording is an output beside theirs.)
SETUPS: dict[str, tuple[str, ...]] = {
    "forward": ("fast_path", "red", "ogg", "recording"),
    "aiortc_track": ("aiortc_track",),
    "transcode": ("transcode",),
    "cluster": ("cluster",),
}
CONFIG: dict[str, dict[str, Any]] = {
    "aiortc_track": {"relay": {"fast_path": False}},
    "transcode": {"relay": {"mode": "transcode"}},
}


@pytest.fixture(scope="module")
def relay_mode() -> str:
    return "forward"  # each setup sets its own mode (CONFIG)


class Piece(NamedTuple):
    """A piece of what a listener received: when it arrived (time.monotonic(); None for a
    recording's page), where on the listener's timeline it starts and how long it lasts (48
    kHz samples)."""

    arrival: float | None
    start: int
    samples: int


def rtp_pieces(arrivals: Arrivals) -> list[Piece]:
    """Each RTP packet a WebRTC listener got, its timestamp unwrapped past 2**32."""
    pieces: list[Piece] = []
    position = last = None
    for arrival, _sequence, timestamp in arrivals.packets:
        if position is None or last is None:
            position = timestamp
        else:
            step = (timestamp - last) & 0xFFFFFFFF
            position += step - (1 << 32) if step >= 1 << 31 else step
        last = timestamp
        pieces.append(Piece(arrival, position, FRAME))
    return pieces


def ogg_pages(body: bytes | bytearray) -> Iterator[tuple[int, bytes]]:
    """(offset of its end in `body`, page) for each whole page of an Ogg stream."""
    offset = 0
    while offset + 27 <= len(body):
        assert body[offset : offset + 4] == b"OggS", f"no Ogg page at byte {offset}"
        segments = body[offset + 26]
        end = offset + 27 + segments + sum(body[offset + 27 : offset + 27 + segments])
        if end > len(body):
            return
        yield end, bytes(body[offset:end])
        offset = end


def ogg_pieces(body: bytes | bytearray, arrivals: list[tuple[float, int]] | None) -> list[Piece]:
    """Each audio page of an Ogg/Opus stream (its granule position is where its last sample
    ends), with the arrival of the chunk that completed it when `arrivals` are known."""
    pieces = []
    for end, data in ogg_pages(body):
        if data[28:36] in (b"OpusHead", b"OpusTags"):
            continue
        samples = page_samples(data)
        if not samples:
            continue  # (the end-of-stream page, empty)
        arrival = next(at for at, length in arrivals if length >= end) if arrivals else None
        pieces.append(Piece(arrival, page_granule(data) - samples, samples))
    return pieces


def recording_pieces(body: bytes) -> list[Piece]:
    """Each packet of a recording but the silence it was given where nobody spoke (its
    timeline is the channel's: a pause is written as silent packets, not as a skip)."""
    pieces = []
    for _end, data in ogg_pages(body):
        if data[28:36] in (b"OpusHead", b"OpusTags") or not page_samples(data):
            continue
        lacing = data[27 : 27 + data[26]]
        position, offset, packet = page_granule(data) - page_samples(data), 27 + len(lacing), b""
        for size in lacing:
            packet += data[offset : offset + size]
            offset += size
            if size == 255:
                continue
            samples = opus_samples(packet)
            if packet != SILENCE:
                pieces.append(Piece(None, position, samples))
            position, packet = position + samples, b""
    return pieces


@dataclass
class Handover:
    """What a listener's pieces show across one handover (seconds)."""

    silence: float  # the longest wall-clock wait for the next packet
    real_gap: float  # that wait, less one packet: the audio that really was not there
    timeline_gap: float  # what the timeline skipped where the silence was
    drift: float  # the timeline's offset from the wall clock, after less before
    steps_back: int  # pieces that started before the one before them ended
    biggest_step: float  # the longest skip on the timeline anywhere across the handover

    @property
    def error(self) -> float:
        """How far the timeline's skip is from the real gap."""
        return self.timeline_gap - self.real_gap

    def __str__(self) -> str:
        return (
            f"silence {self.silence * 1000:.0f} ms, timeline skipped "
            f"{self.timeline_gap * 1000:.0f} ms of a real {self.real_gap * 1000:.0f} ms "
            f"(error {self.error * 1000:+.0f} ms, drift {self.drift * 1000:+.0f} ms, "
            f"{self.steps_back} steps back, biggest step {self.biggest_step * 1000:.0f} ms)"
        )


def encoder_tail(pieces: list[Piece]) -> list[Piece]:
    """Without the one packet a re-encoding listener (transcode) gets late after a pause:
    aiortc's Opus encoder holds a frame back (its lookahead), so the last speaker's last 20 ms
    leaves only when the next speaker's first frame pushes it out. It carries its own true
    timestamp (the last speaker's timeline, one frame on) and comes after the pause: a
    listener's jitter buffer drops it as late. At most one such packet, never more."""
    late = [
        b
        for a, b in itertools.pairwise(pieces)
        if b.start == a.start + a.samples
        and a.arrival is not None
        and b.arrival is not None
        and b.arrival - a.arrival > BOUND
    ]
    assert len(late) <= 1, f"{len(late)} late packets on the old timeline"
    return [piece for piece in pieces if piece not in late]


def measure(pieces: list[Piece], moment: float) -> Handover:
    """The handover after `moment` in a listener's pieces (all with arrival times)."""
    timed = [(piece.arrival, piece) for piece in pieces if piece.arrival is not None]
    assert len(timed) == len(pieces), "every piece needs its arrival"
    after = [piece for at, piece in timed if at >= moment - 0.5]
    assert len(after) >= 20, f"only {len(after)} pieces after the handover began"

    def waited(a: Piece, b: Piece) -> float:
        """From a's last packet to b's first (b arrived when its last packet did)."""
        assert a.arrival is not None and b.arrival is not None
        return b.arrival - (b.samples - FRAME) / OPUS_RATE - a.arrival

    pairs = list(itertools.pairwise(after))
    a, b = max(pairs, key=lambda pair: waited(*pair))
    skips = [(b2.start - (a2.start + a2.samples)) / OPUS_RATE for a2, b2 in pairs]

    def offsets(window: list[Piece]) -> float:
        return statistics.median(
            float(piece.arrival or 0) - (piece.start + piece.samples) / OPUS_RATE
            for piece in window
        )

    last = timed[-1][0]
    before = [piece for at, piece in timed if moment - 1.0 <= at < moment]
    settled = [piece for at, piece in timed if at >= last - 1.0]
    assert before and settled, "no pieces before the handover or at the end"
    return Handover(
        silence=waited(a, b),
        real_gap=waited(a, b) - FRAME / OPUS_RATE,
        timeline_gap=(b.start - (a.start + a.samples)) / OPUS_RATE,
        drift=offsets(settled) - offsets(before),
        steps_back=sum(skip < 0 for skip in skips),
        biggest_step=max(skips),
    )


@pytest.fixture
def redis(request: pytest.FixtureRequest) -> Iterator[RedisProcess | None]:
    """The cluster's Redis (None for the other setups); requested before `make_server`, so
    the nodes are checked and stopped before it is."""
    if request.getfixturevalue("setup") != "cluster":
        yield None
        return
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is missing: apt-get install redis-server (.ci/run does)")
    server = RedisProcess().start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Listener:
    """One listener of the channel "stage", of one kind, and what it received."""

    kind: str
    client: RelayClient | None = None  # a WebRTC listener
    arrivals: Arrivals | None = None  # its packets
    body: bytearray = field(default_factory=bytearray)  # the Ogg listener's response
    chunks: list[tuple[float, int]] = field(default_factory=list)  # and when it came

    async def join(self, server: ServerProcess, stack: AsyncExitStack) -> None:
        """Joins the channel (its speaker is live) and hears it for a while."""
        if self.kind == "ogg":
            url = f"{server.status_url}/stream/stage.ogg"
            self.body = stack.enter_context(ogg_listener(url, self.chunks))
            with anyio.fail_after(10):
                while len(ogg_pieces(self.body, None)) < 10:
                    await anyio.sleep(0.1)
            return
        self.client = client = await stack.enter_async_context(RelayClient.connect(server.ws_url))
        client.red = self.kind == "red"
        await client.start_receiving("stage")
        assert client.pc is not None
        if client.red:
            assert red_payload_type(client.pc.remoteDescription.sdp) is not None
        self.arrivals = Arrivals(client.pc)
        await client.wait_audio(1.0)

    def pieces(self) -> list[Piece]:
        if self.kind == "ogg":
            return ogg_pieces(self.body, self.chunks)
        assert self.arrivals is not None
        return rtp_pieces(self.arrivals)

    def stayed(self) -> None:
        """A WebRTC listener stayed on its one connection (no second offer)."""
        if self.client is not None:
            assert sum(isinstance(m, p.Offer) for m in self.client.messages) == 1


@dataclass
class Channel:
    """The channel "stage" set up one way (`SETUPS`): where its speakers speak, where its
    listeners listen (node B for the cluster), and its recordings."""

    speaking: ServerProcess
    listening: ServerProcess
    listeners: list[Listener]
    directory: Path | None = None  # the recordings, when the channel is recorded

    async def listen(self, stack: AsyncExitStack) -> None:
        if self.listening is not self.speaking:  # node B lists node A's channel
            with anyio.fail_after(10):
                while "stage" not in self.listening.get("/stream/status", status_port=True).text:
                    await anyio.sleep(0.1)
        for listener in self.listeners:
            await listener.join(self.listening, stack)

    def handovers(self, moment: float, what: str, end: float) -> dict[str, Handover]:
        """Each kind's handover after `moment`, in what arrived before `end`, printed (after
        a pause, without the packet a re-encoding listener gets late: `encoder_tail`)."""
        measured = {}
        for one in self.listeners:
            pieces = [piece for piece in one.pieces() if (piece.arrival or 0) < end]
            if what == "pause" and one.kind == "transcode":  # (from a second before the stop)
                pieces = encoder_tail([x for x in pieces if (x.arrival or 0) >= moment - 1.0])
            measured[one.kind] = measure(pieces, moment)
        for kind, handover in measured.items():
            print(f"{kind} {what}: {handover}")
        return measured

    def stayed(self) -> None:
        for listener in self.listeners:
            listener.stayed()

    async def recordings(self) -> list[list[Piece]]:
        """Once the channel is quiet: each recording file's pages, oldest file first."""
        assert self.directory is not None
        started = len(self.speaking.find("recording_started"))
        with anyio.fail_after(10):
            while len(self.speaking.find("recording_ended")) < started:
                await anyio.sleep(0.1)
        files = sorted(self.directory.glob("*.ogg"), key=lambda path: path.stat().st_mtime)
        return [recording_pieces(path.read_bytes()) for path in files]


def channel(
    setup: str,
    make_server: Callable[..., ServerProcess],
    redis: RedisProcess | None,
    tmp_path: Path,
) -> Channel:
    """The channel's server (two nodes for the cluster) and its listeners, one per kind."""
    config = deep_merge({"channels": CHANNELS}, CONFIG.get(setup, {}))
    listeners = [Listener(kind) for kind in SETUPS[setup] if kind != "recording"]
    if "recording" in SETUPS[setup]:
        directory = tmp_path / "recordings"
        recording = {"enabled": True, "directory": str(directory), "continue_within": 3.0}
        server = make_server(deep_merge(config, {"recording": recording}))
        return Channel(server, server, listeners, directory=directory)
    if setup == "cluster":
        assert redis is not None
        a, b = (make_server(deep_merge(config, cluster_config(redis.url, node))) for node in "ab")
        for node in (a, b):
            node.wait_event("cluster_joined")
        return Channel(a, b, listeners)
    server = make_server(config)
    return Channel(server, server, listeners)


def check_recording(out_pieces: list[list[Piece]], takeover: Handover, pause: Handover) -> None:
    """The channel's recording is one file whose timeline skips what a listener waited: at
    the pause as much as the pause (the skip followed by the last speaker's ~2 s), at the
    takeover no more than the takeover."""
    lengths = [round((f[-1].start + f[-1].samples) / OPUS_RATE, 2) for f in out_pieces if f]
    print(f"recording: {len(out_pieces)} file(s) of {lengths} s")
    assert len(out_pieces) == 1, f"the channel's recording is {len(out_pieces)} files"
    (pieces,) = out_pieces
    steps = [(b.start - (a.start + a.samples)) / OPUS_RATE for a, b in itertools.pairwise(pieces)]
    assert min(steps) >= 0, "the recording's timeline went back"
    at = max(range(len(steps)), key=steps.__getitem__)
    skipped, elsewhere = steps[at], max(steps[:at] + steps[at + 1 :])
    after = (pieces[-1].start + pieces[-1].samples - pieces[at + 1].start) / OPUS_RATE
    print(
        f"recording: skipped {skipped * 1000:.0f} ms of a real {pause.real_gap * 1000:.0f} ms"
        f" pause, {after:.2f} s before its end; {elsewhere * 1000:.0f} ms elsewhere (the"
        f" takeover's real gap: {takeover.real_gap * 1000:.0f} ms)"
    )
    assert abs(skipped - pause.real_gap) <= BOUND
    assert 1.5 <= after <= 3.0, "the recording's longest skip is not the pause"
    assert elsewhere <= max(takeover.real_gap, 0) + BOUND


def check_timelines(handovers: dict[str, Handover]) -> None:
    """Every kind's timeline moved on by the time that really passed, never back."""
    for kind, handover in handovers.items():
        assert abs(handover.error) <= BOUND and abs(handover.drift) <= BOUND, (kind, handover)
        assert handover.steps_back == 0, (kind, handover)
        assert handover.biggest_step <= handover.silence + BOUND, (kind, handover)


@pytest.mark.parametrize("setup", SETUPS)
async def test_each_kind_of_listener_waits_at_most_100_ms_at_a_takeover_and_skips_a_pause(
    setup: str,
    redis: RedisProcess | None,
    make_server: Callable[..., ServerProcess],
    tmp_path: Path,
) -> None:
    """The next speaker takes the channel over mid-sentence (make before break); later that
    speaker stops and a third one starts about a second later. Every listener stays on its
    connection, its timeline on one line through both."""
    out = channel(setup, make_server, redis, tmp_path)
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(RelayClient.connect(out.speaking.ws_url))
        await first.start_sending(ToneTrack(440), channel="stage")
        await out.listen(stack)
        await anyio.sleep(1.0)
        second = await stack.enter_async_context(RelayClient.connect(out.speaking.ws_url))
        taken = time.monotonic()
        await second.start_sending(ToneTrack(660), channel="stage", takeover=True)
        await anyio.sleep(2.0)
        stopped = time.monotonic()
        await second.send(p.Stop())
        await second.expect("stopped")
        await anyio.sleep(PAUSE)
        async with RelayClient.connect(out.speaking.ws_url) as third:
            await third.start_sending(ToneTrack(880), channel="stage")
            await anyio.sleep(2.0)
            takeovers = out.handovers(taken, "takeover", end=stopped)
            pauses = out.handovers(stopped, "pause", end=time.monotonic())
        out.stayed()
    if out.directory is not None:
        check_recording(await out.recordings(), takeovers["fast_path"], pauses["fast_path"])
    waited = {kind: h.silence for kind, h in takeovers.items()}
    assert max(waited.values()) <= BOUND, f"seconds waited at the takeover: {waited}"
    paused = {kind: h.silence for kind, h in pauses.items()}
    assert min(paused.values()) >= PAUSE, f"the pause was not real: {paused}"
    check_timelines(takeovers)
    check_timelines(pauses)
