"""Reading what /metrics exposes, for the benchmarks: histogram buckets and their quantiles.

Parsed with prometheus_client's own parser: the text format writes counts from 1,000,000 on
as `4.488808e+06`, which a digits-only pattern read as 4 (a 15-minute run reported p95 of
-0.01 ms).
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def histogram_buckets(exposition: str, name: str) -> list[tuple[float, int]]:
    """The cumulative buckets of histogram `name`: (upper bound, count), lowest first."""
    buckets: list[tuple[float, int]] = []
    for family in text_string_to_metric_families(exposition):
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name == f"{name}_bucket":
                buckets.append((float(sample.labels["le"]), int(sample.value)))
    return sorted(buckets)


def quantile(buckets: list[tuple[float, int]], q: float) -> float | None:
    """q-quantile (seconds) from cumulative Prometheus buckets, interpolated in its bucket."""
    total = buckets[-1][1] if buckets else 0
    if total == 0:
        return None
    rank = q * total
    previous_bound, previous_count = 0.0, 0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return previous_bound
            inside = count - previous_count
            fraction = (rank - previous_count) / inside if inside else 0
            return previous_bound + (bound - previous_bound) * fraction
        previous_bound, previous_count = bound, count
    return previous_bound
