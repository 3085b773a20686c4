"""relay.py: every subscriber gets every item; a slow one loses only its own oldest items."""

from __future__ import annotations

import fractions

import anyio
import pytest
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame

from relay_app.core.metrics import Metrics
from relay_app.webrtc.fanout import Fanout, pump

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


async def test_slow_subscriber_keeps_newest_items_and_fast_one_gets_all() -> None:
    metrics = Metrics()
    fanout = Fanout(capacity=4, metrics=metrics)
    fast, slow = fanout.subscribe(), fanout.subscribe()
    assert metrics.live.relay_subscriptions == 2
    received: list[int] = []

    async def read_fast() -> None:
        try:
            while True:
                received.append((await fast.recv()).pts)
        except MediaStreamError:
            pass

    async with anyio.create_task_group() as tg:
        tg.start_soon(read_fast)
        await pump(CountingSource(50), fanout.publish)
        # The source ended; the slow subscriber never read: it holds the newest 4 only.
        assert slow.dropped == 46
        assert metrics.drops["receiver_queue_full"] == 46
        kept = [(await slow.recv()).pts for _ in range(4)]
        assert kept == [960 * i for i in range(46, 50)]
        fanout.close()
    assert received == [960 * i for i in range(50)]
    assert metrics.live.relay_subscriptions == 0
    assert metrics.relay_latency.count == 54
    with pytest.raises(MediaStreamError):
        await slow.recv()
    with pytest.raises(MediaStreamError):
        fanout.subscribe()


async def test_unsubscribe_is_idempotent() -> None:
    metrics = Metrics()
    fanout = Fanout(capacity=2, metrics=metrics)
    track = fanout.subscribe()
    fanout.unsubscribe(track)
    fanout.unsubscribe(track)
    fanout.close()
    assert metrics.live.relay_subscriptions == 0


def test_latency_histogram_quantiles() -> None:
    metrics = Metrics()
    for ms in range(1, 101):
        metrics.relay_latency.observe(ms / 1000)
    summary = metrics.relay_latency.summary_ms()
    assert summary["count"] == 100
    assert 40 <= summary["p50_ms"] <= 60
    assert 90 <= summary["p95_ms"] <= 100
