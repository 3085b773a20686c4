"""WebSocket plumbing under Quart and Hypercorn: a bounded receive queue, a stream that takes
nothing in once it has said goodbye, and no compression.

These are changes to how the libraries treat every WebSocket, not to our protocol: made once
when the app is built (app.py), guarded by tests on the library internals they touch
(tests/scenarios/test_hardening_round4_transport.py names what Hypercorn must still have).
"""

from __future__ import annotations

import asyncio
from typing import Any

from hypercorn.protocol import h2 as hypercorn_h2
from hypercorn.protocol import h11 as hypercorn_h11
from hypercorn.protocol import ws_stream as hypercorn_ws_stream
from hypercorn.protocol.events import Data, Event, StreamClosed
from hypercorn.protocol.ws_stream import ASGIWebsocketState, FrameTooLargeError, WSStream
from quart.asgi import ASGIWebsocketConnection
from wsproto.connection import ConnectionState
from wsproto.events import CloseConnection, Message, Ping
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason

from ..core.logs import get_logger

log = get_logger("relay_app.app")

RECEIVE_QUEUE_FRAMES = 32  # incoming frames Quart holds per WebSocket (x 128 KiB at most)
# After the server's close frame: how long the client has to answer it (while it sends on,
# what it sends is dropped), and the pause after each chunk read meanwhile (Hypercorn reads
# 64 KiB at most a time: <= 6.5 MB/s, so TCP holds back a client that floods on).
CLOSE_ANSWER_TIMEOUT = 2.0
AFTER_CLOSE_READ_PAUSE = 0.01


class BoundedWebsocketConnection(ASGIWebsocketConnection):
    """Quart queues incoming frames for the handler without limit: a client that floods a
    session that is slow to read grows server memory (50 MiB sent -> +40 MB RSS). Bounded,
    a full queue makes Quart wait, Hypercorn's own bounded queue fills, its reader stops,
    and TCP holds the client back. Once the session has closed, `BoundedWSStream` passes
    nothing more to the app (the `/ws` route only waits for the client's answer)."""

    def __init__(self, app: Any, scope: Any) -> None:
        super().__init__(app, scope)
        self.queue = asyncio.Queue(maxsize=RECEIVE_QUEUE_FRAMES)


class BoundedWSStream(WSStream):
    """Hypercorn's WebSocket stream, taking nothing in once it has said goodbye.

    Hypercorn 0.18 answers a message over `websocket_max_message_size` with close 1009 and
    then keeps the message's buffer, never clears it, and appends to it all the client sends
    afterwards, with the TCP connection open and the app never told: a client that ignores
    the close and sends 50 x 1 MiB grew the server by 52 MB. After the app's own close (a
    session ended for flooding or not reading), every further frame still went up to it.

    Here, once the server has sent its close frame (the app's, or 1009), frames are parsed
    only to find the client's answer; the rest is dropped as it is read, a chunk at a time,
    with a short pause after each so that a client that floods on is held back by TCP. The
    connection closes when the client answers, at the first chunk read after
    CLOSE_ANSWER_TIMEOUT, or when the handler returns (a client that went quiet). A 1009
    tells the app at once, so the session ends with it. The app learns of the end without
    waiting on its queue: a client that is let go has its unread frames dropped instead.
    """

    # The largest message taken in (bytes), when below Hypercorn's websocket_max_message_size:
    # hypercorn.toml can say anything, the app's limit holds (asgi.py sets it).
    max_message_size: int | None = None

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
        if self.context.time() - self._goodbye_at > CLOSE_ANSWER_TIMEOUT:
            await self.send(StreamClosed(stream_id=self.stream_id))
            return
        self.connection.receive_data(data)
        await self._handle_events()
        if not self.closed:
            await self.context.sleep(AFTER_CLOSE_READ_PAUSE)

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


def bound_websocket_streams(max_message_size: int | None = None) -> None:
    """Serve WebSockets (HTTP/1.1, and HTTP/2's RFC 8441 ones) with `BoundedWSStream`, taking
    messages of at most `max_message_size` bytes (also capped by Hypercorn's own setting)."""
    BoundedWSStream.max_message_size = max_message_size
    setattr(hypercorn_h11, "WSStream", BoundedWSStream)  # noqa: B010
    setattr(hypercorn_h2, "WSStream", BoundedWSStream)  # noqa: B010


class _DeclineDeflate(PerMessageDeflate):
    """permessage-deflate, always declined.

    Browsers ask for it and Hypercorn accepts whatever is asked: every WebSocket then holds a
    zlib compressor and decompressor (~300 KB, tracemalloc in bench/slow_readers.py) and
    compresses each small JSON message. Signaling on a LAN gains nothing from it.
    """

    def accept(self, offer: str) -> None:
        return None


def decline_websocket_compression() -> None:
    """Hypercorn has no setting for it: replace the extension its WSStream offers (guarded by
    tests, like rtp_tap.py's hook into aiortc). Called where every app is built (app.py), so
    it also puts `BoundedWSStream` in place there, capped by Hypercorn's own setting."""
    setattr(hypercorn_ws_stream, "PerMessageDeflate", _DeclineDeflate)  # noqa: B010
    if hypercorn_h11.WSStream is not BoundedWSStream:
        bound_websocket_streams()
