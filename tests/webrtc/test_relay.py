"""A stream's queued outputs: every listener gets every item; a slow one loses only its own
oldest items."""

from __future__ import annotations

import fractions
import time

import anyio
import pytest
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame

from relay_app.core.metrics import Metrics
from relay_app.plane.outputs import Outputs, TrackOutput
from relay_app.webrtc.fanout import Media, RelayTrack, pump

pytestmark = pytest.mark.anyio


class CountingSource(MediaStreamTrack):
    kind = "audio"

    def __init__(self, frames: int) -> None:
        super().__init__()
        self.left = frames
        self.pts = 0

    async def recv(self) -> AudioFrame:
        if self.left == 0:
            raise MediaStreamError
        self.left -= 1
        await anyio.lowlevel.checkpoint()
        frame = AudioFrame(format="s16", layout="mono", samples=960)
        frame.pts, frame.sample_rate = self.pts, 48000
        frame.time_base = fractions.Fraction(1, 48000)
        self.pts += 960
        return frame


def track_output(key: str, metrics: Metrics, capacity: int) -> TrackOutput:
    return TrackOutput(key, RelayTrack(capacity, metrics), "frame")


async def test_slow_listener_keeps_newest_items_and_fast_one_gets_all() -> None:
    metrics = Metrics()
    outputs = Outputs(metrics)
    fast, slow = track_output("fast", metrics, 4), track_output("slow", metrics, 4)
    outputs.add(fast)
    outputs.add(slow)
    assert metrics.live.relay_subscriptions == 2
    received: list[int] = []

    def publish(frame: Media) -> None:
        for push in outputs.frame:
            push(frame, time.monotonic())

    async def read_fast() -> None:
        try:
            while True:
                received.append((await fast.track.recv()).pts)
        except MediaStreamError:
            pass

    async with anyio.create_task_group() as tg:
        tg.start_soon(read_fast)
        await pump(CountingSource(50), publish)
        # The source ended; the slow listener never read: it holds the newest 4 only.
        assert slow.track.dropped == 46
        assert metrics.drops["receiver_queue_full"] == 46
        kept = [(await slow.track.recv()).pts for _ in range(4)]
        assert kept == [960 * i for i in range(46, 50)]
        outputs.close()
    assert received == [960 * i for i in range(50)]
    assert metrics.relay_latency.count == 54
    with pytest.raises(MediaStreamError):
        await slow.track.recv()
    assert outputs.closed
    outputs.remove(fast)
    outputs.remove(slow)
    assert metrics.live.relay_subscriptions == 0


async def test_removing_an_output_is_idempotent_and_a_new_one_replaces_its_key() -> None:
    metrics = Metrics()
    outputs = Outputs(metrics)
    first, second = track_output("a", metrics, 2), track_output("a", metrics, 2)
    outputs.add(first)
    outputs.add(second)  # the same listener again: the first is closed and gone
    assert outputs.frame == (second.deliver,) and metrics.live.relay_subscriptions == 1
    with pytest.raises(MediaStreamError):
        await first.track.recv()
    outputs.remove(second)
    outputs.remove(second)
    outputs.remove(first)
    assert metrics.live.relay_subscriptions == 0 and not outputs.receivers


def test_latency_histogram_quantiles() -> None:
    metrics = Metrics()
    for ms in range(1, 101):
        metrics.relay_latency.observe(ms / 1000)
    summary = metrics.relay_latency.summary_ms()
    assert summary["count"] == 100
    assert 40 <= summary["p50_ms"] <= 60
    assert 90 <= summary["p95_ms"] <= 100
