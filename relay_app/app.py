"""create_app: the Quart app on :8080, the status app on :8081, and the ROOT task group.

ROOT is opened in the lifespan (`while_serving`), the one place a task group is held across a
`yield`; it owns the stale-stream sweeper and the stats clock. Its children log their own
errors, so one bad sweep cannot cancel it. Sessions do not live in ROOT: each runs in the task
Hypercorn gives its WebSocket, inside its own SESSION group (session.py).
"""

from __future__ import annotations

import asyncio
import ctypes
from collections.abc import AsyncGenerator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import anyio
from hypercorn.protocol import ws_stream as hypercorn_ws_stream
from quart import Quart, Response, has_request_context, jsonify, request, websocket
from quart.asgi import ASGIWebsocketConnection
from werkzeug.exceptions import HTTPException
from wsproto.extensions import PerMessageDeflate

from . import __version__
from .admin import admin_routes
from .auth import Role, verify
from .config import Settings, unreachable_limits
from .context import RelayContext
from .errors import AuthError, http_error_body
from .http_peers import HttpPeers
from .lan import listen_urls
from .limits import Pace
from .listen_http import http_listening_routes
from .logs import get_logger
from .metrics_view import health_view, metrics_json
from .origins import host_allowed, known_hosts, origin_allowed
from .prometheus import metrics_prometheus, prometheus_registry, wants_prometheus
from .qr import qr_svg
from .registry import EndCause
from .session import PeerSession
from .whip import whip_routes

STATIC = Path(__file__).parent / "static"
RECEIVE_QUEUE_FRAMES = 32  # incoming frames Quart holds per WebSocket (x 128 KiB at most)
DRAIN_FRAMES_PER_SECOND = 5000.0  # frames read from closed sessions' clients, server-wide
log = get_logger("relay_app.app")


# The web client loads only its own scripts and styles and talks only to this server.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "media-src 'self' blob: mediastream:; connect-src 'self' ws: wss:; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Permissions-Policy": "microphone=(self), camera=(), geolocation=()",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def _bearer_refusal(
    settings: Settings, authorization: str, what: str, roles: tuple[Role, ...]
) -> str | None:
    """Why a request for `what` is refused (None: allowed) when auth guards it."""
    secret = settings.auth.secret
    if secret is None or not settings.auth.protect_metrics:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return f"{what} needs Authorization: Bearer <token> (auth.protect_metrics)"
    try:
        grant = verify(secret.get_secret_value(), token.strip())
    except AuthError as error:
        return error.message
    return None if grant.role in roles else f"this token's role may not read {what}"


class BoundedWebsocketConnection(ASGIWebsocketConnection):
    """Quart queues incoming frames for the handler without limit: a client that floods a
    session that is slow to read grows server memory (50 MiB sent -> +40 MB RSS). Bounded,
    a full queue makes Quart wait, Hypercorn's own bounded queue fills, its reader stops,
    and TCP holds the client back. (After the session, `_drain_until_disconnect` keeps
    Hypercorn moving so it can finish the close.)"""

    def __init__(self, app: Any, scope: Any) -> None:
        super().__init__(app, scope)
        self.queue = asyncio.Queue(maxsize=RECEIVE_QUEUE_FRAMES)


async def _drain_until_disconnect(ws: Any, quiet: float, pace: Pace) -> None:
    """After the session has closed, read and drop what the client still sends, until it
    answers the close (Quart then cancels this) or stays quiet for `quiet` seconds.

    Why: once this handler returns nobody reads, and Hypercorn's reader blocks on its full
    queue, for good, with the TCP connection open, if the client is still sending (a flood
    that ignores the close). Returning only after a quiet spell means Hypercorn's queue is
    empty when it queues the disconnect and closes the socket. All such drains share one
    `pace` (frames a second, server-wide): a client that floods on after its close is held
    back by TCP instead of costing the event loop what it sends.
    """
    while True:
        with anyio.move_on_after(quiet) as silence:
            await ws.receive()
        if silence.cancelled_caught:
            return
        await pace.wait()


