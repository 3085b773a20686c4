"""StreamRegistry: the one truth on sessions, streams and who listens to what.

Health, metrics, `/stream/status` and `available_streams` all read it; nothing keeps a second
count, and sessions change roles and receiver lists only through its methods. Its methods never
await, so they need no lock: on one event loop a sync method runs whole.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio

from ..core.config import Settings
from ..core.errors import (
    CapacityError,
    ChannelBusy,
    ChannelError,
    LimitError,
    NoStreamError,
    SessionStateError,
)
from ..core.limits import check_receiver_limit, check_stream_limit
from ..core.protocol import NO_STREAM_MESSAGE, AvailableStreams, ChannelInfo, StreamInfo
from ..plane.outputs import Output
from ..plane.timeline import ChannelClock
from .cluster_view import ClusterView, LocalCluster
from .stream import UNNAMED_PREFIX, SessionInfo, Stream

MAX_CLOCKS = 1000  # channels whose timeline is remembered between senders


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
        # Each channel's timeline across its senders (stream.ChannelClock), newest last.
        self._clocks: dict[str, ChannelClock] = {}
        # This node's part of the cluster: a LocalCluster (one node) until cluster/attach.py
        # puts the Redis directory in its place.
        self.cluster: ClusterView = LocalCluster()
        self._speakers = 0  # unnamed streams labelled so far ("Speaker N")
        # Plain-HTTP (Ogg) listeners' connection ids by the stream id they came for, which
        # is the channel's name on a channel: a listener holds its place from its first page
        # to its end, across the channel's senders, so streams.max_http_listeners counts
        # the channel, not one sender's stream (a takeover's new stream is counted with it).
        self.http_listeners: dict[str, set[str]] = {}

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

        With `takeover` (already authorized), a channel's live sender lets go of the name at
        once and is ended ("taken over") when the new sender's first packet arrives, so its
        listeners hear no gap longer than a packet or two (`add_stream`, plane/path.py).
        """
        senders = [s for s in self.sessions.values() if s.role == "sender"]
        check_stream_limit(len(senders), max_streams)
        if channel is None:
            stream_id = f"{UNNAMED_PREFIX}{info.connection_id}"
        else:
            self._check_channel_open(channel)
            holder = next((s for s in senders if s.stream_id == channel), None)
            live = self.streams.get(channel)
            if holder is not None:
                self._release(holder, channel, takeover)
            elif live in self.live_streams() and not takeover:
                # (taken over by a sender that then failed: it plays on until replaced; a
                # channel relayed from a node where nobody speaks now is not live: free)
                raise _busy(live)
            stream_id = channel
        info.role, info.stream_id = "sender", stream_id
        return stream_id

    def check_channel_open(self, channel: str) -> None:
        """ChannelError unless a sender could claim `channel` now (busy aside)."""
        self._check_channel_open(channel)

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
        holder = self.cluster.holder(channel)
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
        if not stream.ended.is_set() and not takeover:  # (an ended one is on its way out)
            raise _busy(stream)
        holder.stream_id = None

    def set_idle(self, info: SessionInfo) -> None:
        channel, info.role, info.stream_id = info.stream_id, "idle", None
        # A takeover that never reached its first packet (its offer failed, it left while
        # connecting): the speaker it was taking over plays on, and holds the name again.
        live = self.streams.get(channel) if channel is not None else None
        if live is not None and not live.ended.is_set() and live.sender_id != info.connection_id:
            holder = self.sessions.get(live.sender_id)
            if holder is not None and holder.role == "sender" and holder.stream_id is None:
                holder.stream_id = channel

    # Streams --------------------------------------------------------------------------------
    def add_stream(self, stream: Stream) -> None:
        stream.label = stream.label or self._label(stream)
        if stream.channel is not None:
            previous = self.streams.get(stream.stream_id)
            if previous is not None and not previous.ended.is_set():
                stream.replaces = previous  # a takeover: it ends at this one's first packet
        self.streams[stream.stream_id] = stream
        if (waiting := self._next_stream.pop(stream.stream_id, None)) is not None:
            waiting.set()
        self.cluster.streams_changed()

    def _label(self, stream: Stream) -> str:
        """A name for people: the channel's label, or the next "Speaker N" for an unnamed
        stream (never its id: listeners should not read `stream_437e6146-6123`)."""
        if stream.channel is not None:
            configured = self._channels.get(stream.channel)
            return configured.label if configured is not None else stream.channel
        self._speakers += 1
        return f"Speaker {self._speakers}"

    def clock(self, channel: str | None) -> ChannelClock:
        """The channel's timeline, which its next stream continues (a new one for no channel)."""
        if channel is None:
            return ChannelClock()
        clock = self._clocks.pop(channel, None) or ChannelClock()
        self._clocks[channel] = clock  # (newest last: the oldest go first past the bound)
        while len(self._clocks) > MAX_CLOCKS:
            del self._clocks[next(iter(self._clocks))]
        return clock

    def remove_stream(self, stream: Stream, sender: SessionInfo) -> None:
        """Unregister the stream (if a newer one has not replaced it) and free its name."""
        if self.streams.get(stream.stream_id) is stream:
            del self.streams[stream.stream_id]
        if sender.stream_id == stream.stream_id:
            sender.stream_id = None
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
        """Streams that carry a speaker now: not ended, and (a channel relayed from another
        node) not between two speakers there, where its link waits for the next."""
        return [s for s in self.streams.values() if not s.ended.is_set() and not s.between_speakers]

    def stream_infos(self) -> list[StreamInfo]:
        """The live streams as clients see them (`available_streams`, `/stream/status`);
        in cluster mode every node's."""
        return self.cluster.stream_infos(self.live_streams())

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

        def listeners(name: str) -> int:
            info = live.get(name)
            return info.receivers + info.http_listeners if info is not None else 0

        infos = [
            ChannelInfo(
                channel=name,
                label=c.label,
                description=c.description,
                live=name in live,
                listeners=listeners(name),
            )
            for name, c in self._channels.items()
        ]
        infos += [
            ChannelInfo(channel=name, label=name, live=True, listeners=listeners(name))
            for name in sorted(live.keys() - self._channels.keys())
            if live[name].channel is not None
        ]
        return sorted(infos, key=lambda info: info.channel)

    # Receivers ------------------------------------------------------------------------------
    def add_receiver(
        self, stream: Stream, info: SessionInfo, output: Output, max_receivers: int
    ) -> None:
        """`info`'s output is fed by `stream` from now on, within streams.max_receivers."""
        check_receiver_limit(stream.stream_id, stream.receivers, max_receivers)
        output.link = info.node_link
        stream.outputs.add(output)
        info.role, info.stream_id = "receiver", stream.stream_id

    def remove_receiver(self, stream: Stream, output: Output) -> None:
        """Fed no more (and closed); idempotent."""
        stream.outputs.remove(output)

    # Plain-HTTP listeners --------------------------------------------------------------------
    def check_http_listener(self, stream_id: str) -> None:
        """LimitError when `stream_id` (a channel, across its senders) has its
        streams.max_http_listeners."""
        limit = self._streams_settings.max_http_listeners
        if len(self.http_listeners.get(stream_id, ())) >= limit:
            raise LimitError(
                f"{stream_id} already has {limit} HTTP listeners (streams.max_http_listeners)"
            )

    def add_http_listener(self, stream_id: str, connection_id: str) -> None:
        """Hold a place among `stream_id`'s HTTP listeners, within the limit (LimitError)."""
        self.check_http_listener(stream_id)
        self.http_listeners.setdefault(stream_id, set()).add(connection_id)

    def remove_http_listener(self, stream_id: str, connection_id: str) -> None:
        """Give the place back; idempotent."""
        held = self.http_listeners.get(stream_id)
        if held is not None:
            held.discard(connection_id)
            if not held:
                del self.http_listeners[stream_id]

    @property
    def receiver_count(self) -> int:
        return sum(s.receivers for s in self.streams.values())


def _busy(live: Stream) -> ChannelBusy:
    """Who holds the channel, in people's words first (names and labels, never ids)."""
    speaker = live.speaker or "Someone"
    return ChannelBusy(
        f"{speaker} is already speaking on {live.label or live.stream_id}: "
        f"channel {live.stream_id!r} is busy"
    )
