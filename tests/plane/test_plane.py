"""The media plane's pieces on their own: the one decision (Strategy), the one collection of
outputs, and the channel's one timeline as Ogg pages read it."""

from __future__ import annotations

import anyio
import pytest
import structlog
from aiortc import RTCPeerConnection

from relay_app.audio.http_audio import ChannelPages, HttpAudio
from relay_app.audio.ogg import page_granule
from relay_app.core.config import RelaySettings
from relay_app.core.metrics import Metrics
from relay_app.plane.factory import Strategy
from relay_app.plane.outputs import FastPathOutput, TrackOutput
from relay_app.plane.timeline import ChannelClock
from relay_app.webrtc.fast_path import Placeholder
from relay_app.webrtc.peer import Peer

pytestmark = pytest.mark.anyio

OPUS_20MS = bytes([0xFC, 0xFF, 0xFE])  # TOC: CELT-only fullband 20 ms, one frame


@pytest.mark.parametrize(
    ("mode", "fast_path", "kind", "feed", "audible_at_first_packet"),
    [
        ("forward", True, FastPathOutput, "red", True),
        ("forward", False, TrackOutput, "packet", True),
        ("transcode", True, TrackOutput, "frame", False),
        ("transcode", False, TrackOutput, "frame", False),
    ],
)
async def test_the_strategy_makes_each_listeners_output_of_the_kind_its_settings_say(
    mode: str, fast_path: bool, kind: type, feed: str, audible_at_first_packet: bool
) -> None:
    strategy = Strategy.of(RelaySettings(mode=mode, fast_path=fast_path))
    metrics = Metrics()
    pc = RTCPeerConnection()
    try:
        sending = strategy.sending(Peer(pc, structlog.get_logger()), metrics)
        output = sending.output("listener-1")
        assert type(output) is kind and output.feed == feed and output.receiver
        assert isinstance(sending.track, Placeholder) == (kind is FastPathOutput)
        assert strategy.audible_at_first_packet is audible_at_first_packet
        assert (strategy.sparse(5) is None) is (mode == "transcode")
        output.close()
        sending.stop()
    finally:
        await pc.close()


def test_a_streams_outputs_are_one_collection_and_its_feeds_follow_it() -> None:
    metrics = Metrics()
    strategy = Strategy.of(RelaySettings(mode="forward", fast_path=False))
    outputs = strategy.outputs(metrics)  # the stream's own Ogg pages are there from the start
    assert outputs.http is not None and len(outputs.payload) == 1 and not outputs.receivers
    meter = strategy.meter(metrics, downsample=5)
    assert meter.every == 1  # forward mode decodes only one packet in 5 already
    outputs.add(meter)
    told: list[object] = []
    listener = TrackOutput("listener-1", meter.track.__class__(4, metrics), "packet")
    listener.tell, listener.levels = told.append, print
    outputs.add(listener)
    assert outputs.receivers == (listener,) and outputs.listeners == 1
    assert outputs.frame == (meter.deliver,) and outputs.packet == (listener.deliver,)
    assert outputs.told() == [told.append] and outputs.levels() == [print]
    assert metrics.live.relay_subscriptions == 2 and outputs.heard()
    listener.link = True  # another node's upstream: a receiver, not a listener here
    assert outputs.listeners == 0 and outputs.heard()
    outputs.close()
    outputs.remove(listener)
    outputs.remove(meter)
    assert metrics.live.relay_subscriptions == 0 and not outputs.heard()
    assert outputs.http is not None and outputs.http.closed


def test_a_new_sender_continues_the_channels_timeline_after_the_real_pause() -> None:
    clock = ChannelClock()
    assert clock.continued(100.0) == 0  # the channel's first sender starts it
    clock.pts, clock.at = 48_000, 100.0
    assert clock.continued(101.5) == 48_000 + 72_000  # 1.5 s later: 1.5 s further on
    assert clock.continued(100.001) == 48_000 + 960  # at once: one frame further on


async def pages_of(http: HttpAudio, first_pts: int, packets: int) -> list[bytes]:
    """The pages a listener gets of `packets` 20 ms packets fed from `first_pts` on."""
    async with http.listen(structlog.get_logger()) as listener:
        for n in range(packets):
            http.feed(OPUS_20MS, first_pts + 960 * n, 0.0)
        return [listener.pages.receive_nowait()[0] for _ in range(packets // 5)]


async def test_an_ogg_listener_hears_the_handover_pause_as_the_timeline_has_it() -> None:
    """Its granules come from the channel's timeline: a next sender 1.5 s after the first one's
    last packet is 1.5 s further on in the listener's stream, however long it took the next
    sender to register (the pages never read a clock of their own)."""
    metrics = Metrics()
    first, second = HttpAudio(metrics), HttpAudio(metrics)
    pages = ChannelPages()
    pages.follow(first)
    heard = [pages.page(data) for data in await pages_of(first, 480_000, 10)]  # 10 s in, 0.2 s
    assert [page_granule(p) for p in heard] == [4_800, 9_600]  # from 0 at its first page
    await anyio.sleep(0.2)  # (the next sender registers: no clock is read here)
    pages.follow(second)
    after = 480_000 + 10 * 960 + 72_000  # its first packet: 1.5 s after the last one ended
    heard = [pages.page(data) for data in await pages_of(second, after, 5)]
    assert [page_granule(p) for p in heard] == [9_600 + 72_000 + 4_800]


async def test_a_sender_whose_audio_never_came_leaves_nothing_in_an_ogg_listeners_stream() -> None:
    """Its stream ended before its first packet: its end page holds nothing to place on the
    timeline, so the listener gets nothing of it and the next sender goes on the stream."""
    metrics = Metrics()
    mute, next_one = HttpAudio(metrics), HttpAudio(metrics)
    pages = ChannelPages()
    pages.follow(mute)
    async with mute.listen(structlog.get_logger()) as listener:
        mute.close()
        (end, _) = listener.pages.receive_nowait()
    assert pages.page(end) is None
    pages.follow(next_one)
    heard = [pages.page(data) for data in await pages_of(next_one, 960_000, 5)]
    assert [page_granule(p) for p in heard if p is not None] == [4_800]
