"""The Prometheus exposition of /metrics: one table of metrics, read at scrape time.

`METRICS` is the one list of what relay_app exports (name, type, labels, help): the collector
emits exactly these, docs/metrics.md is generated from the same list plus what
prometheus_client's process collector adds (`python -m relay_app.prometheus >
docs/metrics.md`; a test fails on drift), and the Grafana dashboard and alert rules in docs/ are
checked against a live scrape. Naming follows Prometheus' practices: base units in names,
`_total` on counters, one meaning per metric, bounded labels (a stream's series disappears with
the stream, since nothing here keeps state: every value is read from the registry and
`Metrics` when scraped). Process CPU, memory and start time are prometheus_client's own
`process_*` metrics, not repeated here.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from importlib.metadata import version
from typing import Literal

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

from .. import __version__
from ..streams.context import RelayContext
from .process import WEBRTC_AVAILABLE, process_stats, tasks_by_owner

Kind = Literal["gauge", "counter", "histogram"]


@dataclass(frozen=True)
class MetricSpec:
    name: str  # as scraped; counters end in _total
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()

    def family(self) -> GaugeMetricFamily | CounterMetricFamily:
        if self.kind == "counter":
            return CounterMetricFamily(self.name, self.help, labels=self.labels)
        return GaugeMetricFamily(self.name, self.help, labels=self.labels)


METRICS: tuple[MetricSpec, ...] = (
    MetricSpec(
        "relay_build_info",
        "gauge",
        "Always 1; the labels say which relay_app, Python and aiortc are running.",
        ("version", "python", "aiortc"),
    ),
    MetricSpec("relay_webrtc_available", "gauge", "1 when WebRTC media (aiortc, Opus) works."),
    MetricSpec("relay_active_connections", "gauge", "Open WebSocket sessions."),
    MetricSpec("relay_active_streams", "gauge", "Live sender streams."),
    MetricSpec("relay_active_receivers", "gauge", "Receivers of all live streams."),
    MetricSpec(
        "relay_stream_receivers",
        "gauge",
        "Receivers of each live stream; the series ends with the stream.",
        ("stream_id",),
    ),
    MetricSpec(
        "relay_stream_http_listeners",
        "gauge",
        "Plain-HTTP (Ogg/Opus) listeners of each live stream; the series ends with the stream.",
        ("stream_id",),
    ),
    MetricSpec(
        "relay_stream_lost_packets_total",
        "counter",
        "Each live stream's speaker packets that never reached the relay (Wi-Fi loss on the "
        "speaker's leg), repaired or not; the series ends with the stream.",
        ("stream_id",),
    ),
    MetricSpec(
        "relay_stream_repaired_packets_total",
        "counter",
        "Of those, the packets rebuilt at the relay from RED redundancy; the rest are gaps.",
        ("stream_id",),
    ),
    MetricSpec(
        "relay_stream_listener_loss_ratio",
        "gauge",
        "Each live stream's worst listener loss, as the listeners last reported it (RTCP "
        "fraction lost, 0-1; fast-path listeners).",
        ("stream_id",),
    ),
    MetricSpec("relay_http_listeners", "gauge", "Plain-HTTP listeners connected (all streams)."),
    MetricSpec("relay_recordings", "gauge", "Recording files being written."),
    MetricSpec(
        "relay_upstreams", "gauge", "Other nodes' streams relayed here, one link each (cluster)."
    ),
    MetricSpec("relay_cluster_redis_up", "gauge", "Cluster mode: 1 while this node reaches Redis."),
    MetricSpec(
        "relay_cluster_nodes", "gauge", "Cluster mode: nodes in the directory (this one too)."
    ),
    MetricSpec(
        "relay_cluster_stream_receivers",
        "gauge",
        "Cluster mode: receivers of each stream in the cluster, all nodes, by its origin node.",
        ("stream_id", "node"),
    ),
    MetricSpec("relay_peer_connections", "gauge", "RTCPeerConnections open (senders + receivers)."),
    MetricSpec("relay_subscriptions", "gauge", "Relay subscriptions open (one per receiver)."),
    MetricSpec("relay_session_task_groups", "gauge", "Session task groups open (one per session)."),
    MetricSpec(
        "relay_tasks",
        "gauge",
        "asyncio tasks running relay_app, aiortc or aioice code (a leak would grow these).",
        ("owner",),
    ),
    MetricSpec("relay_threads", "gauge", "Threads, not counting worker pools (decoder threads)."),
    MetricSpec("relay_sessions_total", "counter", "WebSocket sessions opened."),
    MetricSpec("relay_streams_total", "counter", "Streams started."),
    MetricSpec("relay_received_packets_total", "counter", "Opus packets received from senders."),
    MetricSpec(
        "relay_lost_packets_total",
        "counter",
        "Speakers' packets that never reached the relay (all streams), repaired or not.",
    ),
    MetricSpec(
        "relay_repaired_packets_total",
        "counter",
        "Speakers' lost packets rebuilt at the relay from RED redundancy (all streams).",
    ),
    MetricSpec(
        "relay_received_bytes_total", "counter", "Opus payload bytes received from senders."
    ),
    MetricSpec(
        "relay_sent_packets_total", "counter", "Packets (or frames) taken by receivers' senders."
    ),
    MetricSpec("relay_sent_bytes_total", "counter", "Opus payload bytes forwarded to receivers."),
    MetricSpec("relay_http_sent_bytes_total", "counter", "Ogg bytes sent to HTTP listeners."),
    MetricSpec(
        "relay_http_listeners_dropped_total",
        "counter",
        "HTTP listeners dropped for not reading (their page buffer filled).",
    ),
    MetricSpec(
        "relay_recording_failures_total",
        "counter",
        "Recordings ended by the disk (unwritable directory, disk full, too slow).",
    ),
    MetricSpec(
        "relay_dropped_packets_total",
        "counter",
        "Packets not delivered to a receiver, by reason (e.g. receiver_queue_full).",
        ("reason",),
    ),
    MetricSpec(
        "relay_media_junk_datagrams_total",
        "counter",
        "Datagrams dropped at receivers' and unheard senders' media ports before the ICE agent: "
        "from an address the peer's ICE agent never paired with, or neither STUN, DTLS, RTP nor "
        "RTCP (a flood at a media port shows here).",
    ),
    MetricSpec(
        "relay_media_unknown_datagrams_total",
        "counter",
        "Datagrams dropped at the one UDP port (webrtc.udp_port) before the ICE agent: from an "
        "address no peer connection was reached from, a STUN check for a username fragment "
        "no peer connection has, a STUN response to no request of ours (junk or a flood at "
        "the port shows here).",
    ),
    MetricSpec(
        "relay_client_errors_total",
        "counter",
        "Errors sent to clients, by kind (e.g. idle_timeout, no_stream, limit).",
        ("kind",),
    ),
    MetricSpec(
        "relay_latency_seconds",
        "histogram",
        "Relay-added latency: a packet's arrival to a receiver's sender taking it (fast path: "
        "to its last receiver's copy sent, one observation per packet).",
    ),
)
SPECS = {spec.name: spec for spec in METRICS}


def _aiortc_version() -> str:
    try:
        return version("aiortc")
    except Exception:  # an odd install must not break scraping
        return "unknown"


_BUILD = (__version__, platform.python_version(), _aiortc_version())


class RelayCollector(Collector):
    """Emits METRICS from the registry and Metrics, built at scrape time (no second state)."""

    def __init__(self, ctx: RelayContext) -> None:
        self.ctx = ctx

    def collect(self) -> Iterable[Metric]:
        values = dict(self._values())
        for spec in METRICS:
            if spec.kind == "histogram":
                yield self._latency(spec)
                continue
            family = spec.family()
            for labels, value in values.get(spec.name, []):
                family.add_metric(list(labels), value)
            yield family

    def _values(self) -> Iterator[tuple[str, list[tuple[tuple[str, ...], float]]]]:
        ctx, metrics = self.ctx, self.ctx.metrics
        registry = ctx.registry
        streams = registry.live_streams()
        live = asdict(metrics.live.statistics())
        yield "relay_build_info", [(_BUILD, 1)]
        yield "relay_webrtc_available", [((), int(WEBRTC_AVAILABLE))]
        yield "relay_active_connections", [((), len(registry.sessions))]
        yield "relay_active_streams", [((), len(streams))]
        yield "relay_active_receivers", [((), registry.receiver_count)]
        yield "relay_stream_receivers", [((s.stream_id,), s.receivers) for s in streams]
        yield (
            "relay_stream_http_listeners",
            [((s.stream_id,), s.outputs.http_listeners) for s in streams],
        )
        yield "relay_stream_lost_packets_total", [((s.stream_id,), s.packets_lost) for s in streams]
        yield (
            "relay_stream_repaired_packets_total",
            [((s.stream_id,), s.packets_repaired) for s in streams],
        )
        yield (
            "relay_stream_listener_loss_ratio",
            [((s.stream_id,), s.listener_loss()) for s in streams],
        )
        yield "relay_http_listeners", [((), live["http_listeners"])]
        yield "relay_recordings", [((), live["recordings"])]
        yield "relay_upstreams", [((), live["upstreams"])]
        yield from ctx.cluster.gauges()  # (none on a single node)
        yield "relay_peer_connections", [((), live["peer_connections"])]
        yield "relay_subscriptions", [((), live["relay_subscriptions"])]
        yield "relay_session_task_groups", [((), live["session_task_groups"])]
        yield "relay_tasks", [((owner,), n) for owner, n in tasks_by_owner().items()]
        yield "relay_threads", [((), process_stats()["threads"])]
        yield "relay_sessions_total", [((), metrics.sessions_total)]
        yield "relay_streams_total", [((), metrics.streams_total)]
        yield "relay_received_packets_total", [((), metrics.packets_in)]
        yield "relay_lost_packets_total", [((), metrics.ingress_lost)]
        yield "relay_repaired_packets_total", [((), metrics.ingress_repaired)]
        yield "relay_received_bytes_total", [((), metrics.total_audio_bytes)]
        yield "relay_sent_packets_total", [((), metrics.packets_out)]
        yield "relay_sent_bytes_total", [((), metrics.bytes_out)]
        yield "relay_http_sent_bytes_total", [((), metrics.http_sent_bytes)]
        yield "relay_http_listeners_dropped_total", [((), metrics.http_listeners_dropped)]
        yield "relay_recording_failures_total", [((), metrics.recording_failures)]
        yield "relay_dropped_packets_total", [((r,), n) for r, n in sorted(metrics.drops.items())]
        yield "relay_media_junk_datagrams_total", [((), ctx.reads.statistics().junk_datagrams)]
        mux = ctx.reads.mux
        unknown = mux.statistics().unknown_datagrams if mux is not None else 0
        yield "relay_media_unknown_datagrams_total", [((), unknown)]
        yield "relay_client_errors_total", [((k,), n) for k, n in sorted(metrics.errors.items())]

    def _latency(self, spec: MetricSpec) -> Metric:
        histogram = self.ctx.metrics.relay_latency
        cumulative, buckets = 0, []
        for bound, count in zip((*histogram.bounds, float("inf")), histogram.counts, strict=True):
            cumulative += count
            buckets.append((floatToGoString(bound), cumulative))
        return HistogramMetricFamily(
            spec.name, spec.help, buckets=buckets, sum_value=histogram.total
        )


def prometheus_registry(ctx: RelayContext) -> CollectorRegistry:
    """Per app (never the global registry): each test builds its own app."""
    registry = CollectorRegistry()
    registry.register(RelayCollector(ctx))
    ProcessCollector(registry=registry)
    return registry


def wants_prometheus(accept: str) -> bool:
    accept = accept.lower()
    return "openmetrics" in accept or ("text/plain" in accept and "json" not in accept)


def metrics_prometheus(registry: CollectorRegistry, accept: str) -> tuple[bytes, str]:
    if "application/openmetrics-text" in accept.lower():
        return openmetrics.generate_latest(registry), openmetrics.CONTENT_TYPE_LATEST
    return generate_latest(registry), CONTENT_TYPE_LATEST


def sample_names(family: Metric) -> list[str]:
    """The names a family's samples are scraped under (what a PromQL query names)."""
    if family.type == "counter":
        return [family.name + "_total"]
    if family.type == "histogram":
        return [family.name + suffix for suffix in ("_bucket", "_sum", "_count")]
    return [family.name]


