"""`GET :8081/stream/<stream_id>.ogg`: a live stream as plain HTTP Ogg/Opus, for players
without WebRTC (VLC, ffplay, mpv, a media box, `ffmpeg -i URL out.opus`).

The response is one listener of the stream's shared pages (http_audio.py): its lifetime is
this request's, so a client that leaves, a stream that ends, or a listener dropped as too slow
each end it, and the listener is unregistered when the body's `async with` exits.
`latest.ogg` is whichever stream is newest when the request arrives, so a player can keep one
URL and simply reconnect after a stream ends. A channel's listener stays on: the channel's next
sender goes on in the same logical Ogg stream (http_audio.ChannelPages), until the channel has
been empty for streams.channel_wait_timeout.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
from quart import Quart, Response, request

from ..audio.http_audio import ChannelPages, Listener, own_page
from ..core.errors import CapacityError, LimitError, NoStreamError
from ..core.logs import get_logger
from ..core.metrics import Metrics
from ..core.protocol import NO_STREAM_MESSAGE
from ..streams.context import RelayContext
from ..streams.finder import next_on_channel
from ..streams.stream import SessionInfo, Stream
from .guard import LISTEN, Entry, Guard

LATEST = "latest"
ABORT = "relay_app.abort"  # the ASGI scope key of a request's Abort (server/dispatch.py)


class Abort:
    """Ends an HTTP response from the server's side, even while a write to a client that
    stopped reading is stuck: the request's `receive` then reports a disconnect, so Quart
    cancels the handler (as when a client leaves) and Hypercorn closes the connection."""

    def __init__(self) -> None:
        self.requested = False
        self._waiting: anyio.CancelScope | None = None

    def __call__(self) -> None:
        self.requested = True
        if self._waiting is not None:
            self._waiting.cancel()

    def wrap(self, receive: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[Any]]:
        async def receive_or_abort() -> Any:
            if not self.requested:
                with anyio.CancelScope() as self._waiting:
                    return await receive()
            return {"type": "http.disconnect"}

        return receive_or_abort


def listen_routes(app: Quart, ctx: RelayContext, guard: Guard) -> None:
    settings, registry = ctx.settings, ctx.registry

    @app.get("/stream/<stream_id>.ogg")
    @guard.door(LISTEN)
    async def _ogg(entry: Entry, stream_id: str) -> Response:
        wanted = None if stream_id == LATEST else stream_id
        if entry.grant is not None:  # a scoped token's "latest" is its own stream
            wanted = entry.grant.check_receiving(wanted)
        stream = registry.find_stream(wanted)
        http = stream.http
        if stream.ended.is_set() or http is None:
            raise NoStreamError(f"{NO_STREAM_MESSAGE} ({stream.stream_id} has ended)")
        limit = settings.streams.max_http_listeners
        if len(http.listeners) >= limit:
            message = f"{stream.stream_id} already has {limit} HTTP listeners"
            raise LimitError(f"{message} (streams.max_http_listeners)")
        assert entry.info is not None
        log = get_logger(stream_id=stream.stream_id, remote=entry.remote, role="http_listener")
        found = request.scope.get(ABORT)  # (only under the port dispatcher)
        abort = found if isinstance(found, Abort) else None
        response = Response(_pages(ctx, stream, entry.info, log, abort), content_type="audio/ogg")
        response.headers["Cache-Control"] = "no-store"
        # Web players on the main port (or anywhere) may analyse it with WebAudio.
        response.headers["Access-Control-Allow-Origin"] = "*"
        response.timeout = None  # a live stream has no end time (Quart's default is 60 s)
        return response


async def _pages(
    ctx: RelayContext, stream: Stream, info: SessionInfo, log: Any, abort: Abort | None
) -> AsyncIterator[bytes]:
    """The response body: a session from its first page to its last. (The guard admitted
    it and released its pending slot when the handler returned; a body that never
    starts holds nothing.)"""
    assert stream.http is not None
    registry, metrics = ctx.registry, ctx.metrics
    try:
        registry.open_session(info)
    except CapacityError as error:
        log.info("connection_refused", kind=error.kind, error=error.message)
        return
    try:
        if stream.channel is None:
            async for data in _one_stream(metrics, stream, log, abort, own_page, headers=True):
                yield data
            return
        # A channel: one logical stream across its senders, while the client listens.
        pages, channel, first = ChannelPages(), stream.channel, True
        while True:
            assert stream.http is not None
            pages.follow(stream.http)
            async for data in _one_stream(
                metrics, stream, log, abort, lambda _, page: pages.page(page), headers=first
            ):
                yield data
            first = False
            if not stream.ended.is_set() or (abort is not None and abort.requested):
                return  # the client left, or was dropped as too slow: not a handover
            with anyio.move_on_after(ctx.settings.streams.channel_wait_timeout):
                stream = await next_on_channel(ctx, channel)
                log = log.bind(stream_id=stream.stream_id)
                log.info("http_listener_followed", channel=channel)
                continue
            yield pages.last()  # nobody spoke for channel_wait_timeout: the end
            return
    finally:
        registry.close_session(info.connection_id)


async def _one_stream(
    metrics: Metrics,
    stream: Stream,
    log: Any,
    abort: Abort | None,
    own: Callable[[Listener, bytes], bytes],
    headers: bool,
) -> AsyncIterator[bytes]:
    """One sender's pages to this listener (the headers first, if nothing was sent yet)."""
    assert stream.http is not None
    async with stream.http.listen(log, abort) as listener:  # logs its start and its end
        if headers:
            yield listener.headers
        async for shared, arrival in listener.pages:
            page = own(listener, shared)
            yield page
            metrics.http_page_latency.observe(time.monotonic() - arrival)
            listener.sent_bytes += len(page)
            metrics.http_sent_bytes += len(page)
