"""create_app: the Quart app on :8080, the status app on :8081, and what both share.

Every route is one of the endpoints' and goes through the one guard (endpoints/guard.py);
ROOT is opened in the lifespan (lifespan.py). A cluster node is wired here and only here
(cluster/attach.py), so a single node never imports the cluster package or Redis.
"""

from __future__ import annotations

from quart import Quart

from ..core.config import Settings
from ..endpoints.admin import admin_routes
from ..endpoints.guard import Guard
from ..endpoints.listen import listen_routes
from ..endpoints.status import metrics_route, status_routes
from ..endpoints.websocket import websocket_route
from ..endpoints.whip import whip_routes
from ..signaling.http_peers import HttpPeers
from ..streams.context import RelayContext
from ..webrtc.udp_mux import UdpMux
from .connection import watch_hangups
from .dispatch import PortDispatcher
from .lifespan import serve_root
from .pages import page_routes
from .websocket import BoundedWebsocketConnection, decline_websocket_compression

MAX_JSON_BODY = 64 * 1024  # an admin call's body


def build_context(settings: Settings) -> RelayContext:
    """The context one server's apps share; a cluster node's when cluster.redis_url is set."""
    ctx = RelayContext.from_settings(settings)
    webrtc = settings.webrtc
    if webrtc.udp_port is not None:  # (opened when the server starts serving: lifespan.py)
        ctx.reads.mux = UdpMux(webrtc.ice_addresses, webrtc.udp_port)
    if settings.cluster.redis_url is not None:
        from ..cluster.attach import attach_cluster  # (redis is imported only by a node)

        attach_cluster(ctx)
    return ctx


def create_app(settings: Settings, ctx: RelayContext | None = None) -> Quart:
    """The :8080 app. Each call builds its own context: no state is shared between apps."""
    ctx = ctx or build_context(settings)
    guard = Guard(ctx)
    app = Quart(__name__, static_folder=None)  # static files are a guarded page route
    app.config["RELAY_CONTEXT"] = ctx
    # No request here carries more than an SDP offer or a small JSON body: Quart refuses a
    # bigger one (413) instead of reading up to its 16 MiB default.
    app.config["MAX_CONTENT_LENGTH"] = max(settings.webrtc.max_sdp_bytes, MAX_JSON_BODY)
    app.asgi_websocket_class = BoundedWebsocketConnection
    guard.install(app)
    http_peers = HttpPeers(ctx)  # WHIP publishers and WHEP players, run in ROOT
    serve_root(app, ctx, http_peers)
    websocket_route(app, ctx, guard)
    status_routes(app, ctx, guard)
    metrics_route(app, ctx, guard)
    admin_routes(app, ctx, guard)
    whip_routes(app, ctx, guard, http_peers)
    page_routes(app, settings, guard)
    listen_routes(app, ctx, guard)  # also here: the Listen page's screen-off fallback
    return app


def create_status_app(ctx: RelayContext) -> Quart:
    """The :8081 audio/status server: `/stream/status`, Ogg listening, `/health` for probes."""
    guard = Guard(ctx)
    app = Quart(__name__ + ".status", static_folder=None)
    guard.install(app)
    status_routes(app, ctx, guard)
    listen_routes(app, ctx, guard)
    return app


def create_asgi_app(settings: Settings) -> PortDispatcher:
    decline_websocket_compression()
    watch_hangups()  # (an Ogg listener that hangs up while its channel is silent is seen)
    ctx = build_context(settings)
    main = create_app(settings, ctx)
    return PortDispatcher(main, create_status_app(ctx), {settings.server.audio_port})
