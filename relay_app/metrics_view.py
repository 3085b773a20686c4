"""The /health and /metrics views: read the registry and Metrics, keep no state of their own."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

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
        "process": process_stats(),
        "live": {
            "sessions": live.sessions,
            "session_task_groups": live.session_task_groups,
            "peer_connections": live.peer_connections,
            "relay_subscriptions": live.relay_subscriptions,
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


def wants_prometheus(accept: str) -> bool:
    accept = accept.lower()
    return "openmetrics" in accept or ("text/plain" in accept and "json" not in accept)


class RelayCollector(Collector):
    """Prometheus view of the registry and Metrics, built at scrape time (no second state)."""

    def __init__(self, ctx: RelayContext) -> None:
        self.ctx = ctx

    def collect(self) -> Iterable[Metric]:
        ctx, metrics = self.ctx, self.ctx.metrics
        registry = ctx.registry
        streams = registry.live_streams()

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"relay_{name}", doc, value=value)

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(f"relay_{name}", doc, value=value)

        yield gauge("uptime_seconds", "Seconds since the server started.", metrics.uptime_seconds)
        yield gauge("active_connections", "Open WebSocket sessions.", len(registry.sessions))
        yield gauge("active_streams", "Live sender streams.", len(streams))
        yield gauge("webrtc_available", "1 when WebRTC media is available.", int(_WEBRTC))
        per_stream = GaugeMetricFamily(
            "relay_stream_receivers", "Receivers of each live stream.", labels=["stream_id"]
        )
        for stream in streams:
            per_stream.add_metric([stream.stream_id], len(stream.receivers))
        yield per_stream
        yield counter("audio_bytes", "Opus bytes received from senders.", metrics.total_audio_bytes)
        yield counter("packets_in", "Opus packets received from senders.", metrics.packets_in)
        yield counter("packets_out", "Packets/frames taken by receivers.", metrics.packets_out)
        yield counter("bytes_out", "Opus bytes forwarded to receivers.", metrics.bytes_out)
        yield counter("sessions", "WebSocket sessions opened.", metrics.sessions_total)
        yield counter("streams", "Streams started.", metrics.streams_total)
        drops = CounterMetricFamily("relay_drops", "Audio dropped, by reason.", labels=["reason"])
        for reason, count in sorted(metrics.drops.items()):
            drops.add_metric([reason], count)
        yield drops
        errors = CounterMetricFamily(
            "relay_errors", "Client-visible errors, by kind.", labels=["kind"]
        )
        for kind, count in sorted(metrics.errors.items()):
            errors.add_metric([kind], count)
        yield errors
        histogram = metrics.relay_latency
        cumulative, buckets = 0, []
        for bound, count in zip((*histogram.bounds, float("inf")), histogram.counts, strict=True):
            cumulative += count
            buckets.append((floatToGoString(bound), cumulative))
        yield HistogramMetricFamily(
            "relay_latency_seconds",
            "Relay-added latency: a packet's arrival to a receiver's sender taking it.",
            buckets=buckets,
            sum_value=histogram.total,
        )
        live = GaugeMetricFamily(
            "relay_live", "Resources held now; all 0 when no client is connected.", labels=["kind"]
        )
        for kind, value in asdict(metrics.live.statistics()).items():
            live.add_metric([kind], value)
        yield live


def prometheus_registry(ctx: RelayContext) -> CollectorRegistry:
    """Per app (never the global registry): each test builds its own app."""
    registry = CollectorRegistry()
    registry.register(RelayCollector(ctx))
    ProcessCollector(registry=registry)
    return registry


def metrics_prometheus(registry: CollectorRegistry, accept: str) -> tuple[bytes, str]:
    if "application/openmetrics-text" in accept.lower():
        return openmetrics.generate_latest(registry), openmetrics.CONTENT_TYPE_LATEST
    return generate_latest(registry), CONTENT_TYPE_LATEST
