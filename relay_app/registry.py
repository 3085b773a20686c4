"""StreamRegistry: the one truth on sessions, streams and who listens to what.

Health, metrics, `/stream/status` and `available_streams` all read it; nothing keeps a second
count, and sessions change roles and receiver lists only through its methods. Its methods never
await, so they need no lock: on one event loop a sync method runs whole.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal, Protocol

import anyio
from aiortc.mediastreams import MediaStreamTrack

from .config import Settings
from .errors import CapacityError, ChannelError, NoStreamError, SessionStateError
from .http_audio import HttpAudio
from .limits import check_receiver_limit, check_stream_limit
from .protocol import NO_STREAM_MESSAGE, AvailableStreams, ChannelInfo, StreamInfo
from .recording import Recording
from .relay import Fanout

SendOrDrop = Callable[[str], None]
"""A session's `send_or_drop`: queues an encoded message without blocking, or drops it."""

SessionRole = Literal["idle", "sender", "receiver"]


class EndCause(Enum):
    """Who ended a stream. Only SENDER_LEFT is the sender's own doing: for every other cause
    the sender's client is told why its stream ended."""

    SENDER_LEFT = "sender left"
    TRACK_ENDED = "track ended"
    CONNECTION_FAILED = "connection failed"
    STALE = "stale"
    TAKEN_OVER = "taken over"  # another sender took the channel (`takeover`)
    STOPPED = "stopped by an operator"  # POST /admin/streams/<id>/stop
    NO_RECEIVERS = "no receivers left on this node"  # an upstream's linger ran out (upstream.py)


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
    started_at: float = field(default_factory=time.time)
    last_audio_at: float = field(default_factory=anyio.current_time)
    ended: anyio.Event = field(default_factory=anyio.Event)
    end_cause: EndCause | None = None
    # What clients and logs are told; for most causes the cause's own words.
    end_reason: str = ""
    # connection_id -> that receiver session's send_or_drop for level messages, or None
    # when it did not ask for them (start_receiving's `visualization`).
    receivers: dict[str, SendOrDrop | None] = field(default_factory=dict)
    # Plain-HTTP listeners (Ogg/Opus on the audio port); None where nobody set it up.
    http: HttpAudio | None = None
    # The channel this stream is (its stream_id is then the channel's name); None: unnamed.
    channel: str | None = None
    # relay.fast_path: connection_id -> that receiver's DirectSender (payload, pts, arrival).
    direct: dict[str, Callable[[bytes, int, float], None]] = field(default_factory=dict)
    # Opus payload bytes received from the sender (the admin API's session list).
    audio_bytes: int = 0
    # Written to disk while it runs (recording.enabled and the channel says so); else None.
    recording: Recording | None = None
    # Cluster mode: the node whose sender this is, when this node only relays it (an
    # upstream, upstream.py); None: this node's own sender.
    origin: str | None = None
    # Receivers that are other nodes' upstreams (not counted as listeners cluster-wide).
    links: set[str] = field(default_factory=set)

    @property
    def receiver_source(self) -> Fanout:
        return self.packets if self.packets is not None else self.frames

    def close_relays(self) -> None:
        if self.http is not None:
            self.http.close()
        if self.recording is not None:
            self.recording.close()
        self.frames.close()
        if self.packets is not None:
            self.packets.close()

    def end(self, cause: EndCause, reason: str | None = None) -> None:
        """Mark the stream over (its sender's `serve_stream` then returns); idempotent, sync.

        The first cause wins: a stream that went stale and whose sender then left ended stale.
        """
        if self.ended.is_set():
            return
        self.end_cause = cause
        self.end_reason = reason or cause.value
        self.ended.set()

    @property
    def listeners(self) -> int:
        """Its receivers here, without other nodes' upstreams (those count on their node)."""
        return len(self.receivers) - len(self.links)

    def info(self, node: str | None = None) -> StreamInfo:
        return StreamInfo(
            stream_id=self.stream_id,
            started_at=self.started_at,
            receivers=len(self.receivers),
            http_listeners=len(self.http.listeners) if self.http is not None else 0,
            channel=self.channel,
            node=self.origin or node,
        )


UNNAMED_PREFIX = "stream_"  # a stream without a channel: stream_<connection_id>


@dataclass(eq=False)
class SessionInfo:
    """A connection as the registry and the admin API see it."""

    connection_id: str
    remote: str
    role: SessionRole = "idle"
    # A sender's stream id, held from start_sending until its stream is removed (while it
    # negotiates, too): a channel name is one sender's at a time. A receiver's stream (or the
    # channel it waits on) while its media task runs.
    stream_id: str | None = None
    user_agent: str = ""
    since: float = field(default_factory=time.time)
    # WebSocket bytes, counted by the session (the admin list shows them).
    bytes_in: int = 0
    bytes_out: int = 0
    # Closes the session with 1008 and this reason (the admin API's kick); set by the session.
    kick: Callable[[str], None] | None = None
    # Another cluster node's upstream (start_receiving with `upstream`), not a listener.
    node_link: bool = False


