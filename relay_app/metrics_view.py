"""The /health and /metrics views: read the registry and Metrics, keep no state of their own."""

from __future__ import annotations

import asyncio
from typing import Any

from .context import RelayContext


def webrtc_available() -> bool:
    """aiortc imported and PyAV has the Opus codec the relay needs."""
    try:
        import av

        av.codec.Codec("opus", "r")
        av.codec.Codec("libopus", "w")
    except Exception:
        return False
    return True


_WEBRTC = webrtc_available()


def health_view(ctx: RelayContext) -> tuple[dict[str, Any], int]:
    registry = ctx.registry
    body: dict[str, Any] = {
        "status": "healthy",
        "webrtc_available": _WEBRTC,
        "audio_server_running": ctx.serving,
        "active_streams": len(registry.live_streams()),
        "connected_clients": len(registry.sessions),
        "uptime_seconds": round(ctx.metrics.uptime_seconds),
    }
    reasons = []
    if not _WEBRTC:
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
    return {
        "uptime_seconds": round(metrics.uptime_seconds),
        "active_connections": len(registry.sessions),
        "active_streams": len(registry.live_streams()),
        "total_audio_bytes": metrics.total_audio_bytes,
        "webrtc_available": _WEBRTC,
        "active_receivers": registry.receiver_count,
        "audio_frames": metrics.audio_frames,
        "sessions_total": metrics.sessions_total,
        "streams_total": metrics.streams_total,
        "errors": dict(metrics.errors),
        "relay": {
            "mode": ctx.settings.relay.mode,
            "packets_in": metrics.packets_in,
            "packets_out": metrics.packets_out,
            "bytes_in": metrics.total_audio_bytes,
            "bytes_out": metrics.bytes_out,
            "drops": dict(metrics.drops),
            "latency": metrics.relay_latency.summary_ms(),
        },
        "live": {
            "sessions": live.sessions,
            "session_task_groups": live.session_task_groups,
            "peer_connections": live.peer_connections,
            "relay_subscriptions": live.relay_subscriptions,
            "asyncio_tasks": len(asyncio.all_tasks()),
            **{f"{owner}_tasks": count for owner, count in tasks_by_owner().items()},
        },
    }


TASK_OWNERS = ("relay_app", "aiortc", "aioice")


def tasks_by_owner() -> dict[str, int]:
    """Tasks running code of this package, aiortc and aioice: the ones a leaked session leaves.

    HTTP connection tasks of Hypercorn linger a few seconds after each request (keep-alive), so
    the total task count is noisy; these are not.
    """
    counts = dict.fromkeys(TASK_OWNERS, 0)
    for task in asyncio.all_tasks():
        coro: Any = task.get_coro()
        code = getattr(coro, "cr_code", None) or getattr(coro, "gi_code", None)
        filename = code.co_filename if code is not None else ""
        for owner in TASK_OWNERS:
            if f"/{owner}/" in filename:
                counts[owner] += 1
                break
    return counts


def wants_prometheus(accept: str) -> bool:
    accept = accept.lower()
    return "openmetrics" in accept or ("text/plain" in accept and "json" not in accept)


def metrics_prometheus(ctx: RelayContext) -> tuple[str, str]:
    """Prometheus text exposition (0.0.4) of the same numbers as the JSON view."""
    data = metrics_json(ctx)
    lines: list[str] = []

    def metric(name: str, kind: str, help_: str, value: float, labels: str = "") -> None:
        if not any(line.startswith(f"# TYPE relay_{name} ") for line in lines):
            lines.append(f"# HELP relay_{name} {help_}")
            lines.append(f"# TYPE relay_{name} {kind}")
        lines.append(f"relay_{name}{labels} {value}")

    metric("uptime_seconds", "gauge", "Seconds since the server started.", data["uptime_seconds"])
    metric("active_connections", "gauge", "Open WebSocket sessions.", data["active_connections"])
    metric("active_streams", "gauge", "Live sender streams.", data["active_streams"])
    metric(
        "active_receivers", "gauge", "Receivers subscribed to a stream.", data["active_receivers"]
    )
    metric(
        "audio_bytes_total", "counter", "Decoded audio bytes received.", data["total_audio_bytes"]
    )
    metric("audio_frames_total", "counter", "Audio frames received.", data["audio_frames"])
    metric("sessions_total", "counter", "WebSocket sessions opened.", data["sessions_total"])
    metric("streams_total", "counter", "Streams started.", data["streams_total"])
    metric(
        "webrtc_available",
        "gauge",
        "1 when WebRTC media is available.",
        int(data["webrtc_available"]),
    )
    relay = data["relay"]
    metric(
        "packets_in_total", "counter", "Opus packets received from senders.", relay["packets_in"]
    )
    metric(
        "packets_out_total", "counter", "Packets/frames taken by receivers.", relay["packets_out"]
    )
    metric("bytes_out_total", "counter", "Opus bytes forwarded to receivers.", relay["bytes_out"])
    for reason, count in sorted(relay["drops"].items()):
        metric(
            "drops_total", "counter", "Audio dropped, by reason.", count, f'{{reason="{reason}"}}'
        )
    histogram = ctx.metrics.relay_latency
    name = "relay_latency_seconds"
    lines.append(f"# HELP relay_{name} Relay-added latency: ingress to a receiver's sender.")
    lines.append(f"# TYPE relay_{name} histogram")
    cumulative = 0
    for bound, count in zip((*histogram.bounds, "+Inf"), histogram.counts, strict=True):
        cumulative += count
        lines.append(f'relay_{name}_bucket{{le="{bound}"}} {cumulative}')
    lines.append(f"relay_{name}_sum {histogram.total}")
    lines.append(f"relay_{name}_count {histogram.count}")
    for kind, count in sorted(data["errors"].items()):
        metric(
            "errors_total", "counter", "Client-visible errors by kind.", count, f'{{kind="{kind}"}}'
        )
    for name, value in data["live"].items():
        metric(f"live_{name}", "gauge", f"Live {name.replace('_', ' ')}.", value)
    return "\n".join(lines) + "\n", "text/plain; version=0.0.4; charset=utf-8"
