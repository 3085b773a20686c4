"""`GET :8081/stream/<stream_id>.ogg`: a live stream as plain HTTP Ogg/Opus, for players
without WebRTC (VLC, ffplay, mpv, a media box, `ffmpeg -i URL out.opus`).

The response is one listener of the stream's shared pages (http_audio.py), a session with its
own task group (`OggListener`): a client that leaves, a stream that ends, a listener dropped
as too slow or a token that expires each end it, and everything it held is released when
its body's `async with` exits. `latest.ogg` is whichever stream is newest when the request
arrives, so a player can keep one URL and simply reconnect after a stream ends. In cluster
mode a stream on another node is heard through this node's upstream of it (streams/finder.py,
the lookup every door shares), as a /ws receiver hears it. A channel's
listener stays on: the channel's next sender goes on in the same logical Ogg stream
(http_audio.ChannelPages), until the channel has been empty for
streams.channel_wait_timeout. streams.max_http_listeners counts a channel's listeners
across its senders (the registry holds the count).
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any

import anyio
from anyio.abc import TaskGroup
from quart import Quart, Response, request
from quart.wrappers.response import ResponseBody

from ..audio.http_audio import ChannelPages, Listener, own_page
from ..core.auth import Grant, watch_expiry
from ..core.errors import AuthError, CapacityError, LimitError, NoStreamError
from ..core.logs import get_logger
from ..core.protocol import NO_STREAM_MESSAGE
from ..streams.context import RelayContext
from ..streams.finder import next_on_channel, stream_to_play
from ..streams.stream import SessionInfo, Stream
from .guard import LISTEN, Entry, Guard

LATEST = "latest"
ABORT = "relay_app.abort"  # the ASGI scope key of a request's Abort (server/dispatch.py)
log = get_logger("relay_app.listen")


class Abort:
    """Ends an HTTP response from the server's side, even while a write to a client that
    stopped reading is stuck: the request's `receive` then reports a disconnect, so Quart
    cancels the handler (as when a client leaves), and the connection is cut at once.

    Cut, not closed (`cut`, given by the server: server/connection.py): Hypercorn closes a
    connection by flushing what it has buffered first, which for a client that keeps its
    window shut is never (the kernel cuts it only after server.dead_peer_timeout)."""

    def __init__(self, cut: Callable[[], bool] | None = None) -> None:
        self.requested = False
        self._waiting: anyio.CancelScope | None = None
        self._cut = cut  # resets the connection; False when it cannot (server/connection.py)

    def __call__(self) -> None:
        if self.requested:
            return
        self.requested = True
        if self._waiting is not None:
            self._waiting.cancel()
        if self._cut is not None and not self._cut():
            log.warning("connection_abort_unavailable")

    def wrap(self, receive: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[Any]]:
        async def receive_or_abort() -> Any:
            if not self.requested:
                with anyio.CancelScope() as self._waiting:
                    return await receive()
            return {"type": "http.disconnect"}

        return receive_or_abort


def listen_routes(app: Quart, ctx: RelayContext, guard: Guard) -> None:
    registry = ctx.registry

    @app.get("/stream/<stream_id>.ogg")
    @guard.door(LISTEN)
    async def _ogg(entry: Entry, stream_id: str) -> Response:
        wanted = None if stream_id == LATEST else stream_id
        if entry.grant is not None:  # a scoped token's "latest" is its own stream
            wanted = entry.grant.check_receiving(wanted)
        assert entry.info is not None
        listener_log = get_logger(
            connection_id=entry.info.connection_id, role="http_listener", remote=entry.remote
        )
        stream = await stream_to_play(ctx, wanted, listener_log)  # (another node's too)
        if stream.outputs.http is None:
            raise NoStreamError(f"{NO_STREAM_MESSAGE} ({stream.stream_id} has no Ogg pages)")
        registry.check_http_listener(stream.stream_id)  # 503 (streams.max_http_listeners)
        listener_log = listener_log.bind(stream_id=stream.stream_id)
        found = request.scope.get(ABORT)  # (only under the port dispatcher)
        abort = found if isinstance(found, Abort) else None
        body = OggListener(ctx, stream, entry.info, entry.grant, listener_log, abort)
        response = Response(body, content_type="audio/ogg")
        response.headers["Cache-Control"] = "no-store"
        # Web players on the main port (or anywhere) may analyse it with WebAudio.
        response.headers["Access-Control-Allow-Origin"] = "*"
        response.timeout = None  # a live stream has no end time (Quart's default is 60 s)
        return response


class OggListener(ResponseBody):
    """One Ogg listener's session: the response body, run in a task group of its own.

    Quart sends a body as `async with body as pages: async for page in pages: send(page)`,
    so the group opened by `__aenter__` spans the whole response, its writes included: the
    expiry watch (core/auth.watch_expiry, the rule /ws and WHEP share) runs in it beside the
    pages. From its first page to its end it holds a session slot (the guard admitted it and
    released its pending slot when the handler returned: a body that never starts holds
    nothing) and a place among its stream's, a channel's, HTTP listeners."""

    def __init__(
        self,
        ctx: RelayContext,
        stream: Stream,
        info: SessionInfo,
        grant: Grant | None,
        log: Any,
        abort: Abort | None,
    ) -> None:
        self.ctx = ctx
        self.stream = stream
        self.info = info
        self.grant = grant  # (None with auth off)
        self.log = log
        self.abort = abort
        self._place = stream.stream_id  # (a channel's name: the same for each next sender)
        self._group: TaskGroup | None = None
        self._pages: AsyncGenerator[bytes] | None = None
        self._listener: Listener | None = None  # in the current sender's fan-out

    async def __aenter__(self) -> AsyncGenerator[bytes]:
        registry, connection_id = self.ctx.registry, self.info.connection_id
        try:
            registry.open_session(self.info)
            registry.add_http_listener(self._place, connection_id)
        except (CapacityError, LimitError) as error:
            self.log.info("connection_refused", kind=error.kind, error=error.message)
            self._pages = _nothing()
            return self._pages
        self._group = group = anyio.create_task_group()
        await group.__aenter__()
        metrics, grant = self.ctx.metrics, lambda: self.grant
        metrics.live.session_task_groups += 1
        group.start_soon(watch_expiry, "ogg", grant, self._expired, metrics, lambda: self.log)
        self.info.kick = lambda farewell: self._end(f"{farewell.reason} by the operator")
        self._pages = self._all_pages()
        return self._pages

    # (Quart types it `-> None`; True says the group's own cancellation, the watch's, ended
    # the response: Quart then finishes it as usual.)
    async def __aexit__(  # type: ignore[override]
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        try:
            if self._pages is not None:  # (out of its fan-out, if a write was what stopped)
                with anyio.move_on_after(self.ctx.settings.relay.teardown_timeout, shield=True):
                    await self._pages.aclose()
            if self._group is None:
                return None
            self._group.cancel_scope.cancel()  # the pages are done: so is the watch
            try:
                return await self._group.__aexit__(kind, error, tb)
            finally:
                self.ctx.metrics.live.session_task_groups -= 1
        finally:
            self.ctx.registry.remove_http_listener(self._place, self.info.connection_id)
            self.ctx.registry.close_session(self.info.connection_id)

    def _expired(self, error: AuthError) -> None:
        """Its token expired (watch_expiry counted and logged it)."""
        self._end("token expired")

    def _end(self, reason: str) -> None:
        """Out of the fan-out, and the response ends at once wherever it waits (a stuck
        write too: `abort`): its token expired, or the operator disconnected it."""
        http = self.stream.outputs.http
        if self._listener is not None and http is not None:
            http.drop(self._listener, reason)
        if self.abort is not None:
            self.abort()
        elif self._group is not None:
            self._group.cancel_scope.cancel()

    async def _all_pages(self) -> AsyncGenerator[bytes]:
        """A stream's pages; a channel's, across its senders, as one logical stream."""
        if self.stream.channel is None:
            async for data in self._one_stream(own_page, headers=True):
                yield data
            return
        pages, channel, first = ChannelPages(), self.stream.channel, True
        while True:
            assert self.stream.outputs.http is not None
            pages.follow(self.stream.outputs.http)

            def renumber(_: Listener, page: bytes) -> bytes | None:
                return pages.page(page)

            async for data in self._one_stream(renumber, headers=first):
                yield data
            first = False
            if not self.stream.ended.is_set() or (self.abort is not None and self.abort.requested):
                return  # the client left, or was dropped: not a handover
            with anyio.move_on_after(self.ctx.settings.streams.channel_wait_timeout):
                self.stream = await next_on_channel(self.ctx, channel)
                self.log = self.log.bind(stream_id=self.stream.stream_id)
                self.log.info("http_listener_followed", channel=channel)
                continue
            yield pages.last()  # nobody spoke for channel_wait_timeout: the end
            return

    async def _one_stream(
        self, own: Callable[[Listener, bytes], bytes | None], headers: bool
    ) -> AsyncIterator[bytes]:
        """One sender's pages to this listener (the headers first, if nothing was sent yet),
        each as `own` makes it this listener's (None: nothing for it)."""
        http, metrics = self.stream.outputs.http, self.ctx.metrics
        assert http is not None
        async with http.listen(self.log, self.abort) as listener:  # logs its start and end
            self._listener = listener
            if headers:
                yield listener.headers
            async for shared, arrival in listener.pages:
                page = own(listener, shared)
                if page is None:
                    continue
                yield page
                metrics.http_page_latency.observe(time.monotonic() - arrival)
                listener.sent_bytes += len(page)
                metrics.http_sent_bytes += len(page)
        self._listener = None


async def _nothing() -> AsyncGenerator[bytes]:
    """The body of a listener refused as its first page was due (a full server or stream)."""
    return
    yield
