"""PeerSession: one WebSocket, one anyio task group, and everything that lives in it.

The task tree of a session (the SESSION group is opened in `PeerSession.run`):

    SESSION
    ├── _write_loop         outbox -> WebSocket (the only writer)
    ├── _idle_watchdog      closes a silent session after webrtc.connection_timeout
    ├── _close_on_shutdown  closes with 1001 when the server stops
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
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import anyio
from anyio.abc import TaskStatus

from . import protocol as p
from .auth import Grant, verify
from .config import Settings
from .context import RelayContext
from .errors import (
    AuthError,
    CloseCode,
    IdleTimeout,
    NotReading,
    ProtocolError,
    RelayError,
    SessionStateError,
)
from .limits import TokenBucket, check_frame, check_sdp_size
from .logs import get_logger
from .media import MediaRole, MediaTask, Negotiated
from .receiver import run_receiver
from .registry import SessionInfo, Stream
from .sender import run_sender

OUTBOX_SIZE = 64
MEDIA_SILENCE_FLOOR = 5.0  # seconds; receivers send RTCP reports every 0.5-1.5 s

MediaRun = Callable[..., Awaitable[None]]
"""run_sender or run_receiver: (host, media, arg, *, task_status)."""


class WebSocket(Protocol):
    """What a session needs from Quart's websocket object."""

    async def accept(self) -> None: ...
    async def receive(self) -> str | bytes | None: ...
    async def send(self, data: str) -> None: ...
    async def close(self, code: int, reason: str = "") -> None: ...


def new_connection_id() -> str:
    return secrets.token_hex(4) + "-" + secrets.token_hex(2)


def welcome_config(settings: Settings) -> dict[str, Any]:
    """What the client needs to set up media and keep the session alive (`welcome.config`)."""
    webrtc = settings.webrtc
    return {
        "audio_constraints": webrtc.audio_constraints.model_dump(),
        "ice_servers": webrtc.ice_servers,
        "connection_timeout": webrtc.connection_timeout,
        "ping_interval": max(1.0, min(30.0, webrtc.connection_timeout / 2)),
        "visualization": settings.visualization.enabled,
    }


async def authenticate(
    ws: WebSocket, settings: Settings, url_token: str | None, log: Any
) -> Grant | None:
    """With auth.secret set: the grant of the URL's token or of a first `auth` message."""
    secret = settings.auth.secret
    if secret is None:
        return None
    token = url_token
    if token is None:
        hint = 'send {"type": "auth", "token": "..."} first, or add ?token=... to the URL'
        with anyio.move_on_after(settings.webrtc.negotiation_timeout):
            data = await ws.receive()
            try:
                message = p.parse_client_message(data) if isinstance(data, str) else None
            except ProtocolError:
                message = None
            if not isinstance(message, p.Auth):
                raise AuthError(f"authentication required: {hint}")
            token = message.token
        if token is None:
            raise AuthError(f"authentication timed out: {hint}")
    grant = verify(secret.get_secret_value(), token)
    log.info("client_authenticated", role=grant.role, stream=grant.stream, subject=grant.subject)
    return grant


