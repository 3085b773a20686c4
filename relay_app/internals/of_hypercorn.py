"""Hypercorn 0.18.0 (and its wsproto and h11): the WebSocket stream it serves every WebSocket
with, the permessage-deflate extension it accepts, the HTTP/1.1 protocol's wait between a
request and the next one, and the TCP transport under a response.

Hypercorn has no setting for any of these, so each is replaced or reached where Hypercorn
looks it up: `WSStream` in its h11 and h2 protocol modules, `PerMessageDeflate` in its
`ws_stream` module, `H11Protocol` in its `protocol` package, and a response's transport
through the bound methods its ASGI `send` is made of. server/websocket.py and
server/connection.py say what the relay wants of them.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import h11
import hypercorn.protocol as hypercorn_protocol
from hypercorn.events import Closed, Updated
from hypercorn.protocol import h2 as hypercorn_h2
from hypercorn.protocol import h11 as hypercorn_h11
from hypercorn.protocol import ws_stream as hypercorn_ws_stream
from hypercorn.protocol.events import Body, Data, EndBody, Event, StreamClosed
from hypercorn.protocol.h11 import STREAM_ID, H11Protocol
from hypercorn.protocol.ws_stream import ASGIWebsocketState, FrameTooLargeError, WSStream
from wsproto.connection import ConnectionState
from wsproto.events import CloseConnection, Message, Ping
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason

from ..core.logs import get_logger

log = get_logger("relay_app.app")


class BoundedWSStream(WSStream):
    """Hypercorn's WebSocket stream, taking nothing in once it has said goodbye.

    Hypercorn 0.18 answers a message over `websocket_max_message_size` with close 1009 and
    then keeps the message's buffer, never clears it, and appends to it all the client sends
    afterwards, with the TCP connection open and the app never told: a client that ignores
    the close and sends 50 x 1 MiB grew the server by 52 MB. After the app's own close (a
    session ended for flooding or not reading), every further frame still went up to it.

    Here, once the server has sent its close frame (the app's, or 1009), frames are parsed
    only to find the client's answer; the rest is dropped as it is read, a chunk at a time,
    with a pause (`after_close_read_pause`) after each so that a client that floods on is
    held back by TCP. The connection closes when the client answers, at the first chunk read
    after `close_answer_timeout`, or when the handler returns (a client that went quiet). A
    1009 tells the app at once, so the session ends with it. The app learns of the end
    without waiting on its queue: a client that is let go has its unread frames dropped.
    Overrides Hypercorn's `handle`, `app_send` and its private `_handle_events` loop.
    """

    # Set by `bound_websocket_streams`: the largest message taken in (bytes) when below
    # Hypercorn's websocket_max_message_size, and the two timings above (seconds).
    max_message_size: int | None = None
    close_answer_timeout = 2.0
    after_close_read_pause = 0.01

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.max_message_size is not None:
            self.buffer.max_length = min(self.buffer.max_length, self.max_message_size)
        self._goodbye_at: float | None = None  # when our close frame went out
        self._app_told = False

    async def handle(self, event: Event) -> None:
        if self.closed:
            return
        if isinstance(event, Data) and self._goodbye_at is not None:
            await self._after_goodbye(event.data)
        elif isinstance(event, StreamClosed):
            self.closed = True
            finished = self.state in {ASGIWebsocketState.HTTPCLOSED, ASGIWebsocketState.CLOSED}
            normal = CloseReason.NORMAL_CLOSURE if finished else CloseReason.ABNORMAL_CLOSURE
            await self._tell_app(normal.value)
        else:
            await super().handle(event)

    async def app_send(self, message: Any) -> None:
        await super().app_send(message)
        closed = self.state is ASGIWebsocketState.CLOSED
        if message is not None and closed and self._goodbye_at is None:
            self._goodbye_at = self.context.time()

    async def _handle_events(self) -> None:
        # Hypercorn's own loop, but a message too big is dropped (not kept and added to),
        # and after our close frame only the client's answer counts.
        for event in self.connection.events():
            if isinstance(event, CloseConnection):
                if self.connection.state == ConnectionState.REMOTE_CLOSING:
                    await self._send_wsproto_event(event.response())
                await self.send(StreamClosed(stream_id=self.stream_id))
                return
            if self._goodbye_at is not None:
                continue  # (dropped unread)
            if isinstance(event, Message):
                try:
                    self.buffer.extend(event)
                except FrameTooLargeError:
                    self.buffer.clear()
                    remote = self.client[0] if self.client else None
                    limit = self.buffer.max_length
                    log.info("websocket_message_too_big", remote=remote, limit=limit)
                    await self._send_wsproto_event(
                        CloseConnection(code=CloseReason.MESSAGE_TOO_BIG)
                    )
                    self._goodbye_at = self.context.time()
                    await self._tell_app(CloseReason.MESSAGE_TOO_BIG.value)
                    continue
                if event.message_finished:
                    assert self.app_put is not None
                    await self.app_put(self.buffer.to_message())
                    self.buffer.clear()
            elif isinstance(event, Ping):
                await self._send_wsproto_event(event.response())

    async def _after_goodbye(self, data: bytes) -> None:
        assert self._goodbye_at is not None
        if self.context.time() - self._goodbye_at > self.close_answer_timeout:
            await self.send(StreamClosed(stream_id=self.stream_id))
            return
        self.connection.receive_data(data)
        await self._handle_events()
        if not self.closed:
            await self.context.sleep(self.after_close_read_pause)

    async def _tell_app(self, code: int) -> None:
        """Queue the disconnect for the app, once, without waiting on a full queue."""
        if self.app_put is None or self._app_told:
            return
        self._app_told = True
        message = {"type": "websocket.disconnect", "code": code}
        queue = getattr(self.app_put, "__self__", None)  # (Hypercorn's asyncio queue)
        if not isinstance(queue, asyncio.Queue):
            await self.app_put(message)
            return
        while queue.full():
            queue.get_nowait()  # (frames of a client that is being let go)
        queue.put_nowait(message)


def bound_websocket_streams(
    max_message_size: int | None, close_answer_timeout: float, after_close_read_pause: float
) -> None:
    """Serve WebSockets (HTTP/1.1, and HTTP/2's RFC 8441 ones) with `BoundedWSStream`: its
    protocols look `WSStream` up in their modules when a WebSocket opens."""
    BoundedWSStream.max_message_size = max_message_size
    BoundedWSStream.close_answer_timeout = close_answer_timeout
    BoundedWSStream.after_close_read_pause = after_close_read_pause
    setattr(hypercorn_h11, "WSStream", BoundedWSStream)  # noqa: B010
    setattr(hypercorn_h2, "WSStream", BoundedWSStream)  # noqa: B010


def websocket_streams_bounded() -> bool:
    return hypercorn_h11.WSStream is BoundedWSStream and hypercorn_h2.WSStream is BoundedWSStream


class _DeclineDeflate(PerMessageDeflate):
    """permessage-deflate, always declined."""

    def accept(self, offer: str) -> None:
        return None


def decline_permessage_deflate() -> None:
    """Replace the extension Hypercorn's WSStream offers to accept (it takes whatever a
    client asks, and browsers ask for deflate) by one that declines."""
    setattr(hypercorn_ws_stream, "PerMessageDeflate", _DeclineDeflate)  # noqa: B010


def connection_transport(send: Any) -> Any:
    """The asyncio transport of the connection an ASGI `send` writes to, or None.

    Hypercorn's `send` for an HTTP request is `HTTPStream.app_send`; the stream writes
    through its protocol's `stream_send` (H11Protocol or H2Protocol), which writes through
    `TCPServer.protocol_send`, which owns the `StreamWriter` and so the transport.
    """
    try:
        protocol = send.__self__.send.__self__
        server = protocol.send.__self__
        transport = server.writer.transport
    except AttributeError:
        return None
    return transport if callable(getattr(transport, "abort", None)) else None


MAX_RECV = 2**16  # what Hypercorn's asyncio read loop reads at a time (tcp_server.MAX_RECV)


class WatchfulH11Protocol(H11Protocol):
    """Hypercorn's HTTP/1.1 protocol, still reading its connection while a response is under
    way and the client has already sent more, so that a client that hangs up then is seen.

    After a request, h11 holds whatever the client sends next (a pipelined request, even a
    stray CRLF) until the response ends, and Hypercorn 0.18 waits for that end inside the
    connection's read loop (`can_read`): nothing more is read, so neither the client's end
    of file nor a reset is noticed and the app is never sent `http.disconnect`; only a failed
    write tells. A response that writes nothing for minutes (an Ogg listener while its
    channel has no speaker) then outlived its client until the next page.

    Here that wait reads on: what comes is handed to h11 to hold, as it would have been
    after the response (`h11_max_incomplete_size` at most; past it reading stops and the
    wait is Hypercorn's own, TCP holding the client back), and the client's end of file or
    a read error ends the wait: Hypercorn's read loop then finds the same end and tells the
    app as it always does. Overrides Hypercorn's private `_handle_events` loop, which is
    Hypercorn's own but for that wait.
    """

    async def _handle_events(self) -> None:
        while True:
            if self.connection.they_are_waiting_for_100_continue:
                await self._send_h11_event(
                    h11.InformationalResponse(
                        status_code=100, headers=self.config.response_headers("h11")
                    )
                )

            try:
                event = self.connection.next_event()
            except h11.RemoteProtocolError as error:
                if self.connection.our_state in {h11.IDLE, h11.SEND_RESPONSE}:
                    await self._send_error_response(error.error_status_hint)
                await self.send(Closed())
                break
            else:
                if isinstance(event, h11.Request):
                    await self.send(Updated(idle=False))
                    await self._check_protocol(event)
                    await self._create_stream(event)
                elif event is h11.PAUSED:
                    await self.can_read.clear()
                    if not await self._wait_reading_on():
                        break  # the client left: the read loop finds its end next
                elif (
                    isinstance(event, h11.ConnectionClosed)
                    or event is h11.NEED_DATA
                    or self.stream is None
                ):
                    break
                elif isinstance(event, h11.Data):
                    await self.stream.handle(Body(stream_id=STREAM_ID, data=event.data))
                elif isinstance(event, h11.EndOfMessage):
                    await self.stream.handle(EndBody(stream_id=STREAM_ID))
                elif isinstance(event, Data):
                    # WebSocket pass through
                    await self.stream.handle(event)

    async def _wait_reading_on(self) -> bool:
        """Wait for the response's end (True), reading on meanwhile; False if the client
        left first (its end of file or a read error, left for the read loop to find)."""
        reader = getattr(getattr(self.send, "__self__", None), "reader", None)
        if not isinstance(reader, asyncio.StreamReader):  # (not the asyncio worker's)
            await self.can_read.wait()
            return True
        left = False
        async with anyio.create_task_group() as group:

            async def read_on(scope: anyio.CancelScope) -> None:
                nonlocal left
                held = 0
                while held <= self.config.h11_max_incomplete_size:
                    try:
                        data = await reader.read(MAX_RECV)
                    except OSError:  # (a reset; SSLError and ConnectionError are OSErrors)
                        data = b""
                    if not data:
                        left = True
                        scope.cancel()
                        return
                    self.connection.receive_data(data)
                    held += len(data)

            group.start_soon(read_on, group.cancel_scope)
            await self.can_read.wait()
            group.cancel_scope.cancel()
        return not left


def watch_http11_hangups() -> None:
    """Serve HTTP/1.1 with `WatchfulH11Protocol`: Hypercorn's ProtocolWrapper looks
    `H11Protocol` up in its `protocol` package for each new connection."""
    setattr(hypercorn_protocol, "H11Protocol", WatchfulH11Protocol)  # noqa: B010


def http11_hangups_watched() -> bool:
    return hypercorn_protocol.H11Protocol is WatchfulH11Protocol