def _guard_hosts(app: Quart, settings: Settings, ctx: RelayContext) -> None:
    known = known_hosts(settings)

    async def check() -> Response | None:
        host = (request if has_request_context() else websocket).headers.get("Host", "")
        if host_allowed(host, known):
            return None
        log.warning("host_refused", host=host)
        ctx.metrics.count_error("host")
        message = f"host {host!r} is not served here (server.allowed_hosts)"
        return _json_error(403, "Forbidden", message)

    app.before_request(check)
    app.before_websocket(check)


def _json_error(code: int, name: str, message: str) -> Response:
    response = jsonify(http_error_body(code, message, name))
    response.status_code = code
    return response


def _json_errors(app: Quart) -> None:
    @app.errorhandler(HTTPException)
    async def _http_error(error: HTTPException) -> tuple[Response, int]:
        code = error.code or 500
        return jsonify(http_error_body(code, error.description or "", error.name)), code


async def sweep_stale_streams(ctx: RelayContext) -> None:
    """End streams that have carried no audio for `streams.stale_after` seconds."""
    settings = ctx.settings.streams
    while True:
        await anyio.sleep(settings.cleanup_interval)
        try:
            now = anyio.current_time()
            for stream in ctx.registry.live_streams():
                silent_for = now - stream.last_audio_at
                if silent_for > settings.stale_after:
                    log.warning(
                        "stale_stream_cleanup",
                        stream_id=stream.stream_id,
                        connection_id=stream.sender_id,
                        reason="no audio",
                        silent_seconds=round(silent_for, 1),
                    )
                    stream.end(EndCause.STALE, f"stale: no audio for {silent_for:.0f} s")
        except Exception:  # a ROOT child logs its own bugs: one bad sweep must not stop ROOT
            log.exception("stale_sweep_failed")


async def stats_clock(ctx: RelayContext, interval: float = 60.0) -> None:
    """Log the live counts once a minute: the guide's `log_stats`, built in."""
    while True:
        await anyio.sleep(interval)
        live = ctx.metrics.live.statistics()
        log.info(
            "stats",
            connections=len(ctx.registry.sessions),
            streams=len(ctx.registry.streams),
            peer_connections=live.peer_connections,
            relay_subscriptions=live.relay_subscriptions,
        )


async def trim_memory(ctx: RelayContext, interval: float) -> None:
    """Hand the heap that ended sessions freed back to the OS (glibc only).

    Why: a peer connection allocates and frees native memory (DTLS, SRTP, sockets) in the
    middle of glibc's heap, and glibc returns only the heap's top by itself. Measured under
    churn (bench/soak.py with glibc's malloc_stats): the heap's in-use bytes stay flat while its
    size grows with every few sessions; `malloc_trim` releases those free pages. But it holds
    glibc's locks while it walks the heap, so every thread that allocates (the event loop,
    decoders, transcode encoders) waits: a trim landing mid-stream was heard as a pitch error
    in a browser test. So: when no stream is live, trim a second after sessions stop ending;
    while audio flows, at most every `interval` seconds, and only if sessions ended since.
    """
    try:
        malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        log.info("memory_trim_unavailable")
        return
    metrics, registry = ctx.metrics, ctx.registry

    def ended() -> int:
        return metrics.sessions_total - metrics.live.sessions

    trimmed = seen = ended()
    last_trim = anyio.current_time()
    while True:
        await anyio.sleep(1.0)
        now, count = anyio.current_time(), ended()
        quiet, seen = count == seen, count
        due = (quiet and not registry.live_streams()) or now - last_trim >= interval
        if count != trimmed and due:
            try:
                await anyio.to_thread.run_sync(malloc_trim, 0)
            except Exception:  # a ROOT child logs its own bugs; trimming is best effort
                log.exception("memory_trim_failed")
            trimmed, last_trim = count, now