class PeerSession:
    def __init__(
        self, ws: WebSocket, ctx: RelayContext, remote: str = "", token: str | None = None
    ) -> None:
        self.ws = ws
        self.ctx = ctx
        self.settings = ctx.settings
        self.connection_id = new_connection_id()
        self.info = SessionInfo(self.connection_id, remote)
        self._url_token = token
        # None while auth is off; otherwise what the client's token allows.
        self.grant: Grant | None = None
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

    @property
    def log(self) -> Any:
        """Bound to connection_id and role, and to stream_id once media has one."""
        return self._media.log if self._media is not None else self._idle_log

    # Lifetime ------------------------------------------------------------------------------
    async def run(self) -> None:
        """Serve this WebSocket until it closes; cleanup is complete when this returns."""
        live = self.ctx.metrics.live
        await self.ws.accept()
        try:
            # A refused client never reaches the registry: authenticate first.
            self.grant = await authenticate(self.ws, self.settings, self._url_token, self.log)
            self.ctx.registry.open_session(self.info)
        except RelayError as error:
            self.refuse(error, event="connection_refused")
            await self._close_socket(flush=True)
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
                    config = welcome_config(self.settings)
                    self.send(p.Welcome(connection_id=self.connection_id, config=config))
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
        async for text in self._outbox_receive:
            await self.ws.send(text)
        # The outbox was closed by request_close() and is drained (so the client got, say,
        # the idle-timeout error before the close frame): end the session.
        assert self._task_group is not None
        self._task_group.cancel_scope.cancel()

    def send(self, message: p.ServerMessage) -> None:
        """Queue a message for the client. Never blocks: a client that lets the outbox fill
        is not reading, and is closed instead of waited for."""
        try:
            self._outbox_send.send_nowait(p.encode(message))
        except anyio.WouldBlock:
            error = NotReading(f"client is not reading: {OUTBOX_SIZE} messages unsent")
            self._count_and_log(error, "client_error")
            self.request_close(CloseCode.POLICY_VIOLATION, error.message)
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
        self.ctx.metrics.count_error(error.kind)
        self.log.info(event, kind=error.kind, error=error.message)

    # Watchdogs -----------------------------------------------------------------------------
    async def _idle_watchdog(self) -> None:
        """Close the session once both its WebSocket and its media have gone quiet.

        WebSocket: no message for webrtc.connection_timeout. Media: nothing heard from the
        peer (RTP from a sender, RTCP reports from a receiver) for the same time, but at
        least MEDIA_SILENCE_FLOOR, since receivers report only about once a second. So a
        listener need not chat on its socket, and a frozen one is dropped all the same.
        """
        timeout = self.settings.webrtc.connection_timeout
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
                message = f"idle timeout: no message for {timeout:g} s (send ping to keep alive)"
                self.refuse(IdleTimeout(message), event="session_idle_timeout")
                return
            await anyio.sleep(min(deadline - now, 1.0))

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
            try:
                text = check_frame(data, limit)
                self._bucket.take()
                await self._dispatch(p.parse_client_message(text))
            except RelayError as error:
                self.refuse(error)
                if error.close_code is not None:
                    return

    async def _dispatch(self, message: p.ClientMessage) -> None:
        match message:
            case p.Ping():
                self.send(p.Pong())
            case p.GetAvailableStreams():
                self.send(p.AvailableStreams(streams=self.ctx.registry.stream_infos()))
            case p.StartSending(sdp=sdp):
                check_sdp_size(sdp, self.settings.webrtc.max_sdp_bytes)
                if self.grant is not None:
                    self.grant.check_sending()
                self._require_no_media("start_sending")
                self.ctx.registry.claim_sender(self.info, self.settings.streams.max_streams)
                await self._start_media("sender", run_sender, sdp)
            case p.StartReceiving(stream_id=stream_id):
                if self.grant is not None:
                    stream_id = self.grant.check_receiving(stream_id)
                self._require_no_media("start_receiving")
                await self._start_media("receiver", run_receiver, self._find_stream(stream_id))
            case p.Auth(token=token):
                self._reauthenticate(token)
            case p.Answer(sdp=sdp):
                check_sdp_size(sdp, self.settings.webrtc.max_sdp_bytes)
                if self._media is None or not self._media.deliver_answer(message):
                    raise SessionStateError("unexpected answer: no offer is waiting")
            case p.Stop():
                await self._stop_media()
                self.send(p.Stopped())

    def _reauthenticate(self, token: str) -> None:
        """`auth` mid-session: refresh the grant (a new token before the old one expires)."""
        secret = self.settings.auth.secret
        if secret is None:
            self.send(p.Authenticated(role="both"))  # open server: anything goes
            return
        self.grant = verify(secret.get_secret_value(), token)
        self.send(p.Authenticated(role=self.grant.role, stream=self.grant.stream))

    def _require_no_media(self, what: str) -> None:
        if self._media is None:
            return
        role = self._media.role
        if what == "start_sending" and role == "sender":
            raise SessionStateError("already sending on this connection; send stop first")
        raise SessionStateError(f"this connection is {role}; send stop before {what}")

    def _find_stream(self, stream_id: str | None) -> Stream:
        try:
            stream = self.ctx.registry.find_stream(stream_id)
        except RelayError:
            self.log.warning("no_stream_for_receiver", requested=stream_id)
            raise
        if stream.ended.is_set():
            self.log.warning("stream_track_ended", stream_id=stream.stream_id)
            raise SessionStateError(p.NO_STREAM_MESSAGE + f" ({stream.stream_id} has ended)")
        return stream

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
