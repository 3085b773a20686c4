"""A stream's plain-HTTP listeners: one Ogg muxer, its pages shared by every listener.

The packet path (plane/path.py) feeds `HttpAudio.feed` with each Opus packet as it arrives,
in both relay modes, and its place on the channel's timeline; pages are built only while
someone listens: no page is built for nobody.
Each listener has a small page buffer; `feed` never waits for one, and a listener whose buffer
is full is dropped (`too slow`, counted) rather than delaying the others or growing memory.
A listener's lifetime is the `listen()` context of its HTTP response; the stream's end closes
every listener after the last page (end-of-stream flag), so players see the end.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..core.metrics import Metrics
from .ogg import (
    OggOpusMuxer,
    page,
    page_granule,
    page_samples,
    page_sequence,
    renumber,
)

LISTENER_PAGES = 50  # 5 s of 100 ms pages: a player that stops reading longer is dropped


Page = tuple[bytes, float]  # (page, when its last packet arrived: time.monotonic())


@dataclass(eq=False)
class Listener:
    pages: MemoryObjectReceiveStream[Page]
    inbox: MemoryObjectSendStream[Page]
    headers: bytes
    log: Any
    sent_bytes: int = 0
    # The stream's sequence number of this listener's first audio page: its own pages are
    # numbered 2, 3, ... after its own headers (0, 1), whenever it joined.
    first_sequence: int = 2
    # What its pages' granule positions are moved by, so that its own first audio page holds
    # just its own samples (as a file's does); set by that page (`own_page`).
    granule_offset: int | None = None
    # Ends its response at once, stuck writes and all (a listener dropped as too slow is
    # most likely one whose client stopped reading: its connection must not stay open).
    abort: Callable[[], None] = lambda: None
    # Why it left the fan-out: "stream ended", "too slow", "client left", "token expired".
    ended: str = ""


def own_page(listener: Listener, data: bytes) -> bytes:
    """The shared page as part of this listener's own logical stream (see Listener): page
    numbers from 2 and granule positions from 0 whenever it joined. A stream's granules count
    from its sender's first packet; a player told that its first page is 40 s in counts its
    play time from there (VLC's `--run-time 8` stopped such a listener at once)."""
    if listener.granule_offset is None:
        listener.granule_offset = page_samples(data) - page_granule(data)
    if listener.first_sequence == 2 and listener.granule_offset == 0:
        return data  # there from the stream's first page: its numbers are its own
    sequence = page_sequence(data) - listener.first_sequence + 2
    return renumber(data, sequence, listener.granule_offset)


class ChannelPages:
    """One listener's single logical Ogg stream across a channel's senders: each sender's
    pages get the first sender's serial number, page numbers that go on, and granule
    positions on the channel's timeline (plane/timeline.py, the clock every output reads),
    from 0 at the listener's first page (as `own_page`): the pause between two senders counts
    as the time it lasted, as it does for a WebRTC listener (players play through it as a gap
    in the timestamps). The end-of-stream flag comes only when the listener is let go
    (`last`)."""

    def __init__(self) -> None:
        self.serial: int | None = None
        self._sequence = 2
        self._granule = 0  # the newest granule position sent
        self._http: HttpAudio | None = None
        self._start: int | None = None  # the listener's granule 0 on the timeline

    def follow(self, http: HttpAudio) -> None:
        """The next pages are this sender's (its muxer's granules count from its start,
        which sits at `http.origin` on the timeline)."""
        if self.serial is None:
            self.serial = http.muxer.serial
        self._http = http

    def page(self, data: bytes) -> bytes | None:
        """The page in this listener's stream; None for the end page of a sender none of
        whose packets came (its stream ended first: there is nothing on it to place)."""
        assert self._http is not None
        origin = self._http.origin
        if origin is None:
            return None
        if self._start is None:  # its first audio page: its granules start from it
            self._start = origin + page_granule(data) - page_samples(data)
        out = renumber(data, self._sequence, origin - self._start, self.serial)
        self._sequence += 1
        self._granule = page_granule(out)
        return out

    def last(self) -> bytes:
        assert self.serial is not None
        return page([], self._granule, self.serial, self._sequence, last=True)


@dataclass(eq=False)
class HttpAudio:
    metrics: Metrics
    muxer: OggOpusMuxer = field(default_factory=lambda: OggOpusMuxer(random.getrandbits(32)))
    listeners: set[Listener] = field(default_factory=set)
    closed: bool = False
    # Where its granule 0 sits on the channel's timeline: its first packet's pts.
    origin: int | None = None

    def feed(self, packet: bytes, pts: int, arrival: float) -> None:
        """One packet from the sender: granules always count, pages only for listeners."""
        if self.origin is None:
            self.origin = pts
        if not self.listeners:
            self.muxer.skip(packet)
            return
        page = self.muxer.add(packet)
        if page is not None:
            self._publish((page, arrival))

    def _publish(self, page: Page) -> None:
        for listener in list(self.listeners):
            try:
                listener.inbox.send_nowait(page)
            except anyio.WouldBlock:
                self.drop(listener, "too slow")
                self.metrics.http_listeners_dropped += 1
                listener.abort()

    def drop(self, listener: Listener, reason: str) -> None:
        """Out of the fan-out, once, logged now (its response is ended by whoever dropped
        it: `abort` for one too slow, which cuts its connection, stuck writes and all)."""
        if listener in self.listeners:
            listener.ended = reason
            self.listeners.discard(listener)
            listener.inbox.close()
            listener.log.info("http_listener_ended", reason=reason, bytes=listener.sent_bytes)

    def close(self) -> None:
        """The stream ended: the last page to everyone, then end every response."""
        if self.closed:
            return
        self.closed = True
        if self.listeners:
            self._publish((self.muxer.end(), time.monotonic()))
        for listener in list(self.listeners):
            self.drop(listener, "stream ended")

    @asynccontextmanager
    async def listen(
        self, log: Any, abort: Callable[[], None] | None = None
    ) -> AsyncIterator[Listener]:
        """A new listener from the next page on; it ends when its context exits. `abort`
        ends its HTTP response at once when it is dropped as too slow."""
        inbox, pages = anyio.create_memory_object_stream[Page](LISTENER_PAGES)
        listener = Listener(pages=pages, inbox=inbox, headers=self.muxer.headers(), log=log)
        if abort is not None:
            listener.abort = abort
        listener.first_sequence = self.muxer.next_sequence
        self.listeners.add(listener)
        self.metrics.live.http_listeners += 1
        log.info("http_listener_started")
        if self.closed:
            self.drop(listener, "stream ended")
        try:
            yield listener
        finally:
            self.drop(listener, "client left")
            pages.close()
            self.metrics.live.http_listeners -= 1