def create_app(settings: Settings, ctx: RelayContext | None = None) -> Quart:
    """The :8080 app. Each call builds its own context: no state is shared between apps."""
    ctx = ctx or RelayContext.from_settings(settings)
    app = Quart(__name__, static_folder=str(STATIC), static_url_path="/static")
    app.config["RELAY_CONTEXT"] = ctx
    app.asgi_websocket_class = BoundedWebsocketConnection
    _json_errors(app)
    _guard_hosts(app, settings, ctx)

    http_peers = HttpPeers(ctx)  # WHIP publishers and WHEP players, run in ROOT

    @app.while_serving
    async def _root() -> AsyncGenerator[None, None]:
        ctx.shutting_down = anyio.Event()
        async with anyio.create_task_group() as root:
            http_peers.serve_in(root)
            root.start_soon(sweep_stale_streams, ctx)
            if ctx.cluster is not None and ctx.upstreams is not None:
                ctx.upstreams.serve_in(root)
                root.start_soon(ctx.cluster.run)
            root.start_soon(stats_clock, ctx)
            if settings.relay.memory_trim_interval > 0:
                root.start_soon(trim_memory, ctx, settings.relay.memory_trim_interval)
            ctx.serving = True
            log.info("server_started", version=__version__)
            for old, new in settings.moved_keys:
                log.warning("config_key_moved", key=old, new_key=new, hint=f"move it to {new}")
            for problem in unreachable_limits(settings):
                log.warning("config_limit_unreachable", problem=problem)
            try:
                yield
            finally:
                ctx.serving = False
                http_peers.serve_in(None)
                ctx.shutting_down.set()
                root.cancel_scope.cancel()
        log.info("server_stopped")

    _session_route(app, settings, ctx)
    _status_routes(app, ctx)
    scrape_registry = prometheus_registry(ctx)

    @app.get("/metrics")
    async def _metrics() -> Response | tuple[Response, int]:
        authorization = request.headers.get("Authorization", "")
        refusal = _bearer_refusal(settings, authorization, "/metrics", ("metrics",))
        if refusal is not None:
            return _json_error(401, "Unauthorized", refusal), 401
        # JSON for people and jq (the guide's commands); exposition format for scrapers.
        accept = request.headers.get("Accept", "")
        if wants_prometheus(accept):
            body, content_type = metrics_prometheus(scrape_registry, accept)
            return Response(body, content_type=content_type)
        return jsonify(metrics_json(ctx)), 200

    admin_routes(app, ctx)
    whip_routes(app, ctx, http_peers)
    _web_client_routes(app, settings)
    http_listening_routes(app, ctx)  # also here: the Listen page's screen-off fallback
    return app


def _session_route(app: Quart, settings: Settings, ctx: RelayContext) -> None:
    """`/ws`: one PeerSession per WebSocket, in the task Hypercorn gives the connection."""
    drain_pace = Pace(DRAIN_FRAMES_PER_SECOND)

    @app.websocket("/ws")
    async def _ws() -> Response | None:
        remote = websocket.remote_addr or ""
        origin = websocket.headers.get("Origin")
        if not origin_allowed(origin, websocket.headers.get("Host", ""), settings):
            # Refused before the handshake completes: a page on another site cannot open it.
            log.warning("origin_refused", origin=origin, remote=remote)
            ctx.metrics.count_error("origin")
            return _json_error(
                403, "Forbidden", f"origin {origin} is not allowed (server.allowed_origins)"
            )
        ws: Any = websocket._get_current_object()  # type: ignore[attr-defined]
        token = websocket.args.get("token")
        user_agent = websocket.headers.get("User-Agent", "")
        await PeerSession(ws, ctx, remote, token=token, user_agent=user_agent).run()
        await _drain_until_disconnect(ws, settings.relay.teardown_timeout, drain_pace)
        return None


