"""PeerSession: one WebSocket, one anyio task group, and everything that lives in it.

The task tree of a session (the SESSION group is opened in `PeerSession.run`):

    SESSION
    ├── _write_loop         outbox -> WebSocket (the only writer)
    ├── _idle_watchdog      closes a session silent for 1.5 x webrtc.connection_timeout
    ├── _close_on_shutdown  closes with 1001 when the server stops
    ├── _expire_grant       closes with 1008 when the access token expires (auth on)
    ├── receive loop        (the host task) parses and dispatches client messages
    └── _run_media          at most one: run_sender (sender.py) or run_receiver (receiver.py)

Every resource is acquired inside the scope that releases it: the peer connection by
`open_peer`, the stream registration and relay subscriptions by the media task, the session's
own registration by `run`. So when the scope exits, for any reason (client gone, stop, error,
idle timeout, stale stream, shutdown), cleanup has already happened.

Errors take one path: whoever meets a `RelayError` (the receive loop, a media task after it
negotiated, the idle watchdog) hands it to `refuse`, which counts it, logs it once with its
kind, queues the `error` frame and, when the error says so, asks the session to close.
Nothing that sends waits on the client: the outbox is bounded and a client that lets it fill
is closed (`NotReading`), so a close never hangs behind a client that does not read.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Protocol

import anyio
from anyio.abc import TaskStatus

from ..core import protocol as p
from ..core.auth import Grant, watch_expiry
from ..core.config import Settings
from ..core.errors import (
    AuthError,
    CloseCode,
    IdleTimeout,
    NotReading,
    RelayError,
    SessionStateError,
)
from ..core.limits import Throttle, TokenBucket, check_frame, check_sdp_size
from ..core.logs import get_logger
from ..media.booth import booth_listable, check_booth_receiving
from ..media.host import (
    MEDIA_SILENCE_FLOOR,
    MediaRole,
    MediaRun,
    MediaTask,
    Negotiated,
    check_sending,
    claim_sending,
    require_no_media,
)
from ..media.receiver import Listen, run_receiver
from ..media.sender import run_sender
from ..streams.context import RelayContext
from ..streams.finder import stream_to_play
from ..streams.stream import SessionInfo
from .booth_messages import booth_request, no_media_but_waiting
from .identity import dismiss, first_message_grant, reauthenticated, take_name, welcome

OUTBOX_SIZE = 64
# The longest the idle watchdog sleeps between looks (seconds): activity only moves its
# deadline later, and a deadline that shortens (the media failed) is seen within this.
# Waking every second instead, 200 listeners woke the loop 200 times a second for nothing.
WATCHDOG_CAP = 5.0
LOG_LINES_PER_SECOND = 5.0  # client_error lines per session (all errors are still counted)


class WebSocket(Protocol):
    """What a session needs from Quart's websocket object."""

    async def accept(self) -> None: ...
    async def receive(self) -> str | bytes | None: ...
    async def send(self, data: str) -> None: ...
    async def close(self, code: int, reason: str = "") -> None: ...


def welcome_config(settings: Settings) -> dict[str, Any]:
    """What the client needs to set up media and keep the session alive (`welcome.config`)."""
    webrtc = settings.webrtc
    return {
        "audio_constraints": webrtc.audio_constraints.model_dump(),
        "ice_servers": webrtc.ice_servers,
        "connection_timeout": webrtc.connection_timeout,
        "idle_close_after": webrtc.idle_close_after,
        "ping_interval": max(1.0, min(30.0, webrtc.connection_timeout / 2)),
        "visualization": settings.visualization.enabled,
        "audio_port": settings.server.audio_port,  # GET :audio_port/stream/<id>.ogg
    }