def metrics_markdown(ctx: RelayContext) -> str:
    """docs/metrics.md: METRICS and the process collector's metrics, as scraped."""
    lines = [
        "# Metrics",
        "",
        "<!-- Generated from relay_app/endpoints/prometheus.py by "
        "`python -m relay_app.prometheus > docs/metrics.md`; tests fail when this file "
        "drifts. -->",
        "",
        "`GET /metrics` with `Accept: text/plain` (Prometheus) or",
        "`application/openmetrics-text` (OpenMetrics) returns these; any other `Accept` gets the",
        "JSON document of [api.md](api.md) (the guide's `curl ... | jq` commands). With",
        "`auth.secret` set, scrapers send `Authorization: Bearer <metrics token>`",
        "(`python -m relay_app token --role metrics`). Dashboard:",
        "[grafana/relay_app.json](grafana/relay_app.json); scrape config and alert rules:",
        "[prometheus/](prometheus/).",
        "",
        "| metric | type | labels | meaning |",
        "|---|---|---|---|",
    ]
    for family in prometheus_registry(ctx).collect():
        spec = SPECS.get(family.name + ("_total" if family.type == "counter" else ""))
        labels = spec.labels if spec else sorted({k for s in family.samples for k in s.labels})
        shown = ", ".join(f"`{label}`" for label in labels if label != "le") or "—"
        names = ", ".join(f"`{name}`" for name in sample_names(family))
        lines.append(f"| {names} | {family.type} | {shown} | {family.documentation} |")
    return "\n".join(lines) + "\n"