def _web_client_routes(app: Quart, settings: Settings) -> None:
    """The Speak and Listen pages, and the headers that keep them to this server."""

    @app.after_request
    async def _security_headers(response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    @app.get("/")
    async def _index() -> Response:
        return await app.send_static_file("index.html")

    @app.get("/manifest.webmanifest")  # at the root: its scope may then be the whole site
    async def _manifest() -> Response:
        response = await app.send_static_file("manifest.webmanifest")
        response.content_type = "application/manifest+json"
        return response

    @app.get("/qr.svg")
    async def _qr() -> Response:
        """The Listen page's URL as a QR code (the home page shows it): the address this
        browser used, unless that is this machine's own (localhost), then the LAN one."""
        channel = request.args.get("channel") or None
        url = _phone_url(request.host, channel, settings)
        return Response(qr_svg(url), content_type="image/svg+xml", headers={"X-Url": url})

    @app.get("/send")
    async def _send_page() -> Response:
        return await app.send_static_file("send.html")

    @app.get("/listen")
    @app.get("/listen/<channel>")  # a link to one channel: the page reads it from its path
    async def _listen_page(channel: str | None = None) -> Response:
        return await app.send_static_file("listen.html")


def _phone_url(host_header: str, channel: str | None, settings: Settings) -> str:
    host = urlsplit(f"//{host_header}").hostname or ""
    if host in ("localhost", "") or host.startswith("127.") or host == "::1":
        return listen_urls(settings, channel)[0]
    scheme = "https" if settings.server.certfile else "http"
    path = "/listen" + (f"/{quote(channel)}" if channel else "")
    return f"{scheme}://{host_header}{path}"


def stream_status(ctx: RelayContext) -> dict[str, Any]:
    streams = ctx.registry.stream_infos()
    return {
        "active_streams": [s.stream_id for s in streams],
        "streams": [s.model_dump() for s in streams],
        "channels": [c.model_dump() for c in ctx.registry.channel_infos()],
    }


def _status_routes(app: Quart, ctx: RelayContext) -> None:
    """`/health` and `/stream/status`: served on both ports (probes and the guide use both)."""

    @app.get("/health")
    async def _health() -> tuple[Response, int]:
        body, code = health_view(ctx)
        return jsonify(body), code

    @app.get("/stream/status")
    async def _status() -> Response | tuple[Response, int]:
        authorization = request.headers.get("Authorization", "")
        roles: tuple[Role, ...] = ("metrics", "receive", "both")
        refusal = _bearer_refusal(ctx.settings, authorization, "/stream/status", roles)
        if refusal is not None:
            return _json_error(401, "Unauthorized", refusal), 401
        return jsonify(stream_status(ctx))


def create_status_app(ctx: RelayContext) -> Quart:
    """The :8081 audio/status server: `/stream/status`, plus `/health` for probes."""
    app = Quart(__name__ + ".status")
    _json_errors(app)
    _guard_hosts(app, ctx.settings, ctx)
    _status_routes(app, ctx)
    http_listening_routes(app, ctx)
    return app


ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


class PortDispatcher:
    """One ASGI app for Hypercorn that serves :8080 and :8081 from the same process.

    Hypercorn serves one app on every bind, so requests are routed by the local port they
    arrived on; lifespan goes to the main app, which owns ROOT.
    """

    def __init__(self, main: Quart, status: Quart, status_ports: set[int]) -> None:
        self.main = main
        self.status = status
        self.status_ports = status_ports

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        server = scope.get("server")
        app = self.main
        if scope["type"] != "lifespan" and server and server[1] in self.status_ports:
            app = self.status
        await app(scope, receive, send)  # type: ignore[arg-type]


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
    tests/test_hardening.py, like rtp_tap.py's hook into aiortc)."""
    setattr(hypercorn_ws_stream, "PerMessageDeflate", _DeclineDeflate)  # noqa: B010


def create_asgi_app(settings: Settings) -> PortDispatcher:
    decline_websocket_compression()
    ctx = RelayContext.from_settings(settings)
    main = create_app(settings, ctx)
    return PortDispatcher(main, create_status_app(ctx), {settings.server.audio_port})
