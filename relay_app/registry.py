"""StreamRegistry: the one truth on sessions, streams and who listens to what.

Health, metrics, `/stream/status` and `available_streams` all read it; nothing keeps a second
count. Its methods never await, so they need no lock: on one event loop a sync method runs whole.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
from aiortc.mediastreams import MediaStreamTrack

from .errors import CapacityError, NoStreamError
from .protocol import NO_STREAM_MESSAGE
from .relay import Fanout

Notify = Callable[[str], None]
"""Hands an encoded message to a session's outbox without blocking (may drop it)."""


@dataclass(eq=False)
class Stream:
    """A sender's live audio. Owned by the sender's session: it ends when that scope ends."""

    stream_id: str
    sender_id: str
    source: MediaStreamTrack
    # Decoded audio: visualization, and receivers in transcode mode.
    frames: Fanout
    # The sender's Opus packets as they arrive: receivers in forward mode; None in transcode.
    packets: Fanout | None
    cancel_sender: Callable[[], None]
    started_at: float = field(default_factory=time.time)
    last_audio_at: float = field(default_factory=anyio.current_time)
    ended: anyio.Event = field(default_factory=anyio.Event)
    end_reason: str = ""
    # connection_id -> that receiver session's notify function (visualization messages).
    receivers: dict[str, Notify] = field(default_factory=dict)

    @property
    def receiver_source(self) -> Fanout:
        return self.packets if self.packets is not None else self.frames

    def close_relays(self) -> None:
        self.frames.close()
        if self.packets is not None:
            self.packets.close()

    def end(self, reason: str) -> None:
        """Mark the stream over and cancel its sender's media scope; idempotent, never blocks."""
        if self.ended.is_set():
            return
        self.end_reason = reason
        self.ended.set()
        self.cancel_sender()


@dataclass
class SessionInfo:
    connection_id: str
    remote: str
    connected_at: float = field(default_factory=time.time)
    role: str = "idle"


class StreamRegistry:
    def __init__(self, max_connections: int) -> None:
        self._max_connections = max_connections
        self.sessions: dict[str, SessionInfo] = {}
        self.streams: dict[str, Stream] = {}

    # Sessions -------------------------------------------------------------------------------
    def open_session(self, info: SessionInfo) -> None:
        if len(self.sessions) >= self._max_connections:
            raise CapacityError(
                f"server is full: {self._max_connections} connections "
                "(server.max_connections); try again later"
            )
        self.sessions[info.connection_id] = info

    def close_session(self, connection_id: str) -> None:
        self.sessions.pop(connection_id, None)

    # Streams --------------------------------------------------------------------------------
    def add_stream(self, stream: Stream) -> None:
        self.streams[stream.stream_id] = stream

    def remove_stream(self, stream: Stream) -> None:
        if self.streams.get(stream.stream_id) is stream:
            del self.streams[stream.stream_id]

    def find_stream(self, stream_id: str | None) -> Stream:
        """The named stream, or the newest live one; NoStreamError when there is none."""
        if stream_id is not None:
            stream = self.streams.get(stream_id)
        else:
            live = [s for s in self.streams.values() if not s.ended.is_set()]
            stream = max(live, key=lambda s: s.started_at) if live else None
        if stream is None:
            detail = "" if stream_id is None else f" (no stream {stream_id!r})"
            raise NoStreamError(NO_STREAM_MESSAGE + detail)
        return stream

    def live_streams(self) -> list[Stream]:
        return [s for s in self.streams.values() if not s.ended.is_set()]

    @property
    def receiver_count(self) -> int:
        return sum(len(s.receivers) for s in self.streams.values())
