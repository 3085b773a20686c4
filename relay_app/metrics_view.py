"""The /health and /metrics views: read the registry and Metrics, keep no state of their own."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

from .context import RelayContext


def webrtc_available() -> bool:
    """aiortc imported and PyAV has the Opus codec the relay needs."""
    try:
        import av

        av.codec.Codec("opus", "r")
        av.codec.Codec("libopus", "w")
    except (ImportError, ValueError):  # PyAV missing, or built without (lib)opus
        return False
    return True


WEBRTC_AVAILABLE = webrtc_available()


def health_view(ctx: RelayContext) -> tuple[dict[str, Any], int]:
    registry = ctx.registry
    body: dict[str, Any] = {
        "status": "healthy",
        "webrtc_available": WEBRTC_AVAILABLE,
        "audio_server_running": ctx.serving,
        "active_streams": len(registry.live_streams()),
        "connected_clients": len(registry.sessions),
        "uptime_seconds": round(ctx.metrics.uptime_seconds),
    }
    if ctx.cluster is not None:  # Redis away is not unhealthy: local service goes on
        view = ctx.cluster.view()
        body["cluster"] = {
            "node_id": view["node_id"],
            "redis": view["redis"],
            "nodes": view["nodes"],
            "streams": len(view["streams"]),
        }
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
        "cluster": ctx.cluster.view() if ctx.cluster is not None else None,
        "live": {
            "sessions": live.sessions,
            "session_task_groups": live.session_task_groups,
            "peer_connections": live.peer_connections,
            "relay_subscriptions": live.relay_subscriptions,
            "http_listeners": live.http_listeners,
            "recordings": live.recordings,
            "upstreams": live.upstreams,
            "asyncio_tasks": len(asyncio.all_tasks()),
            **{f"{owner}_tasks": count for owner, count in tasks_by_owner().items()},
        },
    }


# Worker pools grow on demand and keep their threads (asyncio's default executor, where
# aiortc encodes in transcode mode; anyio's to_thread): not a leak, so counted apart.
POOL_THREAD_PREFIXES = ("asyncio_", "AnyIO worker thread", "ThreadPoolExecutor")


def process_stats() -> dict[str, Any]:
    """Resident memory and threads: what a leak would grow."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
        rss_mb = round(resident_pages * os.sysconf("SC_PAGE_SIZE") / 1024**2, 1)
    except (OSError, ValueError, IndexError):
        rss_mb = None
    threads = threading.enumerate()
    pooled = sum(1 for t in threads if t.name.startswith(POOL_THREAD_PREFIXES))
    return {"rss_mb": rss_mb, "threads": len(threads) - pooled, "pool_threads": pooled}


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
