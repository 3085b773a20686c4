"""One source track to N subscribers, each with a small bounded buffer.

Why not aiortc's `MediaRelay`: it starts its reader with `asyncio.ensure_future` (a task nobody
owns, left pending at exit, aiortc PR #595) and its buffered proxies queue without limit (PR #498).
Here the reader is `StreamRelay.run`, a plain coroutine the sender's session task group runs, so the
reader's lifetime is the sender's scope; and each subscriber keeps only the newest `capacity`
frames, so a slow receiver loses its own oldest audio instead of growing memory or delaying others.
The source is always drained, even with no subscribers (aiortc issue #554).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av.frame import Frame
from av.packet import Packet

from .metrics import LiveCounts

Media = Frame | Packet
"""What a track yields: decoded frames (transcoding relay) or encoded packets."""


class RelayTrack(MediaStreamTrack):
    """A subscriber's view of the source: what a receiver's RTCRtpSender reads."""

    kind = "audio"

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self._frames: deque[Media] = deque(maxlen=capacity)
        # asyncio.Event, not anyio: aiortc calls recv() from its own asyncio tasks and we need
        # clear(); the event is only touched from the loop thread.
        self._ready = asyncio.Event()
        self._closed = False
        self.dropped = 0

    def _put(self, frame: Media) -> None:
        if len(self._frames) == self._frames.maxlen:
            self.dropped += 1
        self._frames.append(frame)
        self._ready.set()

    def _close(self) -> None:
        self._closed = True
        self._ready.set()

    async def recv(self) -> Media:
        while not self._frames:
            if self._closed or self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        return self._frames.popleft()


class StreamRelay:
    def __init__(self, source: MediaStreamTrack, capacity: int, live: LiveCounts) -> None:
        self._source = source
        self._capacity = capacity
        self._live = live
        self._subscribers: set[RelayTrack] = set()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def subscribe(self) -> RelayTrack:
        """A new track fed with this source's frames from now on. Never blocks."""
        if self._closed:
            raise MediaStreamError("relay is closed")
        track = RelayTrack(self._capacity)
        self._subscribers.add(track)
        self._live.relay_subscriptions += 1
        return track

    def unsubscribe(self, track: RelayTrack) -> None:
        """Idempotent: teardown paths may call it after close()."""
        if track in self._subscribers:
            self._subscribers.discard(track)
            self._live.relay_subscriptions -= 1
        track._close()
        track.stop()

    def close(self) -> None:
        """End every subscriber track; their recv() raises MediaStreamError."""
        self._closed = True
        for track in list(self._subscribers):
            self.unsubscribe(track)

    async def run(self, on_frame: Callable[[Media], None]) -> None:
        """Read the source until it ends, handing each frame to every subscriber."""
        while True:
            try:
                frame = await self._source.recv()
            except MediaStreamError:
                return
            on_frame(frame)
            for track in self._subscribers:
                track._put(frame)
