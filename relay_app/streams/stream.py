"""A stream and a session as the registry records them: plain records, no behaviour that awaits.

A `Stream` is a sender's live audio (owned by the sender's task group: it ends when that scope
ends); a `SessionInfo` is one connection through any door, as the registry, the guard and the
admin API see it.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

import anyio
from aiortc.mediastreams import MediaStreamTrack

from ..core.auth import Grant
from ..core.config import RelaySettings
from ..core.metrics import Metrics
from ..core.protocol import Disconnected, SpeakerLost, StreamInfo
from ..plane.factory import Strategy
from ..plane.outputs import Outputs, Tell
from ..plane.timeline import ChannelClock
from ..webrtc.red import Repair

SessionRole = Literal["idle", "sender", "receiver", "waiting", "listener", "admin"]
"""idle/sender/receiver: a WebSocket or WHIP/WHEP session; waiting: a speaker waiting for
their turn on a channel (`wait_to_speak`); listener: a plain-HTTP (Ogg) listener; admin: an
admin API call while it runs."""


class EndCause(Enum):
    """Who ended a stream. Only SENDER_LEFT is the sender's own doing: for every other cause
    the sender's client is told why its stream ended."""

    SENDER_LEFT = "sender left"
    TRACK_ENDED = "track ended"
    CONNECTION_FAILED = "connection failed"
    STALE = "stale"
    # No packet for streams.speaker_lost_after (a frozen laptop, a vanished WHIP publisher).
    SPEAKER_LOST = "speaker connection lost"
    TAKEN_OVER = "taken over"  # another sender took the channel (`takeover`)
    STOPPED = "stopped by an operator"  # POST /admin/streams/<id>/stop
    NO_RECEIVERS = "no receivers left on this node"  # an upstream's linger ran out (upstream.py)


@dataclass(eq=False)
class Stream:
    """A sender's live audio. Owned by the sender's session: it ends when that scope ends.

    Who hears it is one collection, `outputs` (plane/outputs.py): every WebRTC listener, the
    Ogg pages, the recording and the level meter; how they are fed was chosen once, by
    `strategy` (plane/factory.py). This record keeps the stream's identity and lifecycle.
    """

    stream_id: str
    sender_id: str
    source: MediaStreamTrack
    outputs: Outputs
    strategy: Strategy
    started_at: float = field(default_factory=time.time)
    last_audio_at: float = field(default_factory=anyio.current_time)
    ended: anyio.Event = field(default_factory=anyio.Event)
    end_cause: EndCause | None = None
    # What clients and logs are told; for most causes the cause's own words.
    end_reason: str = ""
    # Who ended it, by name (a takeover's new speaker), if someone did.
    end_by: str | None = None
    # The channel this stream is (its stream_id is then the channel's name); None: unnamed.
    channel: str | None = None
    # The speaker's leg: RED unwrapped, loss repaired and counted (set when it is tapped).
    repair: Repair | None = None
    # The timeline its packets' pts continue (a channel's, shared by its senders in turn).
    clock: ChannelClock = field(default_factory=ChannelClock)
    # Where its first packet sat on that timeline (decoded frames are moved there too).
    pts_base: int = 0
    # A takeover: the channel's previous stream, ended when this one's first packet arrives
    # (make before break: listeners hear the old sender until the new one is audible).
    replaces: Stream | None = None
    # Opus payload bytes received from the sender (the admin API's session list).
    audio_bytes: int = 0
    # Cluster mode: the node whose sender this is, when this node only relays it (an
    # upstream, upstream.py); None: this node's own sender.
    origin: str | None = None
    # What people call it (set by the registry): its channel's label, or "Speaker N".
    label: str = ""
    # The sender's newest level (RMS dBFS) while levels are computed (visualization.enabled).
    level: float | None = None
    # Who speaks (what people call the sender: its session's name).
    speaker: str = ""
    # While its speaker is lost (no packet for a second: media/sender.py's watch), the
    # last packet's arrival (anyio.current_time()); None while packets come.
    lost_since: float | None = None
    # Cluster mode, a relayed channel: its origin's channel is between two speakers (the
    # link waits there for the next: cluster/upstream.py), so no audio is not staleness.
    between_speakers: bool = False

    def close_relays(self) -> None:
        """Its sender is leaving: every output is closed (the Ogg pages end, queues end)."""
        self.outputs.close()

    def end(self, cause: EndCause, reason: str | None = None, by: str | None = None) -> None:
        """Mark the stream over (its sender's `serve_stream` then returns); idempotent, sync.

        The first cause wins: a stream that went stale and whose sender then left ended stale.
        """
        if self.ended.is_set():
            return
        self.end_cause = cause
        self.end_reason = reason or cause.value
        self.end_by = by
        self.ended.set()

    def take_over(self) -> None:
        """This stream is audible: the one it took the channel from ends now (a takeover)."""
        if self.replaces is not None:
            self.replaces.end(EndCause.TAKEN_OVER, by=self.speaker or None)
            self.replaces = None

    def lost_notice(self) -> SpeakerLost:
        """`speaker_lost`, for its listeners (while `lost_since` is set)."""
        assert self.lost_since is not None
        return SpeakerLost(
            stream_id=self.stream_id,
            label=self.label,
            since=self.silent_since or time.time(),
            message=SPEAKER_LOST_WORDS,
        )

    @property
    def silent_since(self) -> float | None:
        """While its speaker is lost: their last packet, as Unix time (for people)."""
        if self.lost_since is None:
            return None
        return time.time() - (anyio.current_time() - self.lost_since)

    def told_to_sender(self) -> str:
        """What the speaker is told when something other than their own Stop ended it."""
        label, cause = self.label or "the channel", self.end_cause
        if cause is EndCause.TAKEN_OVER:
            return f"{self.end_by or 'Another speaker'} took over {label}."
        if cause is EndCause.STOPPED:
            return "The operator stopped your microphone."
        if cause is EndCause.SPEAKER_LOST:
            return (
                f"Your sound stopped reaching the server, so {label} was freed for the next "
                "speaker. Check the Wi-Fi, then press Start again."
            )
        if cause is EndCause.STALE:
            return "No sound from your microphone reached the server, so it was stopped."
        return "Your sound could not reach the server any more."

    def told_to_listeners(self) -> str:
        """What its listeners are told when it ends (they stay on a channel)."""
        label, cause = self.label or "the channel", self.end_cause
        if cause is EndCause.TAKEN_OVER:
            return f"{self.end_by or 'Another speaker'} took over {label}."
        if cause is EndCause.SPEAKER_LOST:
            return SPEAKER_LOST_WORDS
        if cause is EndCause.STOPPED:
            return f"The operator stopped the speaker on {label}. Waiting for the next speaker…"
        return f"The speaker on {label} has stopped. Waiting for the next speaker…"

    @property
    def packets_lost(self) -> int:
        """The speaker's packets that never arrived (some then rebuilt: packets_repaired)."""
        return self.repair.lost if self.repair is not None else 0

    @property
    def packets_repaired(self) -> int:
        return self.repair.repaired if self.repair is not None else 0

    def listener_loss(self, connection_id: str | None = None) -> float:
        """The share of packets a listener last reported lost (RTCP), 0-1: `connection_id`'s,
        or the worst of the fast path's listeners."""
        return self.outputs.listener_loss(connection_id)

    @property
    def listeners(self) -> int:
        """Its receivers here, without other nodes' upstreams (those count on their node)."""
        return self.outputs.listeners

    @property
    def receivers(self) -> int:
        """Its WebRTC receivers here, other nodes' upstreams included."""
        return len(self.outputs.receivers)

    def info(self, node: str | None = None) -> StreamInfo:
        return StreamInfo(
            stream_id=self.stream_id,
            started_at=self.started_at,
            receivers=self.receivers,
            http_listeners=self.outputs.http_listeners,
            channel=self.channel,
            node=self.origin or node,
            label=self.label,
        )


