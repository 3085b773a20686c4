"""PeerSession: one WebSocket, one anyio task group, and everything that lives in it.

The task tree of a session (the SESSION group is opened in `PeerSession.run`):

    SESSION
    ├── _write_loop         outbox -> WebSocket (the only writer)
    ├── _idle_watchdog      closes a silent session after webrtc.connection_timeout
    ├── _close_on_shutdown  closes with 1001 when the server stops
    ├── receive loop        (the host task) parses and dispatches client messages
    └── media task          at most one: _run_sender or _run_receiver
        ├── drain           (sender) the decoded track -> visualization (+ receivers in
        │                   transcode mode); in forward mode receivers get the sender's Opus
        │                   packets straight from the RTP tap (rtp_tap.py)
        ├── visualization   (sender) levels -> sender and receivers
        └── watchers        ICE failure, stream end (liveness: see _idle_watchdog)

Every resource is acquired inside the scope that releases it: the peer connection by
`open_peer`, the stream registration and relay subscriptions by a `try/finally` in the media
task, the session's own registration by `run`. So when the scope exits, for any reason (client
gone, stop, error, idle timeout, stale stream, shutdown), cleanup has already happened.
"""

from __future__ import annotations

import contextlib
import math
import secrets
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

import anyio
from aiortc import RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import RtpPacket
from aiortc.sdp import SessionDescription
from anyio.abc import TaskStatus
from av import AudioFrame

from . import protocol as p
from .auth import Grant, verify
from .context import RelayContext
from .errors import (
    AuthError,
    CloseCode,
    FloodError,
    LimitError,
    MediaUnavailable,
    MessageTooBig,
    NegotiationError,
    ProtocolError,
    RelayError,
    SessionStateError,
)
from .ice import NoFreeMediaPort
from .levels import EveryNth, levels
from .logs import get_logger
from .peer import Peer, open_peer
from .registry import SessionInfo, Stream
from .relay import Fanout, Media, pump
from .rtp_tap import (
    OpusPacketizer,
    RtpCallback,
    audio_receiver,
    negotiated_opus_payload_type,
    tap_receiver,
)

OUTBOX_SIZE = 64
MEDIA_SILENCE_FLOOR = 5.0  # seconds; receivers send RTCP reports every 0.5-1.5 s


class WebSocket(Protocol):
    """What a session needs from Quart's websocket object."""

    async def accept(self) -> None: ...
    async def receive(self) -> str | bytes | None: ...
    async def send(self, data: str) -> None: ...
    async def close(self, code: int, reason: str = "") -> None: ...


