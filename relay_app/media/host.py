"""What a media task (sender.py, receiver.py) and its session know of each other.

A media task is handed a `SessionHost`, the way Hypercorn's `WSStream` is handed `send`: it
can queue messages for its client and read the shared context, and nothing else of the
session. The session keeps one `MediaTask` per running task: explicit state instead of
fields that only mean something while a task runs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..core import protocol as p
from ..core.auth import Grant
from ..core.config import Settings
from ..core.errors import (
    ChannelBusy,
    ChannelError,
    MediaUnavailable,
    NegotiationError,
    SessionStateError,
)
from ..core.limits import check_sdp_size, filter_candidates
from ..streams.context import RelayContext
from ..streams.stream import SessionInfo
from ..webrtc.ice import NoFreeMediaPort
from ..webrtc.peer import Peer


class SessionHost(Protocol):
    """The session as its media task sees it."""

    @property
    def connection_id(self) -> str: ...
    @property
    def ctx(self) -> RelayContext: ...
    @property
    def info(self) -> SessionInfo: ...
    @property
    def video_ignored(self) -> bool:
        """A sender's offer may carry video, answered `inactive` (WHIP: OBS offers video)."""

    def send(self, message: p.ServerMessage) -> None:
        """Queue a message for the client; never blocks (a client that does not read is
        closed instead)."""

    def send_or_drop(self, text: str) -> None:
        """Queue an encoded droppable message (visualization); dropped when the outbox is full."""


MediaRole = Literal["sender", "receiver", "waiting"]  # waiting: booth.py's run_waiting
MEDIA_SILENCE_FLOOR = 5.0  # seconds; receivers send RTCP reports every 0.5-1.5 s
MediaRun = Callable[..., Awaitable[None]]
"""run_sender or run_receiver: (host, media, arg, *, task_status); a WebSocket session or a
WHIP/WHEP resource runs one in its own task group."""


def _answer_channel() -> tuple[
    MemoryObjectSendStream[p.Answer], MemoryObjectReceiveStream[p.Answer]
]:
    # Unbuffered: an answer is accepted only while a receiver task is waiting for one.
    return anyio.create_memory_object_stream[p.Answer](0)


@dataclass(eq=False)
class MediaTask:
    """The one running media task of a session: its role, scope, peer and answer inbox."""

    role: MediaRole
    log: Any
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    done: anyio.Event = field(default_factory=anyio.Event)
    # Set once the task has negotiated (task_status.started()): from then on its errors are
    # reported to the client by the session instead of raised to whoever started it.
    negotiated: bool = False
    peer: Peer | None = None
    _answers: tuple[MemoryObjectSendStream[p.Answer], MemoryObjectReceiveStream[p.Answer]] = field(
        default_factory=_answer_channel
    )

    def deliver_answer(self, answer: p.Answer) -> bool:
        """Hand a client's answer to the task waiting for one; False when none waits."""
        try:
            self._answers[0].send_nowait(answer)
        except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
            return False
        return True

    async def wait_answer(self) -> p.Answer:
        return await self._answers[1].receive()

    def close(self) -> None:
        self._answers[0].close()
        self._answers[1].close()
        self.done.set()


def require_no_media(media: MediaTask | None, what: str) -> None:
    """One media task per session: `what` (start_sending/start_receiving) needs none running."""
    if media is None:
        return
    if what == "start_sending" and media.role == "sender":
        raise SessionStateError("already sending on this connection; send stop first")
    raise SessionStateError(f"this connection is {media.role}; send stop before {what}")


# Sender admission, one road for every door (/ws's start_sending, WHIP's POST): `check_sender`
# before anything is claimed, then `admit_sender`; a door says only how its own client takes
# a busy channel over.


def check_sender(
    grant: Grant | None, channel: str | None, takeover: bool, settings: Settings
) -> None:
    """What a sender must pass before anything is claimed (RelayError if not): a takeover
    names a channel and is the token's to make; a token sends where it may."""
    if takeover and channel is None:
        raise ChannelError('"takeover" needs a "channel" to take over')
    if grant is not None:
        if takeover and channel is not None:
            check_may_take_over(grant, channel, settings)
        grant.check_sending(channel, takeover)


def admit_sender(
    ctx: RelayContext, info: SessionInfo, channel: str | None, takeover: bool, busy_hint: str
) -> None:
    """Count `info` as a sender from now on (within streams.max_streams), holding its stream
    id; a busy channel's error ends with `busy_hint`, how this door's client gets it."""
    max_streams = ctx.settings.streams.max_streams
    try:
        ctx.registry.claim_sender(info, max_streams, channel, takeover)
    except ChannelBusy as busy:
        raise busy.with_hint(busy_hint) from None


def check_sending(message: p.StartSending, grant: Grant | None, settings: Settings) -> None:
    """What `start_sending` must pass before anything is claimed (RelayError if not)."""
    check_sdp_size(message.sdp, settings.webrtc.max_sdp_bytes)
    check_sender(grant, message.channel, message.takeover, settings)


def check_may_take_over(grant: Grant, channel: str, settings: Settings) -> None:
    """A token that may send but not take `channel` over is told so in a sentence, and its
    session stays (Grant.check_sending's AuthError would close it)."""
    if grant.allows_sending() and grant.stream is None:
        label = label_of(settings, channel)
        raise ChannelError(
            f"Taking over {label} needs an invitation to speak on {label} (a send token "
            f"scoped to the channel); ask the operator to hand {label} over to you."
        )


def label_of(settings: Settings, channel: str) -> str:
    """What people call a channel: its configured label, else its name."""
    configured = settings.channels.get(channel)
    return configured.label if configured is not None else channel


def claim_sending(ctx: RelayContext, info: SessionInfo, message: p.StartSending) -> None:
    """Count a WebSocket client as this message's sender; a busy channel says how our
    protocol takes one over."""
    hint = 'start_sending with "takeover": true replaces it'
    admit_sender(ctx, info, message.channel, message.takeover, hint)


@contextmanager
def answering() -> Iterator[None]:
    """Answering a client's offer: aiortc's errors as the client is told them (no media
    port free: MediaUnavailable; anything else aiortc raises on a bad SDP: NegotiationError)."""
    try:
        yield
    except NoFreeMediaPort as error:
        raise MediaUnavailable(str(error.strerror or error)) from None
    except Exception as error:  # aiortc raises ValueError, KeyError, ... on bad SDP
        raise NegotiationError(f"cannot use this offer: {error or type(error).__name__}") from None


def remote_candidates(host: SessionHost, sdp: str) -> str:
    """The client's SDP with only the ICE candidates worth probing (limits.filter_candidates)."""
    webrtc = host.ctx.settings.webrtc
    sdp, dropped = filter_candidates(sdp, webrtc.max_remote_candidates, webrtc.ice_addresses)
    if dropped:
        host.ctx.metrics.count_drop("remote_candidate", dropped)
    return sdp


class Negotiated(TaskStatus[None]):
    """The task_status a media task reports to: marks the MediaTask negotiated, then passes on."""

    def __init__(self, media: MediaTask, inner: TaskStatus[None]) -> None:
        self._media = media
        self._inner = inner

    def started(self, value: None = None) -> None:
        self._media.negotiated = True
        self._inner.started(value)
