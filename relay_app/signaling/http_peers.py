"""Peer sessions without a WebSocket: a WHIP publisher or a WHEP player, handled by its HTTP
resource (`Location:`), not by a connection.

The same media tasks as a WebSocket session's run here (sender.run_sender for WHIP,
receiver.run_answering_receiver for WHEP), with the same limits, registry entries, logs,
metrics and stale sweep. What differs is only who holds the session: the POST's handler
starts it in ROOT (the server's lifespan task group) and returns once it has negotiated;
the session then lives in its own task group until its stream or connection ends, a
DELETE cancels it, or the server stops. Its `finally` releases what it took, as a
WebSocket session's does, so nobody has to remember to clean up.

    ROOT
    └── HttpPeers._run     one per WHIP/WHEP resource
        └── RESOURCE       its own task group; its cancel scope is what DELETE cancels
            ├── _watch_media   releases it when its media never connects or goes silent
            ├── watch_expiry   ends it when its token expires (auth on: core/auth.py, the
            │                  rule /ws and Ogg listeners share)
            └── run_sender / run_answering_receiver
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
from anyio.abc import TaskGroup, TaskStatus

from ..core import protocol as p
from ..core.auth import Grant, watch_expiry
from ..core.config import WebRTCSettings
from ..core.errors import AuthError, RelayError, sole_error
from ..core.logs import get_logger
from ..media.host import MEDIA_SILENCE_FLOOR, MediaRun, MediaTask, Negotiated
from ..streams.context import RelayContext
from ..streams.stream import SessionInfo

Kind = Literal["whip", "whep"]
WATCH_INTERVAL = 1.0  # seconds between looks at a resource's media


@dataclass(eq=False)
class HttpPeer:
    """One WHIP/WHEP resource: the SessionHost its media task sees."""

    ctx: RelayContext
    info: SessionInfo
    kind: Kind
    log: Any
    resource_id: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    answer: str | None = None
    scope: anyio.CancelScope | None = None
    done: anyio.Event = field(default_factory=anyio.Event)
    ended: str | None = None  # why its stream ended, once it did

    @property
    def connection_id(self) -> str:
        return self.info.connection_id

    @property
    def video_ignored(self) -> bool:
        return self.kind == "whip"  # OBS always offers video; it is answered inactive

    def send(self, message: p.ServerMessage) -> None:
        """What a WebSocket client would be told: the answer goes into the POST's response;
        the rest has no one to go to and is logged where it matters."""
        match message:
            case p.AnswerOut(sdp=sdp):
                self.answer = sdp
            case p.StreamEnded(reason=reason, waiting=False):  # (waiting: it plays on)
                self.ended = reason
            case p.Error(message=text):
                self.log.info("client_error", error=text)

    def send_or_drop(self, text: str) -> None:
        """Visualization: an HTTP peer has no channel for it."""

    def delete(self) -> None:
        if self.scope is not None:
            self.scope.cancel()


class HttpPeers:
    """The live WHIP/WHEP resources by id, and the task group they run in."""

    def __init__(self, ctx: RelayContext) -> None:
        self.ctx = ctx
        self.peers: dict[str, HttpPeer] = {}
        self._group: TaskGroup | None = None  # ROOT, set while the server serves

    def serve_in(self, group: TaskGroup | None) -> None:
        self._group = group

    async def open(
        self,
        kind: Kind,
        info: SessionInfo,
        run: MediaRun,
        arg: object,
        claim: Callable[[], Any],
        grant: Grant | None = None,
    ) -> HttpPeer:
        """Register `info` as a session, `claim` its role, run its media until negotiated;
        it ends when `grant` (its token's, None with auth off) expires.

        RelayError (inside an exception group, from the task group) when it cannot start;
        the session is already released then.
        """
        if self._group is None:
            raise RuntimeError("the server is not serving")
        role = "sender" if kind == "whip" else "receiver"
        log = get_logger(connection_id=info.connection_id, role=role, via=kind)
        peer = HttpPeer(self.ctx, info, kind, log)
        info.kick = lambda reason: peer.delete()  # the admin API's kick: end the resource
        await self._group.start(self._run, peer, run, arg, claim, grant)
        return peer

    async def _run(
        self,
        peer: HttpPeer,
        run: MediaRun,
        arg: object,
        claim: Callable[[], Any],
        grant: Grant | None,
        *,
        task_status: TaskStatus[None],
    ) -> None:
        registry, live = self.ctx.registry, self.ctx.metrics.live
        registry.open_session(peer.info)
        media = MediaTask("sender" if peer.kind == "whip" else "receiver", peer.log)
        live.session_task_groups += 1
        try:
            claim()
            self.peers[peer.resource_id] = peer
            peer.log.info("client_connected", remote=peer.info.remote, resource=peer.resource_id)
            async with anyio.create_task_group() as resource:
                peer.scope = resource.cancel_scope
                resource.start_soon(_watch_media, peer, media, self.ctx.settings.webrtc)
                expired = functools.partial(_expired, peer, media)
                metrics, log = self.ctx.metrics, lambda: peer.log
                resource.start_soon(watch_expiry, peer.kind, lambda: grant, expired, metrics, log)
                await run(peer, media, arg, task_status=Negotiated(media, task_status))
                resource.cancel_scope.cancel()  # the media ended: so does its watchdog
        except* Exception as group:
            if not media.negotiated:
                raise  # to open()'s caller: the POST answers with the error
            for error in group.exceptions:  # after negotiation: the session ends, ROOT stays
                if isinstance(error, RelayError):
                    peer.log.info("client_error", kind=error.kind, error=error.message)
                else:
                    peer.log.error("session_crashed", exc_info=error)
                    self.ctx.metrics.count_error("internal")
        finally:
            self.peers.pop(peer.resource_id, None)
            registry.set_idle(peer.info)
            registry.close_session(peer.connection_id)
            live.session_task_groups -= 1
            media.close()
            peer.done.set()
            peer.log.info("connection_cleanup", reason=peer.ended or "resource ended")


def _expired(peer: HttpPeer, media: MediaTask, error: AuthError) -> None:
    """Its token expired (watch_expiry has counted and logged it): the resource ends; before
    it has negotiated, the POST is answered with the error instead."""
    if not media.negotiated:
        raise error
    peer.ended = error.message
    peer.delete()


async def _watch_media(peer: HttpPeer, media: MediaTask, webrtc: WebRTCSettings) -> None:
    """A WHIP/WHEP resource has no WebSocket whose silence would end it: it lives while its
    media does. Released when its media has not connected within webrtc.negotiation_timeout
    of the answer, or when nothing was heard from the peer (RTP from a publisher, RTCP from a
    player) for webrtc.idle_close_after; otherwise a player that never finishes ICE would
    hold a receiver slot until the stream ends."""
    grace = max(webrtc.idle_close_after, MEDIA_SILENCE_FLOOR)
    connect_by: float | None = None
    while True:
        await anyio.sleep(WATCH_INTERVAL)
        rtc, now = media.peer, anyio.current_time()
        if rtc is None or not media.negotiated:
            continue
        if not rtc.connected:
            connect_by = connect_by or now + webrtc.negotiation_timeout
            if now < connect_by:
                continue
            reason = f"media did not connect within {webrtc.negotiation_timeout:g} s"
        elif now - rtc.last_heard < grace or now - await rtc.refresh_last_heard() < grace:
            continue
        else:
            reason = f"no media from the peer for {grace:g} s"
        peer.log.info("resource_expired", reason=reason, resource=peer.resource_id)
        peer.ended = reason
        peer.delete()
        return


def relay_error(group: BaseException) -> RelayError | None:
    """The RelayError a failed start raised, unwrapped from task-group exception groups."""
    error = sole_error(group)
    return error if isinstance(error, RelayError) else None
