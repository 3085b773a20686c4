"""The Prometheus exposition: docs/metrics.md, the Grafana dashboard and the alert rules all
name metrics a live scrape really has, and a stream's series end with the stream."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from relay_app.client import RelayClient, ToneTrack
from relay_app.core.config import Settings
from relay_app.endpoints.prometheus import metrics_markdown, sample_names
from relay_app.streams.context import RelayContext
from relay_app.tools.exposition import histogram_buckets, quantile
from relay_app.tools.testing import REPO, ServerProcess

from ..helpers import need

pytestmark = pytest.mark.anyio

DOCS = REPO / "docs"
PROMQL_NAME = re.compile(r"\b((?:relay|process)_[a-z_]+)\b")


def scrape(server: ServerProcess) -> dict[str, list[dict[str, str]]]:
    """{sample name: [labels of each sample]}, families without samples included."""
    text = server.get("/metrics", headers={"Accept": "text/plain"}).text
    names: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for name in sample_names(family):
            names.setdefault(name, [])
        for sample in family.samples:
            names.setdefault(sample.name, []).append(sample.labels)
    return names


def documented_names() -> set[str]:
    names = set()
    for line in (DOCS / "metrics.md").read_text().splitlines():
        if line.startswith("| `"):
            names.update(re.findall(r"`([a-z_]+)`", line.split("|")[1]))
    return names


async def test_metrics_doc_matches_the_collector() -> None:
    doc = (DOCS / "metrics.md").read_text()
    assert doc == metrics_markdown(RelayContext.from_settings(Settings())), (
        "docs/metrics.md is stale: run `.venv/bin/python -m relay_app.prometheus > docs/metrics.md`"
    )


async def test_a_live_scrape_has_exactly_the_documented_metrics_and_streams_leave_no_series(
    server: ServerProcess,
) -> None:
    async with RelayClient.connect(server.ws_url) as sender:
        stream_id = await sender.start_sending(ToneTrack(440))
        async with RelayClient.connect(server.ws_url) as receiver:
            await receiver.start_receiving(stream_id)
            await receiver.wait_audio(0.5)
            live = scrape(server)
            assert set(live) == documented_names()
            assert live["relay_stream_receivers"] == [{"stream_id": stream_id}]
            (build,) = live["relay_build_info"]
            assert build.keys() == {"version", "python", "aiortc"}
            assert {labels["owner"] for labels in live["relay_tasks"]} == {
                "relay_app",
                "aiortc",
                "aioice",
            }
    server.wait_idle()
    after = scrape(server)
    assert after["relay_stream_receivers"] == [], "an ended stream keeps no series"
    assert set(after) == documented_names()


@pytest.mark.mode_independent  # the metric names: the relay mode does not change it
async def test_every_dashboard_and_alert_query_names_a_scraped_metric(
    server: ServerProcess,
) -> None:
    scraped = set(scrape(server))
    dashboard = json.loads((DOCS / "grafana" / "relay_app.json").read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    queries += [v["query"] for v in dashboard["templating"]["list"]]
    alerts = (DOCS / "prometheus" / "alerts.yml").read_text()
    queries += re.findall(r"expr: (?:>-\n)?((?:.|\n)*?)\n\s+for:", alerts)
    # Names outside label values (`job="relay_app"` is not a metric).
    used = {n for q in queries for n in PROMQL_NAME.findall(re.sub(r'"[^"]*"', "", q))}
    assert used, queries
    assert used <= scraped, used - scraped
    for wanted in (
        "relay_active_connections",
        "relay_stream_receivers",
        "relay_dropped_packets_total",
        "relay_latency_seconds_bucket",
        "relay_client_errors_total",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    ):
        assert wanted in used, f"the dashboard shows {wanted}"


def test_alert_rules_and_scrape_config_pass_promtool() -> None:
    promtool = need("promtool", "prometheus")
    folder = DOCS / "prometheus"
    for command in (
        ["check", "config", "prometheus.yml"],
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
    ):
        result = subprocess.run(
            [promtool, *command], cwd=folder, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, (command, result.stdout, result.stderr)


@pytest.mark.mode_independent  # startup checks: the relay mode does not change it
async def test_a_config_whose_limits_contradict_each_other_warns_at_startup(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server({"server": {"max_connections": 30}})
    warning = server.wait_event("config_limit_unreachable")
    assert "streams.max_receivers=30" in warning["problem"]
    assert "server.max_connections=30" in warning["problem"]


def test_benchmark_histograms_read_counts_past_a_million() -> None:
    """The text format writes 4488808 as 4.488808e+06: read as the number it is."""
    exposition = (
        "# HELP relay_latency_seconds Relay-added latency\n"
        "# TYPE relay_latency_seconds histogram\n"
        'relay_latency_seconds_bucket{le="0.001"} 3.0e+06\n'
        'relay_latency_seconds_bucket{le="0.005"} 4.488808e+06\n'
        'relay_latency_seconds_bucket{le="+Inf"} 4.5e+06\n'
        "relay_latency_seconds_count 4.5e+06\n"
        "relay_latency_seconds_sum 9000.0\n"
    )
    buckets = histogram_buckets(exposition, "relay_latency_seconds")
    assert buckets == [(0.001, 3_000_000), (0.005, 4_488_808), (float("inf"), 4_500_000)]
    p95 = quantile(buckets, 0.95)
    assert p95 is not None and 0.001 < p95 < 0.005