class ClusterView(Protocol):
    """What the registry asks of cluster mode (cluster.py); None on a single node."""

    def stream_infos(self, local: list[Stream]) -> list[StreamInfo]:
        """This node's live streams merged with the other nodes' (receivers cluster-wide)."""
        ...

    def holder(self, stream_id: str) -> str | None:
        """The other node whose sender has this stream id, if any."""
        ...

    def streams_changed(self) -> None:
        """A stream was added or removed here: tell the cluster now, not at the next beat."""
        ...


class StreamRegistry:
    def __init__(self, settings: Settings) -> None:
        self._server = settings.server
        self._streams_settings = settings.streams
        self._channels = settings.channels
        # Connections still authenticating: admitted, not yet sessions.
        self.pending: dict[str, SessionInfo] = {}
        self.sessions: dict[str, SessionInfo] = {}
        self.streams: dict[str, Stream] = {}
        # Channels an operator locked: no new senders (POST /admin/channels/<name>/lock).
        self.locked: set[str] = set()
        # Set (and replaced) when a channel's next stream is added: its waiting receivers.
        self._next_stream: dict[str, anyio.Event] = {}
        self.cluster: ClusterView | None = None

    # Connections and sessions ---------------------------------------------------------------
    def admit(self, info: SessionInfo, authenticating: bool) -> None:
        """Count a new connection, before it authenticates; CapacityError over a cap.

        Per address, pending and open connections count together, so one machine cannot
        hold every slot, authenticated or not; `server.trusted_addresses` are exempt.
        """
        server = self._server
        if info.remote not in server.trusted_addresses:
            held = sum(
                1
                for s in (*self.pending.values(), *self.sessions.values())
                if s.remote == info.remote
            )
            if held >= server.max_connections_per_address:
                raise CapacityError(
                    f"too many connections from {info.remote}: {held} "
                    "(server.max_connections_per_address); try again later"
                )
        if authenticating and len(self.pending) >= server.max_pending_connections:
            raise CapacityError(
                f"too many connections still authenticating: {len(self.pending)} "
                "(server.max_pending_connections); try again later"
            )
        self.pending[info.connection_id] = info

    def open_session(self, info: SessionInfo) -> None:
        """An admitted connection becomes a session (authenticated, or auth is off)."""
        self.pending.pop(info.connection_id, None)
        if len(self.sessions) >= self._server.max_connections:
            raise CapacityError(
                f"server is full: {self._server.max_connections} connections "
                "(server.max_connections); try again later"
            )
        self.sessions[info.connection_id] = info

    def close_session(self, connection_id: str) -> None:
        """Forget the connection, pending or open; idempotent."""
        self.pending.pop(connection_id, None)
        self.sessions.pop(connection_id, None)

    def claim_sender(
        self, info: SessionInfo, max_streams: int, channel: str | None, takeover: bool = False
    ) -> str:
        """Count `info` as a sender from now on (while it negotiates, too), within the limit,
        holding its stream id: the channel's name, or `stream_<connection_id>`.

        With `takeover` (already authorized), a channel's live sender is ended ("taken over")
        and lets go of the name at once; its session unwinds on its own.
        """
        senders = [s for s in self.sessions.values() if s.role == "sender"]
        check_stream_limit(len(senders), max_streams)
        if channel is None:
            stream_id = f"{UNNAMED_PREFIX}{info.connection_id}"
        else:
            self._check_channel_open(channel)
            holder = next((s for s in senders if s.stream_id == channel), None)
            if holder is not None:
                self._release(holder, channel, takeover)
            stream_id = channel
        info.role, info.stream_id = "sender", stream_id
        return stream_id

    def _check_channel_open(self, channel: str) -> None:
        if channel.startswith(UNNAMED_PREFIX):
            raise ChannelError(
                f"channel names starting with {UNNAMED_PREFIX} are reserved", http_status=400
            )
        if channel not in self._channels and not self._streams_settings.allow_unlisted_channels:
            known = ", ".join(sorted(self._channels)) or "none"
            raise ChannelError(
                f"channel {channel!r} is not configured (channels: {known}; "
                "streams.allow_unlisted_channels is false)",
                http_status=404,
            )
        if channel in self.locked:
            raise ChannelError(f"channel {channel!r} is locked by an operator: no new senders")
        holder = self.cluster.holder(channel) if self.cluster is not None else None
        if holder is not None:
            raise ChannelError(
                f"channel {channel!r} is busy: a sender is live on it on node {holder}"
            )

    def _release(self, holder: SessionInfo, channel: str, takeover: bool) -> None:
        """Free `channel` from the sender holding it, or say why it stays busy."""
        stream = self.streams.get(channel)
        if stream is None or stream.sender_id != holder.connection_id:
            raise ChannelError(
                f"channel {channel!r} is busy: another sender is connecting on it; try again"
            )
        if not stream.ended.is_set():  # (an ended one is on its way out: not busy)
            if not takeover:
                raise ChannelError(
                    f"channel {channel!r} is busy: another sender is live on it "
                    '(start_sending with "takeover": true replaces it)'
                )
            stream.end(EndCause.TAKEN_OVER)
        holder.stream_id = None

    def set_idle(self, info: SessionInfo) -> None:
        info.role, info.stream_id = "idle", None

    # Streams --------------------------------------------------------------------------------
    def add_stream(self, stream: Stream) -> None:
        self.streams[stream.stream_id] = stream
        if (waiting := self._next_stream.pop(stream.stream_id, None)) is not None:
            waiting.set()
        if self.cluster is not None:
            self.cluster.streams_changed()

    def remove_stream(self, stream: Stream, sender: SessionInfo) -> None:
        """Unregister the stream (if a newer one has not replaced it) and free its name."""
        if self.streams.get(stream.stream_id) is stream:
            del self.streams[stream.stream_id]
        if sender.stream_id == stream.stream_id:
            sender.stream_id = None
        if self.cluster is not None:
            self.cluster.streams_changed()

    async def next_stream(self, channel: str) -> Stream:
        """The channel's live stream, as soon as there is one (a receiver waiting on it)."""
        while True:
            stream = self.streams.get(channel)
            if stream is not None and not stream.ended.is_set():
                return stream
            await self._next_stream.setdefault(channel, anyio.Event()).wait()

    def find_stream(self, stream_id: str | None) -> Stream:
        """The named stream, or the newest live one; NoStreamError when there is none."""
        if stream_id is not None:
            stream = self.streams.get(stream_id)
        else:
            live = self.live_streams()
            stream = max(live, key=lambda s: s.started_at) if live else None
        if stream is None:
            detail = "" if stream_id is None else f" (no stream {stream_id!r})"
            raise NoStreamError(NO_STREAM_MESSAGE + detail)
        return stream

    def find_live_stream(self, stream_id: str | None, log: Any) -> Stream:
        """`find_stream` for a receiver: an ended stream is an error too; both are logged."""
        try:
            stream = self.find_stream(stream_id)
        except NoStreamError:
            log.warning("no_stream_for_receiver", requested=stream_id)
            raise
        if stream.ended.is_set():
            log.warning("stream_track_ended", stream_id=stream.stream_id)
            raise SessionStateError(
                NO_STREAM_MESSAGE + f" ({stream.stream_id} has ended)", http_status=404
            )
        return stream

    def live_streams(self) -> list[Stream]:
        return [s for s in self.streams.values() if not s.ended.is_set()]

    def stream_infos(self) -> list[StreamInfo]:
        """The live streams as clients see them (`available_streams`, `/stream/status`);
        in cluster mode every node's."""
        if self.cluster is not None:
            return self.cluster.stream_infos(self.live_streams())
        return [s.info() for s in self.live_streams()]

    def available(self, allowed: Callable[[str], bool] | None = None) -> AvailableStreams:
        """`available_streams`: live streams and channels, those `allowed` (a token) only."""
        streams, channels = self.stream_infos(), self.channel_infos()
        if allowed is not None:
            streams = [s for s in streams if allowed(s.stream_id)]
            channels = [c for c in channels if allowed(c.channel)]
        return AvailableStreams(streams=streams, channels=channels)

    def channel_infos(self) -> list[ChannelInfo]:
        """Configured channels, live or not, then live unlisted ones, by name."""
        live = {s.stream_id: s for s in self.stream_infos()}
        infos = [
            ChannelInfo(channel=name, label=c.label, description=c.description, live=name in live)
            for name, c in self._channels.items()
        ]
        infos += [
            ChannelInfo(channel=name, label=name, live=True)
            for name in sorted(live.keys() - self._channels.keys())
            if live[name].channel is not None
        ]
        return sorted(infos, key=lambda info: info.channel)

    # Receivers ------------------------------------------------------------------------------
    def add_receiver(
        self,
        stream: Stream,
        info: SessionInfo,
        send_or_drop: SendOrDrop | None,
        max_receivers: int,
    ) -> None:
        check_receiver_limit(stream.stream_id, len(stream.receivers), max_receivers)
        stream.receivers[info.connection_id] = send_or_drop
        if info.node_link:
            stream.links.add(info.connection_id)
        info.role, info.stream_id = "receiver", stream.stream_id

    def remove_receiver(self, stream: Stream, info: SessionInfo) -> None:
        stream.receivers.pop(info.connection_id, None)
        stream.links.discard(info.connection_id)

    @property
    def receiver_count(self) -> int:
        return sum(len(s.receivers) for s in self.streams.values())