class TokenBucket:
    """At most `rate` messages a second on average, bursts of 2x; a flood closes the session."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = 2 * rate
        self.tokens = self.capacity
        self.updated = anyio.current_time()
        self.refused = 0

    def take(self) -> None:
        now = anyio.current_time()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            self.refused = 0
            return
        self.refused += 1
        message = f"too many messages: limit {self.rate:g}/s (server.max_messages_per_second)"
        if self.refused > self.capacity:
            raise FloodError(message + "; closing")
        raise LimitError(message + "; this message was ignored")


def new_connection_id() -> str:
    return secrets.token_hex(4) + "-" + secrets.token_hex(2)


def _offer_kinds(sdp: str) -> list[str]:
    try:
        return [media.kind for media in SessionDescription.parse(sdp).media]
    except Exception as error:  # aiortc's parser raises assorted errors on garbage
        raise NegotiationError(f"invalid SDP offer: {error}") from None


async def _wait_any(*waits: Callable[[], Awaitable[Any]]) -> None:
    """Return as soon as one of the waits returns; the others are cancelled."""
    async with anyio.create_task_group() as tg:

        async def _one(wait: Callable[[], Awaitable[Any]]) -> None:
            await wait()
            tg.cancel_scope.cancel()

        for wait in waits:
            tg.start_soon(_one, wait)


class PeerSession:
    def __init__(
        self, ws: WebSocket, ctx: RelayContext, remote: str = "", token: str | None = None
    ) -> None:
        self.ws = ws
        self._url_token = token
        # None while auth is off; otherwise what the client's token allows.
        self.grant: Grant | None = None
        self.ctx = ctx
        self.settings = ctx.settings
        self.connection_id = new_connection_id()
        self.info = SessionInfo(self.connection_id, remote)
        self._base_log = get_logger(connection_id=self.connection_id)
        self.log = self._base_log.bind(role="idle")
        self._outbox_send, self._outbox_receive = anyio.create_memory_object_stream[str](
            OUTBOX_SIZE
        )
        # Unbuffered: an answer is accepted only while a receiver task is waiting for one.
        self._answers_send, self._answers_receive = anyio.create_memory_object_stream[p.Answer](0)
        self._last_activity = anyio.current_time()
        self._close_request: tuple[CloseCode, str] | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        # The running media task (sender or receiver), if any.
        self._media_scope: anyio.CancelScope | None = None
        self._media_done: anyio.Event | None = None
        self._peer: Peer | None = None
        self._bucket = TokenBucket(ctx.settings.server.max_messages_per_second)

    # Lifetime ------------------------------------------------------------------------------
    async def run(self) -> None:
        """Serve this WebSocket until it closes; cleanup is complete when this returns."""
        live = self.ctx.metrics.live
        registry = self.ctx.registry
        await self.ws.accept()
        try:
            # A refused client never reaches the registry: authenticate first.
            self.grant = await self._authenticate()
            registry.open_session(self.info)
        except RelayError as error:
            self.log.warning("connection_refused", kind=error.kind, reason=error.message)
            self.ctx.metrics.count_error(error.kind)
            code = error.close_code or CloseCode.TRY_AGAIN_LATER
            with anyio.move_on_after(self.settings.relay.teardown_timeout, shield=True):
                await self.ws.send(p.encode(p.Error(message=error.message)))
                await self.ws.close(code, error.message[:120])
            return
        live.sessions += 1
        self.ctx.metrics.sessions_total += 1
        self.log.info("client_connected", remote=self.info.remote)
        reason = "client disconnected"
        try:
            live.session_task_groups += 1
            try:
                async with anyio.create_task_group() as tg:
                    self._task_group = tg
                    tg.start_soon(self._write_loop)
                    tg.start_soon(self._idle_watchdog)
                    tg.start_soon(self._close_on_shutdown)
                    await self._send(
                        p.Welcome(connection_id=self.connection_id, config=self._client_config())
                    )
                    await self._receive_loop()
            finally:
                live.session_task_groups -= 1
        except* Exception:
            # A bug, not a client mistake: keep the traceback, tell the client 1011.
            self.log.exception("session_crashed")
            self.ctx.metrics.count_error("internal")
            self._close_request = (CloseCode.INTERNAL_ERROR, "internal server error")
        finally:
            registry.close_session(self.connection_id)
            live.sessions -= 1
            if self._close_request is not None:
                reason = self._close_request[1]
            self.log.info("connection_cleanup", reason=reason)
            if self._close_request is not None:
                code, text = self._close_request
                with anyio.move_on_after(self.settings.relay.teardown_timeout, shield=True):
                    await self.ws.close(int(code), text)
            self._outbox_send.close()
            self._outbox_receive.close()

    async def _authenticate(self) -> Grant | None:
        """With auth.secret set: the grant of the URL's token or of a first `auth` message."""
        secret = self.settings.auth.secret
        if secret is None:
            return None
        token = self._url_token
        if token is None:
            hint = 'send {"type": "auth", "token": "..."} first, or add ?token=... to the URL'
            with anyio.move_on_after(self.settings.webrtc.negotiation_timeout):
                data = await self.ws.receive()
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
        self.log.info("client_authenticated", role=grant.role, stream=grant.stream)
        return grant

    def _close(self, code: CloseCode, reason: str) -> None:
        """Ask the session to end; `run` closes the WebSocket with this code after teardown.

        Closing the outbox lets the writer send what is queued, then cancel the session;
        the deadline bounds that for a client that does not read.
        """
        if self._close_request is None:
            self._close_request = (code, reason)
        self._outbox_send.close()
        if self._task_group is not None:
            scope = self._task_group.cancel_scope
            scope.deadline = min(
                scope.deadline, anyio.current_time() + self.settings.relay.teardown_timeout
            )

    def _client_config(self) -> dict[str, Any]:
        webrtc = self.settings.webrtc
        return {
            "audio_constraints": webrtc.audio_constraints.model_dump(),
            "ice_servers": webrtc.ice_servers,
            "connection_timeout": webrtc.connection_timeout,
            "ping_interval": max(1.0, min(30.0, webrtc.connection_timeout / 2)),
            "visualization": self.settings.visualization.enabled,
        }

    # Outgoing ------------------------------------------------------------------------------
    async def _write_loop(self) -> None:
        async for text in self._outbox_receive:
            await self.ws.send(text)
        # The outbox was closed by _close() and is drained (so the client got, say, the
        # idle-timeout error before the close frame): end the session.
        assert self._task_group is not None
        self._task_group.cancel_scope.cancel()

    async def _send(self, message: p.ServerMessage) -> None:
        # After _close() the outbox is closed and late messages have no one to go to.
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            await self._outbox_send.send(p.encode(message))

    def notify(self, text: str) -> None:
        """Queue a droppable message (visualization) without blocking; drop it if full."""
        # Never raises: the visualization task of another session calls this.
        with contextlib.suppress(
            anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError
        ):
            self._outbox_send.send_nowait(text)

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
            peer = self._peer
            if peer is not None and peer.connected:
                deadline = max(deadline, peer.last_heard + media_grace)
                if now >= deadline:  # before giving up, look at the newest RTCP report
                    deadline = max(deadline, await peer.refresh_last_heard() + media_grace)
            if now >= deadline:
                self.log.info("session_idle_timeout", timeout=timeout)
                message = f"idle timeout: no message for {timeout:g} s (send ping to keep alive)"
                await self._send(p.Error(message=message))
                self._close(CloseCode.NORMAL, "idle timeout")
                return
            await anyio.sleep(min(deadline - now, 1.0))

    async def _close_on_shutdown(self) -> None:
        if self.ctx.shutting_down is None:
            return
        await self.ctx.shutting_down.wait()
        self._close(CloseCode.GOING_AWAY, "server shutting down")

    # Incoming ------------------------------------------------------------------------------
    async def _receive_loop(self) -> None:
        limit = self.settings.server.max_message_bytes
        while True:
            data = await self.ws.receive()
            self._last_activity = anyio.current_time()
            try:
                # Quart hands over an empty binary frame as None (`bytes or text`), found by
                # tests/test_fuzz.py: anything not text is a binary frame.
                if not isinstance(data, str):
                    raise ProtocolError("binary frames are not supported; send JSON text frames")
                if len(data) > limit or len(data.encode()) > limit:
                    raise MessageTooBig(
                        f"message too large: {len(data.encode())} bytes "
                        f"(limit {limit}, server.max_message_bytes)"
                    )
                self._bucket.take()
                await self._dispatch(p.parse_client_message(data))
            except RelayError as error:
                self.ctx.metrics.count_error(error.kind)
                self.log.info("client_error", kind=error.kind, error=error.message)
                await self._send(p.Error(message=error.message))
                if error.close_code is not None:
                    self._close(error.close_code, error.message)
                    return

    async def _dispatch(self, message: p.ClientMessage) -> None:
        match message:
            case p.Ping():
                await self._send(p.Pong())
            case p.GetAvailableStreams():
                await self._send(self._available_streams())
            case p.StartSending(sdp=sdp):
                self._check_sdp_size(sdp)
                if self.grant is not None and not self.grant.allows_sending():
                    raise AuthError(f"this access token may not send (role {self.grant.role!r})")
                self._require_no_media("start_sending")
                self._check_stream_limit()
                await self._start_media(self._run_sender, sdp)
            case p.StartReceiving(stream_id=stream_id):
                if self.grant is not None:
                    stream_id = stream_id or self.grant.stream
                    if not self.grant.allows_receiving(stream_id):
                        raise AuthError(
                            f"this access token may not receive {stream_id or 'streams'} "
                            f"(role {self.grant.role!r}, stream {self.grant.stream!r})"
                        )
                self._require_no_media("start_receiving")
                stream = self._find_stream(stream_id)
                await self._start_media(self._run_receiver, stream)
            case p.Auth(token=token):
                await self._reauthenticate(token)
            case p.Answer(sdp=sdp):
                self._check_sdp_size(sdp)
                try:
                    self._answers_send.send_nowait(message)
                except anyio.WouldBlock:
                    raise SessionStateError("unexpected answer: no offer is waiting") from None
            case p.Stop():
                await self._stop_media()
                await self._send(p.Stopped())

    async def _reauthenticate(self, token: str) -> None:
        """`auth` mid-session: refresh the grant (a new token before the old one expires)."""
        secret = self.settings.auth.secret
        if secret is None:
            await self._send(p.Authenticated(role="both"))  # open server: anything goes
            return
        self.grant = verify(secret.get_secret_value(), token)
        await self._send(p.Authenticated(role=self.grant.role, stream=self.grant.stream))

    def _check_sdp_size(self, sdp: str) -> None:
        limit = self.settings.webrtc.max_sdp_bytes
        if len(sdp) > limit:
            raise LimitError(
                f"SDP too large: {len(sdp)} bytes (limit {limit}, webrtc.max_sdp_bytes)"
            )

    def _check_stream_limit(self) -> None:
        limit = self.settings.streams.max_streams
        senders = sum(1 for s in self.ctx.registry.sessions.values() if s.role == "sender")
        if senders >= limit:
            raise LimitError(
                f"the server already has {senders} senders (limit {limit}, streams.max_streams)"
            )

    def _available_streams(self) -> p.AvailableStreams:
        return p.AvailableStreams(
            streams=[
                p.StreamInfo(
                    stream_id=s.stream_id, started_at=s.started_at, receivers=len(s.receivers)
                )
                for s in self.ctx.registry.live_streams()
            ]
        )

    def _require_no_media(self, what: str) -> None:
        if self._media_scope is None:
            return
        role = self.info.role
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

    async def _start_media(self, task: Callable[..., Coroutine[Any, Any, None]], arg: Any) -> None:
        """Run a media task in the session group; return once it has negotiated.

        A failure before `task_status.started()` (bad SDP, no audio) is raised here and becomes
        an `error` frame; the task has already released what it took.
        """
        assert self._task_group is not None
        self._media_done = anyio.Event()
        await self._task_group.start(task, arg)

    def _media_finished(self) -> None:
        self._peer = None
        self._media_scope = None
        self.info.role = "idle"
        self.log = self._base_log.bind(role="idle")
        if self._media_done is not None:
            self._media_done.set()

    async def _stop_media(self) -> None:
        if self._media_scope is not None and self._media_done is not None:
            self._media_scope.cancel()
            await self._media_done.wait()

    # Sender ----------------------------------------------------------------------------------
    async def _run_sender(self, sdp: str, *, task_status: TaskStatus[None]) -> None:
        stream: Stream | None = None
        log = self.log = self.log.bind(role="sender")
        self.info.role = "sender"
        try:
            with anyio.CancelScope() as media_scope:
                self._media_scope = media_scope
                log.info("sender_setup")
                kinds = _offer_kinds(sdp)
                if "audio" not in kinds:
                    raise NegotiationError("the offer has no audio track (no m=audio section)")
                if set(kinds) - {"audio"}:
                    raise NegotiationError(
                        f"only audio is relayed; remove these from the offer: "
                        f"{', '.join(sorted(set(kinds) - {'audio'}))}"
                    )
                async with open_peer(self.settings, self.ctx.metrics.live, log) as peer:
                    self._peer = peer
                    stream = await self._negotiate_answer(peer, sdp, media_scope)
                    await self._send(p.AnswerOut(sdp=peer.pc.localDescription.sdp))
                    task_status.started()
                    log.info("sender_track_received")
                    self.log = log = log.bind(stream_id=stream.stream_id)
                    try:
                        self.ctx.registry.add_stream(stream)
                        self.ctx.metrics.streams_total += 1
                        log.info("stream_stored", mode=self.settings.relay.mode)
                        await self._send(p.StreamStarted(stream_id=stream.stream_id))
                        await self._serve_stream(peer, stream)
                    finally:
                        # Sync bookkeeping first, so no receiver can find a dying stream.
                        stream.end(stream.end_reason or "sender left")
                        self.ctx.registry.remove_stream(stream)
                        stream.close_relays()
                        log.info("track_ended", reason=stream.end_reason)
        finally:
            self._media_finished()
        if stream is not None and stream.end_reason != "sender left":
            # Ended for a reason other than this session leaving: tell the sender why.
            await self._send(p.StreamEnded(stream_id=stream.stream_id, reason=stream.end_reason))

    async def _negotiate_answer(
        self, peer: Peer, sdp: str, media_scope: anyio.CancelScope
    ) -> Stream:
        """Answer the offer and tap its audio; the answer is not sent yet."""
        tracks: list[Any] = []
        peer.pc.on("track", tracks.append)
        try:
            await peer.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            await peer.pc.setLocalDescription(await peer.pc.createAnswer())
        except NoFreeMediaPort as error:
            raise MediaUnavailable(str(error.strerror or error)) from None
        except Exception as error:  # aiortc raises ValueError, KeyError, ... on bad SDP
            raise NegotiationError(
                f"cannot use this offer: {error or type(error).__name__}"
            ) from None
        audio = [track for track in tracks if track.kind == "audio"]
        if not audio:
            raise NegotiationError("the offer has no audio track (no m=audio section)")
        opus = negotiated_opus_payload_type(peer.pc)
        settings, metrics = self.settings.relay, self.ctx.metrics
        stream = Stream(
            stream_id=f"stream_{self.connection_id}",
            sender_id=self.connection_id,
            source=audio[0],
            frames=Fanout(settings.queue_frames, metrics),
            packets=Fanout(settings.queue_frames, metrics) if settings.mode == "forward" else None,
            cancel_sender=media_scope.cancel,
        )
        # Tap before the answer leaves, so that no packet arrives untapped.
        tap_receiver(audio_receiver(peer.pc, audio[0]), self._ingress(stream, peer, opus))
        return stream

    def _ingress(self, stream: Stream, peer: Peer, opus: int) -> RtpCallback:
        """Per packet from the sender: liveness, counters, and (forward) the fan-out."""
        metrics = self.ctx.metrics
        packets = stream.packets
        packetizer = OpusPacketizer()

        def on_packet(rtp: RtpPacket, arrival: float) -> None:
            if rtp.payload_type != opus or not rtp.payload:
                metrics.count_drop("not_opus")
                return
            # `arrival` is time.monotonic(), the clock anyio.current_time() reads on asyncio.
            stream.last_audio_at = peer.last_heard = arrival
            metrics.record_ingress(len(rtp.payload))
            if packets is not None and packets.subscriber_count:
                # No av.Packet for nobody; the packetizer unwraps from the last packet it saw.
                packets.publish(packetizer.packet(rtp), arrival)

        return on_packet

    async def _serve_stream(self, peer: Peer, stream: Stream) -> None:
        metrics = self.ctx.metrics

        def on_frame(frame: Media) -> None:
            # The one decode per stream (aiortc's decoder thread): it drains the track and
            # feeds visualization, and, in transcode mode, every receiver.
            metrics.audio_frames += 1
            stream.frames.publish(frame)

        async def drain() -> None:
            await pump(stream.source, on_frame)
            stream.end("track ended")
            self.log.warning("stale_stream_cleanup", reason="track ended")

        async def ice_watch() -> None:
            await peer.failed.wait()
            stream.end(f"sender {peer.failure}")
            self.log.warning("stale_stream_cleanup", reason=peer.failure)

        async with anyio.create_task_group() as tg:
            tg.start_soon(drain)
            tg.start_soon(ice_watch)
            if self.settings.visualization.enabled:
                tg.start_soon(self._visualize, stream)
            await stream.ended.wait()
            tg.cancel_scope.cancel()

    async def _visualize(self, stream: Stream) -> None:
        track = stream.frames.subscribe()
        self.log.info("visualization_started")
        tap = EveryNth(self.settings.visualization.downsample)
        try:
            while True:
                frame = await track.recv()
                if not tap() or not isinstance(frame, AudioFrame):
                    continue
                rms, peak = levels(frame.to_ndarray())
                text = p.encode(
                    p.Visualization(
                        stream_id=stream.stream_id,
                        rms=rms if math.isfinite(rms) else -100.0,
                        peak=peak,
                    )
                )
                self.notify(text)
                for notify in list(stream.receivers.values()):
                    notify(text)
        except MediaStreamError:
            pass  # the relay closed: the stream is over
        finally:
            stream.frames.unsubscribe(track)

    # Receiver --------------------------------------------------------------------------------
    async def _run_receiver(self, stream: Stream, *, task_status: TaskStatus[None]) -> None:
        log = self.log = self.log.bind(role="receiver", stream_id=stream.stream_id)
        self.info.role = "receiver"
        ended_by_stream = False
        try:
            with anyio.CancelScope() as media_scope:
                self._media_scope = media_scope
                limit = self.settings.streams.max_receivers
                if len(stream.receivers) >= limit:
                    raise LimitError(
                        f"{stream.stream_id} already has {len(stream.receivers)} receivers "
                        f"(limit {limit}, streams.max_receivers)"
                    )
                async with open_peer(self.settings, self.ctx.metrics.live, log) as peer:
                    self._peer = peer
                    source = stream.receiver_source
                    track = source.subscribe()
                    stream.receivers[self.connection_id] = self.notify
                    log.info("relay_subscribe", receivers=len(stream.receivers))
                    try:
                        peer.pc.addTrack(track)
                        try:
                            await peer.pc.setLocalDescription(await peer.pc.createOffer())
                        except NoFreeMediaPort as error:
                            raise MediaUnavailable(str(error.strerror or error)) from None
                        await self._send(
                            p.Offer(sdp=peer.pc.localDescription.sdp, stream_id=stream.stream_id)
                        )
                        log.info("receiver_offer_sent")
                        task_status.started()
                        if not await self._accept_answer(peer):
                            return
                        await _wait_any(stream.ended.wait, peer.failed.wait)
                        if stream.ended.is_set():
                            ended_by_stream = True
                        else:
                            await self._send(
                                p.Error(
                                    message=f"media {peer.failure}; "
                                    "send start_receiving to try again"
                                )
                            )
                    finally:
                        stream.receivers.pop(self.connection_id, None)
                        source.unsubscribe(track)
                        log.info("relay_unsubscribe")
        finally:
            self._media_finished()
        if ended_by_stream:
            await self._send(p.StreamEnded(stream_id=stream.stream_id, reason=stream.end_reason))

    async def _accept_answer(self, peer: Peer) -> bool:
        timeout = self.settings.webrtc.negotiation_timeout
        with anyio.move_on_after(timeout):
            answer = await self._answers_receive.receive()
            try:
                await peer.pc.setRemoteDescription(
                    RTCSessionDescription(sdp=answer.sdp, type="answer")
                )
            except Exception as error:
                self._report(NegotiationError(f"cannot use this answer: {error}"))
                return False
            return True
        self._report(NegotiationError(f"no answer to the offer within {timeout:g} s"))
        return False

    def _report(self, error: RelayError) -> None:
        """An error after negotiation: tell the client, end the media, keep the session."""
        self.ctx.metrics.count_error(error.kind)
        self.log.info("client_error", kind=error.kind, error=error.message)
        self.notify(p.encode(p.Error(message=error.message)))
