"""`GET :8081/stream/<stream_id>.ogg`: a live stream as plain HTTP Ogg/Opus, for players
without WebRTC (VLC, ffplay, mpv, a media box, `ffmpeg -i URL out.opus`).

The response is one listener of the stream's shared pages (http_audio.py): its lifetime is
this request's, so a client that leaves, a stream that ends, or a listener dropped as too slow
each end it, and the listener is unregistered when the body's `async with` exits.
`latest.ogg` is whichever stream is newest when the request arrives, so a player can keep one
URL and simply reconnect after a stream ends.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from quart import Quart, Response, jsonify, request

from .auth import verify
from .context import RelayContext
from .errors import AuthError, NoStreamError, http_error_body
from .logs import get_logger
from .protocol import NO_STREAM_MESSAGE
from .registry import Stream

LATEST = "latest"


def http_listening_routes(app: Quart, ctx: RelayContext) -> None:
    settings, metrics = ctx.settings, ctx.metrics

    @app.get("/stream/<stream_id>.ogg")
    async def _ogg(stream_id: str) -> Response | tuple[Response, int]:
        wanted = None if stream_id == LATEST else stream_id
        try:
            _check_token(ctx, wanted)
        except AuthError as error:
            return _error(401, error.message)
        try:
            stream = ctx.registry.find_stream(wanted)
        except NoStreamError as error:
            return _error(404, error.message)
        http = stream.http
        if stream.ended.is_set() or http is None:
            return _error(404, f"{NO_STREAM_MESSAGE} ({stream.stream_id} has ended)")
        limit = settings.streams.max_http_listeners
        if len(http.listeners) >= limit:
            message = f"{stream.stream_id} already has {limit} HTTP listeners"
            return _error(503, f"{message} (streams.max_http_listeners)")
        log = get_logger(
            stream_id=stream.stream_id, remote=request.remote_addr or "", role="http_listener"
        )
        response = Response(_pages(stream, log), content_type="audio/ogg")
        response.headers["Cache-Control"] = "no-store"
        # Web players on the main port (or anywhere) may analyse it with WebAudio.
        response.headers["Access-Control-Allow-Origin"] = "*"
        response.timeout = None  # a live stream has no end time (Quart's default is 60 s)
        return response

    async def _pages(stream: Stream, log: Any) -> AsyncIterator[bytes]:
        assert stream.http is not None
        async with stream.http.listen(log) as listener:  # logs its start and its end
            yield listener.headers
            async for page, arrival in listener.pages:
                yield page
                metrics.http_page_latency.observe(time.monotonic() - arrival)
                listener.sent_bytes += len(page)
                metrics.http_sent_bytes += len(page)


def _check_token(ctx: RelayContext, stream_id: str | None) -> None:
    """With auth.secret set, a receive token (`?token=` or Bearer) scoped as for /ws."""
    secret = ctx.settings.auth.secret
    if secret is None:
        return
    scheme, _, bearer = request.headers.get("Authorization", "").partition(" ")
    token = request.args.get("token") or (bearer.strip() if scheme.lower() == "bearer" else "")
    if not token:
        raise AuthError("listening needs a receive token: ?token=... or Authorization: Bearer")
    verify(secret.get_secret_value(), token).check_receiving(stream_id)


def _error(status: int, message: str) -> tuple[Response, int]:
    return jsonify(http_error_body(status, message)), status
