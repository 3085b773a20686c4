"""`/health`, `/stream/status` (both ports) and `/metrics`: views of the registry and Metrics
that keep no state of their own."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any

from quart import Quart, Response, jsonify, request

from ..streams.context import RelayContext
from .guard import HEALTH, METRICS, STATUS, Entry, Guard
from .process import WEBRTC_AVAILABLE, process_stats, tasks_by_owner
from .prometheus import metrics_prometheus, prometheus_registry, wants_prometheus


def health_view(ctx: RelayContext) -> tuple[dict[str, Any], int]:
    registry = ctx.registry
    body: dict[str, Any] = {
        "status": "healthy",
        "webrtc_available": WEBRTC_AVAILABLE,
        "audio_server_running": ctx.serving,
        "active_streams": len(registry.live_streams()),
        "connected_clients": len(registry.sessions),
        "uptime_seconds": round(ctx.metrics.uptime_seconds),
        # Whether /ws and the listening doors want a token (auth.secret is set): what
        # `relay_app token|invite|qr` ask before printing something the server would refuse.
        "auth_required": ctx.settings.auth.secret is not None,
    }
    body.update(ctx.cluster.health())  # (Redis away is not unhealthy: local service goes on)
    reasons = []
    if not WEBRTC_AVAILABLE:
        reasons.append("WebRTC unavailable: PyAV lacks the Opus codec")
    if not ctx.serving:
        reasons.append("server is not serving (starting up or shutting down)")
    if reasons:
        body["status"] = "unhealthy"
        body["reason"] = "; ".join(reasons)
        return body, 503
    return body, 200


def metrics_json(ctx: RelayContext) -> dict[str, Any]:
    registry = ctx.registry
    metrics = ctx.metrics
    live = metrics.live.statistics()
    mux = ctx.reads.mux.statistics() if ctx.reads.mux is not None else None
    return {
        "uptime_seconds": round(metrics.uptime_seconds),
        "active_connections": len(registry.sessions),
        "active_streams": len(registry.live_streams()),
        "total_audio_bytes": metrics.total_audio_bytes,
        "webrtc_available": WEBRTC_AVAILABLE,
        "active_receivers": registry.receiver_count,
        "audio_frames": metrics.audio_frames,
        "sessions_total": metrics.sessions_total,
        "streams_total": metrics.streams_total,
        "errors": dict(metrics.errors),
        "relay": {
            "mode": ctx.settings.relay.mode,
            "packets_in": metrics.packets_in,
            "packets_lost": metrics.ingress_lost,
            "packets_repaired": metrics.ingress_repaired,
            "packets_out": metrics.packets_out,
            "bytes_in": metrics.total_audio_bytes,
            "bytes_out": metrics.bytes_out,
            "drops": dict(metrics.drops),
            "latency": metrics.relay_latency.summary_ms(),
            "http_sent_bytes": metrics.http_sent_bytes,
            "http_listeners_dropped": metrics.http_listeners_dropped,
            "http_page_latency": metrics.http_page_latency.summary_ms(),
            "recording_failures": metrics.recording_failures,
        },
        "process": process_stats(),
        "cluster": ctx.cluster.view(),
        # The one UDP port (webrtc.udp_port): null without it.
        "media_port": asdict(mux) if mux is not None else None,
        "live": {
            "sessions": live.sessions,
            "session_task_groups": live.session_task_groups,
            "peer_connections": live.peer_connections,
            "relay_subscriptions": live.relay_subscriptions,
            "http_listeners": live.http_listeners,
            "recordings": live.recordings,
            "upstreams": live.upstreams,
            "media_port_connections": mux.connections if mux is not None else 0,
            "asyncio_tasks": len(asyncio.all_tasks()),
            **{f"{owner}_tasks": count for owner, count in tasks_by_owner().items()},
        },
    }


def stream_status(ctx: RelayContext, entry: Entry) -> dict[str, Any]:
    """`/stream/status`: the live streams and channels this caller's token reaches."""
    streams = [s for s in ctx.registry.stream_infos() if entry.may_receive(s.stream_id)]
    channels = [c for c in ctx.registry.channel_infos() if entry.may_receive(c.channel)]
    return {
        "active_streams": [s.stream_id for s in streams],
        "streams": [s.model_dump() for s in streams],
        "channels": [c.model_dump() for c in channels],
    }


def status_routes(app: Quart, ctx: RelayContext, guard: Guard) -> None:
    """`/health` and `/stream/status`: served on both ports (probes and the guide use both)."""

    @app.get("/health")
    @guard.door(HEALTH)
    async def _health(entry: Entry) -> tuple[Response, int]:
        body, code = health_view(ctx)
        return jsonify(body), code

    @app.get("/stream/status")
    @guard.door(STATUS)
    async def _status(entry: Entry) -> Response:
        return jsonify(stream_status(ctx, entry))


def metrics_route(app: Quart, ctx: RelayContext, guard: Guard) -> None:
    """`/metrics`: JSON for people and jq (the guide's commands); exposition format for
    scrapers that ask for it."""
    scrape_registry = prometheus_registry(ctx)

    @app.get("/metrics")
    @guard.door(METRICS)
    async def _metrics(entry: Entry) -> Response:
        accept = request.headers.get("Accept", "")
        if wants_prometheus(accept):
            body, content_type = metrics_prometheus(scrape_registry, accept)
            return Response(body, content_type=content_type)
        return jsonify(metrics_json(ctx))
