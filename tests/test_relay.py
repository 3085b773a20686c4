"""relay.py: every subscriber gets every frame; a slow one loses only its own oldest frames."""

from __future__ import annotations

import fractions

import anyio
import anyio.lowlevel
import pytest
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame

from relay_app.metrics import LiveCounts
from relay_app.relay import StreamRelay

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


async def test_slow_subscriber_keeps_newest_frames_and_fast_one_gets_all() -> None:
    live = LiveCounts()
    relay = StreamRelay(CountingSource(50), capacity=4, live=live)
    fast, slow = relay.subscribe(), relay.subscribe()
    assert live.relay_subscriptions == 2
    received: list[int] = []

    async def read_fast() -> None:
        try:
            while True:
                frame = await fast.recv()
                received.append(frame.pts)
        except MediaStreamError:
            pass

    seen = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(read_fast)
        await relay.run(lambda frame: seen.append(frame))
        # The source ended; the slow subscriber never read: it holds the newest 4 only.
        assert slow.dropped == 46
        kept = [(await slow.recv()).pts for _ in range(4)]
        assert kept == [960 * i for i in range(46, 50)]
        relay.close()
    assert len(seen) == 50 and received == [960 * i for i in range(50)]
    assert live.relay_subscriptions == 0
    with pytest.raises(MediaStreamError):
        await slow.recv()
    with pytest.raises(MediaStreamError):
        relay.subscribe()


async def test_unsubscribe_is_idempotent() -> None:
    live = LiveCounts()
    relay = StreamRelay(CountingSource(0), capacity=2, live=live)
    track = relay.subscribe()
    relay.unsubscribe(track)
    relay.unsubscribe(track)
    relay.close()
    assert live.relay_subscriptions == 0
