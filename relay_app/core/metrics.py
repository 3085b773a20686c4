"""Counters and the live counts that prove teardown, with JSON and Prometheus views.

Stream and connection counts are not kept here: they are read from the StreamRegistry (one truth).
`LiveCounts` is deliberately independent of the registry: it is incremented where a resource is
created and decremented where it is released, so a leak shows as a non-zero count even if the
registry forgot the owner.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

# Relay-added latency buckets (seconds): ingress of a packet/frame -> a receiver's sender.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02,
    0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0,
)  # fmt: skip


@dataclass
class Histogram:
    """Counts per upper bound (Prometheus style); quantiles interpolate within a bucket."""

    bounds: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def quantile(self, q: float) -> float | None:
        if self.count == 0:
            return None
        rank = q * self.count
        seen = 0
        for index, bucket_count in enumerate(self.counts):
            if seen + bucket_count >= rank and bucket_count:
                lower = self.bounds[index - 1] if index > 0 else 0.0
                upper = self.bounds[index] if index < len(self.bounds) else lower * 2
                return lower + (upper - lower) * (rank - seen) / bucket_count
            seen += bucket_count
        return self.bounds[-1]

    def summary_ms(self) -> dict[str, Any]:
        def ms(value: float | None) -> float | None:
            return None if value is None else round(value * 1000, 3)

        mean = self.total / self.count if self.count else None
        return {
            "count": self.count,
            "mean_ms": ms(mean),
            "p50_ms": ms(self.quantile(0.5)),
            "p95_ms": ms(self.quantile(0.95)),
            "p99_ms": ms(self.quantile(0.99)),
        }


@dataclass(frozen=True)
class LiveStatistics:
    sessions: int
    session_task_groups: int
    peer_connections: int
    relay_subscriptions: int
    http_listeners: int
    recordings: int
    upstreams: int


@dataclass
class LiveCounts:
    sessions: int = 0
    session_task_groups: int = 0
    peer_connections: int = 0
    relay_subscriptions: int = 0
    http_listeners: int = 0
    recordings: int = 0  # files being written (recording.py)
    upstreams: int = 0  # other nodes' streams relayed here (cluster mode, upstream.py)

    def statistics(self) -> LiveStatistics:
        return LiveStatistics(**asdict(self))


@dataclass
class Metrics:
    live: LiveCounts = field(default_factory=LiveCounts)
    started_monotonic: float = field(default_factory=time.monotonic)
    total_audio_bytes: int = 0
    packets_in: int = 0
    # Speakers' packets that never arrived, and those of them rebuilt from RED (red.py).
    ingress_lost: int = 0
    ingress_repaired: int = 0
    packets_out: int = 0
    bytes_out: int = 0
    audio_frames: int = 0
    drops: Counter[str] = field(default_factory=Counter)
    relay_latency: Histogram = field(default_factory=Histogram)
    sessions_total: int = 0
    streams_total: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    http_sent_bytes: int = 0
    http_listeners_dropped: int = 0
    # A page's last packet arriving -> the page handed to the listener's connection.
    http_page_latency: Histogram = field(default_factory=Histogram)
    recording_failures: int = 0

    @property
    def uptime_seconds(self) -> float:
        return time.monotonic() - self.started_monotonic

    def count_error(self, kind: str) -> None:
        self.errors[kind] += 1

    def count_drop(self, reason: str, count: int = 1) -> None:
        self.drops[reason] += count

    def record_ingress(self, payload_bytes: int) -> None:
        """An encoded audio packet arrived from a sender."""
        self.packets_in += 1
        self.total_audio_bytes += payload_bytes

    def record_egress(self, item: Any, latency: float) -> None:
        """A receiver's sender took an item `latency` seconds after it entered the relay."""
        self.packets_out += 1
        size = getattr(item, "size", None)
        if size is not None:  # an encoded packet; decoded frames are re-encoded per receiver
            self.bytes_out += size
        self.relay_latency.observe(latency)