class PeerSession:
    video_ignored = False  # our own clients offer audio only: video is a mistake to report

    def __init__(
        self,
        ws: WebSocket,
        ctx: RelayContext,
        info: SessionInfo,
        grant: Grant | None = None,
        pending: bool = False,
    ) -> None:
        """`info`: the slot the guard admitted; `grant`: what its token allows (None while auth
        is off, or while `pending`: the token comes in the first message)."""
        self.ws = ws
        self.ctx = ctx
        self.settings = ctx.settings
        self.info = info
        self.connection_id = info.connection_id
        self.info.kick = functools.partial(dismiss, self)  # the console's Disconnect, Remove
        self.grant = grant
        self._pending = pending
        self._idle_log = get_logger(connection_id=self.connection_id, role="idle")
        self._outbox_send, self._outbox_receive = anyio.create_memory_object_stream[str](
            OUTBOX_SIZE
        )
        self._last_activity = anyio.current_time()
        self._close_request: tuple[CloseCode, str] | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        # The running media task (sender or receiver), if any: the session's only media state.
        self._media: MediaTask | None = None
        self._bucket = TokenBucket(ctx.settings.server.max_messages_per_second)
        self._log_throttle = Throttle(rate=LOG_LINES_PER_SECOND)

    @property
    def log(self) -> Any:
        """Bound to connection_id and role, and to stream_id once media has one."""
        return self._media.log if self._media is not None else self._idle_log

    # Lifetime ------------------------------------------------------------------------------
    async def run(self) -> None:
        """Serve this WebSocket until it closes; cleanup is complete when this returns."""
        live = self.ctx.metrics.live
        await self.ws.accept()
        if not await self._admit():
            return
        live.sessions += 1
        self.ctx.metrics.sessions_total += 1
        self.log.info("client_connected", remote=self.info.remote)
        try:
            live.session_task_groups += 1
            try:
                async with anyio.create_task_group() as tg:
                    self._task_group = tg
                    tg.start_soon(self._write_loop)
                    tg.start_soon(self._idle_watchdog)
                    tg.start_soon(self._close_on_shutdown)
                    tg.start_soon(self._expire_grant)
                    self.send(welcome(self, welcome_config(self.settings)))
                    await self._receive_loop()
            finally:
                live.session_task_groups -= 1
        except* Exception:
            # A bug, not a client mistake: keep the traceback, tell the client 1011.
            self.log.exception("session_crashed")
            self.ctx.metrics.count_error("internal")
            self._close_request = (CloseCode.INTERNAL_ERROR, "internal server error")
        finally:
            self.ctx.registry.close_session(self.connection_id)
            live.sessions -= 1
            reason = self._close_request[1] if self._close_request else "client disconnected"
            self.log.info("connection_cleanup", reason=reason)
            await self._close_socket(flush=False)

    async def _admit(self) -> bool:
        """Authenticate a connection whose token comes in its first message, and open it as a
        session (server.max_connections). A refused client is told why and closed; it never
        becomes a session."""
        try:
            if self._pending:
                self.grant = await first_message_grant(self)
            elif (grant := self.grant) is not None:  # its token came with the request
                fields = {"role": grant.role, "stream": grant.stream, "subject": grant.subject}
                self.log.info("client_authenticated", **fields)
            self.ctx.registry.open_session(self.info)
        except RelayError as error:
            self.ctx.registry.close_session(self.connection_id)
            self.refuse(error, event="connection_refused")
            await self._close_socket(flush=True)
            return False
        return True

    def request_close(self, code: CloseCode, reason: str) -> None:
        """Ask the session to end; `run` closes the WebSocket with this code after teardown.

        Never blocks. Closing the outbox lets the writer send what is queued, then cancel the
        session; the deadline bounds that for a client that does not read.
        """
        if self._close_request is None:
            self._close_request = (code, reason[:120])  # a close reason fits in 123 bytes
        self._outbox_send.close()
        if self._task_group is not None:
            scope = self._task_group.cancel_scope
            scope.deadline = min(
                scope.deadline, anyio.current_time() + self.settings.relay.teardown_timeout
            )

    async def _close_socket(self, flush: bool) -> None:
        """Send what is still queued (only before the writer exists), then the close frame.

        Shielded, so a cancelled session still says goodbye; bounded, so a client that does
        not read cannot hold the handler.
        """
        self._outbox_send.close()
        with anyio.move_on_after(self.settings.relay.teardown_timeout, shield=True):
            if flush:
                async for text in self._outbox_receive:
                    await self.ws.send(text)
            if self._close_request is not None:
                code, reason = self._close_request
                await self.ws.close(int(code), reason)
        self._outbox_receive.close()

    # Outgoing ------------------------------------------------------------------------------
    async def _write_loop(self) -> None:
        timeout = self.settings.server.send_timeout
        async for text in self._outbox_receive:
            self.info.bytes_out += len(text)
            with anyio.move_on_after(timeout) as write:
                await self.ws.send(text)
            if write.cancelled_caught:
                self._not_reading(f"a write took over {timeout:g} s (server.send_timeout)")
                break
        # The outbox was closed by request_close() and is drained (so the client got, say,
        # the idle-timeout error before the close frame), or the client stopped reading: end
        # the session.
        assert self._task_group is not None
        self._task_group.cancel_scope.cancel()

    def _not_reading(self, detail: str) -> None:
        error = NotReading(f"client is not reading: {detail}")
        self._count_and_log(error, "client_error")
        self.request_close(CloseCode.POLICY_VIOLATION, error.message)

    def send(self, message: p.ServerMessage) -> None:
        """Queue a message for the client. Never blocks: a client that lets the outbox fill
        is not reading, and is closed instead of waited for."""
        try:
            self._outbox_send.send_nowait(p.encode(message))
        except anyio.WouldBlock:
            self._not_reading(f"{OUTBOX_SIZE} messages unsent")
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass  # closing: late messages have no one to go to

    def send_or_drop(self, text: str) -> None:
        """Queue an encoded droppable message (visualization); drop it if the outbox is full."""
        # Never raises: the visualization task of another session calls this.
        with contextlib.suppress(
            anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError
        ):
            self._outbox_send.send_nowait(text)

    def refuse(self, error: RelayError, event: str = "client_error") -> None:
        """The one mapping from a RelayError to the client: counted, logged once with its
        kind, an `error` frame, and a close when the error's class says so."""
        self._count_and_log(error, event)
        self.send(p.Error(message=error.message))
        if error.close_code is not None:
            self.request_close(error.close_code, error.close_reason or error.message)

    def _count_and_log(self, error: RelayError, event: str) -> None:
        """Every error is counted; its log line is throttled, since a flood of bad frames
        would otherwise write a line each (the count of those left out goes with the next)."""
        self.ctx.metrics.count_error(error.kind)
        # An error that ends the session is always logged: it says why the client was closed.
        suppressed = self._log_throttle.allow() if error.close_code is None else 0
        if suppressed is not None:
            extra = {"suppressed": suppressed} if suppressed else {}
            self.log.info(event, kind=error.kind, error=error.message, **extra)

    # Watchdogs -----------------------------------------------------------------------------
    async def _idle_watchdog(self) -> None:
        """Close the session once both its WebSocket and its media have gone quiet.

        WebSocket: no message for webrtc.idle_close_after (1.5 x connection_timeout: a client
        pinging every connection_timeout is never dropped). Media: nothing heard from the peer
        (RTP, or RTCP reports from a receiver) for as long, at least MEDIA_SILENCE_FLOOR."""
        timeout = self.settings.webrtc.idle_close_after
        media_grace = max(timeout, MEDIA_SILENCE_FLOOR)
        while True:
            now = anyio.current_time()
            deadline = self._last_activity + timeout
            peer = self._media.peer if self._media is not None else None
            if peer is not None and peer.connected:
                deadline = max(deadline, peer.last_heard + media_grace)
                if now >= deadline:  # before giving up, look at the newest RTCP report
                    deadline = max(deadline, await peer.refresh_last_heard() + media_grace)
            if now >= deadline:
                interval = self.settings.webrtc.connection_timeout
                message = f"idle timeout: no message for {timeout:g} s (ping every {interval:g} s)"
                self.refuse(IdleTimeout(message), event="session_idle_timeout")
                return
            await anyio.sleep(min(deadline - now, WATCHDOG_CAP))  # (activity only delays it)

    async def _expire_grant(self) -> None:
        """Close the session when its token expires unless `auth` renewed it (watch_expiry)."""

        def close(error: AuthError) -> None:  # (watch_expiry counted and logged it)
            self.send(p.Error(message=error.message))
            self.request_close(CloseCode.POLICY_VIOLATION, error.message)

        hint, log = "send auth with a new token before the old one expires", lambda: self.log
        await watch_expiry("ws", lambda: self.grant, close, self.ctx.metrics, log, hint)

    async def _close_on_shutdown(self) -> None:
        if self.ctx.shutting_down is None:
            return
        await self.ctx.shutting_down.wait()
        self.request_close(CloseCode.GOING_AWAY, "server shutting down")

    # Incoming ------------------------------------------------------------------------------
    async def _receive_loop(self) -> None:
        limit = self.settings.server.max_message_bytes
        while True:
            data = await self.ws.receive()
            self._last_activity = anyio.current_time()
            self.info.bytes_in += len(data) if data else 0
            try:
                self._bucket.take()  # every frame counts, whatever it holds
                text = check_frame(data, limit)
                await self._dispatch(p.parse_client_message(text))
            except RelayError as error:
                self.refuse(error)
                if error.close_code is not None:
                    return

    async def _dispatch(self, message: p.ClientMessage) -> None:
        take_name(self.info, getattr(message, "name", None))  # (start_sending, -_receiving...)
        match message:
            case p.Ping():
                self.send(p.Pong())
            case p.GetAvailableStreams():  # only what this token may receive (or speak on)
                allowed = booth_listable(self.grant, self.settings) if self.grant else None
                self.send(self.ctx.registry.available(allowed))
            case p.StartSending(sdp=sdp):
                check_sending(message, self.grant, self.settings)
                await no_media_but_waiting(self, "start_sending")  # (a turn came)
                claim_sending(self.ctx, self.info, message)
                await self._start_media("sender", run_sender, sdp)
            case p.StartReceiving(stream_id=stream_id, visualization=levels, upstream=link):
                if self.grant is not None:  # (a speaker's token hears the booth's channels)
                    stream_id = check_booth_receiving(self.grant, stream_id, link, self.ctx)
                require_no_media(self._media, "start_receiving")
                stream = await stream_to_play(self.ctx, stream_id, self.log, link)
                self.info.node_link = link
                await self._start_media("receiver", run_receiver, Listen(stream, levels))
            case p.Auth(token=token):
                self.send(reauthenticated(self, token))
            case p.Answer(sdp=sdp):
                check_sdp_size(sdp, self.settings.webrtc.max_sdp_bytes)
                if self._media is None or not self._media.deliver_answer(message):
                    raise SessionStateError("unexpected answer: no offer is waiting")
            case p.Stop():
                await self._stop_media()
                self.send(p.Stopped())
            case p.WaitToSpeak() | p.HandOver():
                await booth_request(self, message)

    # Media ---------------------------------------------------------------------------------
    async def _start_media(self, role: MediaRole, run: MediaRun, arg: object) -> None:
        """Run a media task in the session group; return once it has negotiated.

        A failure before that (bad SDP, no audio) is raised here, so the dispatch loop turns
        it into an `error` frame; the task has already released what it took.
        """
        assert self._task_group is not None
        media = MediaTask(role, self._idle_log.bind(role=role))
        await self._task_group.start(self._run_media, media, run, arg)

    async def _run_media(
        self, media: MediaTask, run: MediaRun, arg: object, *, task_status: TaskStatus[None]
    ) -> None:
        self._media = media
        try:
            with media.scope:
                await run(self, media, arg, task_status=Negotiated(media, task_status))
        except RelayError as error:
            if not media.negotiated:
                raise  # to _start_media's caller
            self.refuse(error)  # after negotiation: the media ends, the session stays
        finally:
            self._media = None
            self.ctx.registry.set_idle(self.info)
            media.close()

    async def _stop_media(self) -> None:
        media = self._media
        if media is not None:
            media.scope.cancel()
            await media.done.wait()
