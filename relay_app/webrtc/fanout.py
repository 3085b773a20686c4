"""The queued tracks aiortc's senders read: `RelayTrack` (one listener's bounded queue of one
stream's audio) and `ChannelTrack` (a channel listener's track, switched from one stream's
queue to the next's); and `pump`, which drains a source track.

The plane's packet path (plane/path.py) pushes each item (encoded Opus packets in forward
mode, decoded frames in transcode mode) to every queued output's RelayTrack.

Why not aiortc's `MediaRelay`: it starts its reader with `asyncio.ensure_future` (a task nobody
owns, left pending at exit, aiortc PR #595) and its buffered proxies queue without limit (PR
#498). Here the reader is a plain coroutine (`pump`) that the sender's session task group runs,
so its lifetime is the sender's scope; and each queue keeps only the newest `capacity`
items, so a slow receiver loses its own oldest audio instead of growing memory or delaying
others. The source is always drained, even with no listeners (aiortc issue #554).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av.frame import Frame
from av.packet import Packet

from ..core.metrics import Metrics

Media = Frame | Packet
"""What a track yields: decoded frames (transcoding relay) or encoded packets (forwarding)."""


class RelayTrack(MediaStreamTrack):
    """A subscriber's view of the source: what a receiver's RTCRtpSender reads."""

    kind = "audio"

    def __init__(self, capacity: int, metrics: Metrics) -> None:
        super().__init__()
        # (item, time it entered the relay): the age at recv() is the relay-added latency.
        self._items: deque[tuple[Media, float]] = deque(maxlen=capacity)
        # asyncio.Event, not anyio: aiortc calls recv() from its own asyncio tasks and we need
        # clear(); the event is only touched from the loop thread.
        self._ready = asyncio.Event()
        self._closed = False
        self._metrics = metrics
        self.dropped = 0

    def push(self, item: Media, ingress: float) -> None:
        """The next item, from the fan-out (the oldest dropped when the queue is full)."""
        if len(self._items) == self._items.maxlen:
            self.dropped += 1
            self._metrics.count_drop("receiver_queue_full")
        self._items.append((item, ingress))
        self._ready.set()

    def end(self) -> None:
        """No more items: `recv` ends once the queue is read."""
        self._closed = True
        self._ready.set()

    async def recv(self) -> Media:
        while not self._items:
            if self._closed or self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        item, ingress = self._items.popleft()
        self._metrics.record_egress(item, time.monotonic() - ingress)
        return item


class ChannelTrack(MediaStreamTrack):
    """What a channel's receiver's RTCRtpSender reads (the aiortc path: transcode mode, or
    forward mode without the fast path): its current sender's `RelayTrack`, switched to the
    next sender's by `follow` without the receiver renegotiating. Between two senders it
    yields nothing (aiortc's sender waits; RTCP and ICE consent go on); the pts are already
    on the channel's one timeline (plane/timeline.py): the receiver sees a pause, not a new
    source.
    """

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._source: MediaStreamTrack | None = None
        self._switched = asyncio.Event()

    def follow(self, source: MediaStreamTrack | None) -> None:
        self._source = source
        self._switched.set()

    async def recv(self) -> Media:
        while self.readyState == "live":
            source = self._source
            if source is None:
                self._switched.clear()
                await self._switched.wait()
                continue
            try:
                return await source.recv()
            except MediaStreamError:
                if self._source is source:
                    self._source = None  # its sender left: wait for the next
        raise MediaStreamError

    def stop(self) -> None:
        super().stop()
        self._switched.set()


async def pump(source: MediaStreamTrack, on_item: Callable[[Media], None]) -> None:
    """Read `source` until it ends, handing each item on; this is what drains a remote track."""
    while True:
        try:
            item = await source.recv()
        except MediaStreamError:
            return
        on_item(item)