def new_stream(relay: RelaySettings, metrics: Metrics, **identity: Any) -> Stream:
    """A stream (a sender's, or an upstream's) with its strategy and its own outputs."""
    strategy = Strategy.of(relay)
    return Stream(outputs=strategy.outputs(metrics), strategy=strategy, **identity)


UNNAMED_PREFIX = "stream_"  # a stream without a channel: stream_<connection_id>
SPEAKER_LOST_WORDS = "The speaker's connection dropped. Waiting for them or the next speaker…"


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
    # Ends the connection from the operator's side (the admin API's Disconnect and Remove):
    # tells its client this `disconnected` message where it can, then closes; set by what
    # holds the connection (a session, a WHIP/WHEP resource, an Ogg response).
    kick: Callable[[Disconnected], None] | None = None
    # Another cluster node's upstream (start_receiving with `upstream`), not a listener.
    node_link: bool = False
    # The door it came in by (endpoints/guard.py): ws, whip, whep, ogg, admin.
    via: str = "ws"
    # Queues a message for its client (the booth's `your_turn`, `booth`); set by the session.
    tell: Tell | None = None
    # When it began waiting to speak (role "waiting": media/booth.py), Unix time.
    waiting_since: float = 0.0
    # Who it is (the console's rows; every message that names a person): the grant of the
    # token it holds (None while auth is off), the name its client gave (start_sending /
    # start_receiving), its number on this server (Names: "Listener 7").
    grant: Grant | None = None
    given_name: str | None = None
    number: int = 0
    # A short device, from its User-Agent ("Chrome on Android", "Python client").
    device: str = ""

    @property
    def name(self) -> str:
        """Its token's name, else its client's, else "Listener 7" / "Speaker 7"."""
        if self.grant is not None and self.grant.name:
            return self.grant.name
        if self.given_name:
            return self.given_name
        kind = "Speaker" if self.role in ("sender", "waiting") else "Listener"
        return f"{kind} {self.number}" if self.number else kind


def new_connection_id() -> str:
    """The id a connection is known by in logs, the admin API and the registry."""
    return secrets.token_hex(4) + "-" + secrets.token_hex(2)


def name_of(info: SessionInfo | None, default: str = "Another speaker") -> str:
    """What people call a session (`SessionInfo.name`: its token's name, the one its client
    gave, or "Speaker 7"); `default` for none."""
    return info.name if info is not None and info.name else default
