"""Cluster benchmark: one sender on node A, receivers spread over 1, 2 or 3 nodes, one machine.

    .venv/bin/python -m bench.cluster                        # 100, 200, 300 receivers
    .venv/bin/python -m bench.cluster --totals 150 --window 8

A real `redis-server` (free port, no persistence) and three node processes (forward mode, fast
path) on 127.0.0.1; the sender (`relay_app.client send`) streams a tone to node A. For each
total T and spread S (receivers on A; on A and B; on A, B and C, split evenly), fresh nodes,
then receivers in worker processes (bench/fanout.py's: aiortc receivers that count RTP without
decoding). Over the window: each node's CPU (% of a core, /proc), its receivers, upstreams, and
the loss over all receivers. N = 0 rows give each node's idle CPU (A: the stream, nobody
listening); the "upstream" row is one receiver on B: what a link costs A (one more receiver)
and B (the link plus one receiver).

On this 2-core machine the receivers' worker processes share the cores with the nodes, so
absolute numbers are pessimistic; the ratios between spreads are the point.
Results: bench/results/cluster-<timestamp>.json and a table on stdout. Not a pass/fail test.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.fanout import RESULTS, ReceiverPool, Server, _get
from relay_app.tools.testing import RedisProcess, cluster_config

NODES = ("a", "b", "c")


@dataclass
class Row:
    total: int
    spread: str  # which nodes have receivers, e.g. "a+b"
    receivers: dict[str, int]
    cpu_percent: dict[str, float]
    cpu_per_receiver: dict[str, float | None]
    upstreams: dict[str, int]
    loss_percent: float
    delivered: int
    expected: int


@contextmanager
def cluster(tmp: Path) -> Iterator[dict[str, Server]]:
    """Redis, three nodes and a tone sender on A; all stopped on the way out."""
    redis = RedisProcess().start()
    nodes: dict[str, Server] = {}
    sender: subprocess.Popen[str] | None = None
    try:
        for name in NODES:
            extra = cluster_config(redis.url, name, upstream_linger=30)
            nodes[name] = Server("forward+fast", tmp, extra)
        for node in nodes.values():
            node.wait_event("cluster_joined")
        sender = nodes["a"].start_sender()
        deadline = time.monotonic() + 10
        while not all(
            n.get("/stream/status", status_port=True).json()["streams"] for n in nodes.values()
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("the stream did not reach every node's listing")
            time.sleep(0.1)
        yield nodes
    finally:
        if sender is not None:
            sender.terminate()
            sender.wait(10)
        for node in nodes.values():
            node.stop()
        redis.stop()


def measure(total: int, spread: tuple[str, ...], window: float, tmp: Path) -> Row:
    with cluster(tmp) as nodes:
        share = {
            name: total // len(spread) + (i < total % len(spread)) for i, name in enumerate(spread)
        }
        pool = ReceiverPool()
        workers, pipes, ready, results = pool.workers, pool.pipes, pool.ready, pool.results
        try:
            for name, count in share.items():
                pool.add(nodes[name].ws_url, count)
            connected = sum(_get(ready, workers) for _ in workers)
            assert connected == total
            start_at = time.time() + 2.0
            end_at = start_at + window
            for pipe in pipes:
                pipe.send((start_at, end_at))
            time.sleep(max(0.0, start_at - time.time()))
            cpu0 = {name: node.cpu_seconds() for name, node in nodes.items()}
            sent0 = nodes["a"].metrics()["relay"]["packets_in"]
            time.sleep(max(0.0, end_at - time.time()))
            cpu1 = {name: node.cpu_seconds() for name, node in nodes.items()}
            sent1 = nodes["a"].metrics()["relay"]["packets_in"]
            live = {name: node.metrics()["live"] for name, node in nodes.items()}
            counts = [n for _ in workers for n, _ in _get(results, workers, timeout=60)]
        finally:
            pool.stop()
    cpu = {name: round(100 * (cpu1[name] - cpu0[name]) / window, 1) for name in NODES}
    receivers = {name: share.get(name, 0) for name in NODES}
    expected = max((sent1 - sent0) * total, 1)
    delivered = sum(counts)
    return Row(
        total=total,
        spread="+".join(spread),
        receivers=receivers,
        cpu_percent=cpu,
        cpu_per_receiver={
            name: round(cpu[name] / receivers[name], 3) if receivers[name] else None
            for name in NODES
        },
        upstreams={name: live[name]["upstreams"] for name in NODES},
        loss_percent=round(100 * max(0, expected - delivered) / expected, 2),
        delivered=delivered,
        expected=expected,
    )


def measure_idle(window: float, tmp: Path) -> Row:
    with cluster(tmp) as nodes:
        time.sleep(2.0)
        cpu0 = {name: node.cpu_seconds() for name, node in nodes.items()}
        time.sleep(window)
        cpu = {n: round(100 * (nodes[n].cpu_seconds() - cpu0[n]) / window, 1) for n in NODES}
    zero = dict.fromkeys(NODES, 0)
    return Row(0, "-", zero, cpu, dict.fromkeys(NODES), zero, 0.0, 0, 0)


def table(rows: list[Row]) -> str:
    lines = [
        "| receivers | on nodes | CPU % a / b / c | CPU %/receiver a / b / c "
        "| upstreams b / c | loss % |",
        "|---:|---|---|---|---|---:|",
    ]
    for r in rows:
        cpu = " / ".join(str(r.cpu_percent[n]) for n in NODES)
        per = " / ".join("—" if (x := r.cpu_per_receiver[n]) is None else f"{x:.3f}" for n in NODES)
        upstreams = f"{r.upstreams['b']} / {r.upstreams['c']}"
        lines.append(f"| {r.total} | {r.spread} | {cpu} | {per} | {upstreams} | {r.loss_percent} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--totals", type=int, nargs="+", default=[100, 200, 300])
    parser.add_argument("--window", type=float, default=8.0)
    args = parser.parse_args()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(measure_idle(args.window, Path(tmp)))
        print(table(rows[-1:]), flush=True)
        rows.append(measure(1, ("b",), args.window, Path(tmp)))  # what one upstream costs
        print(table(rows[-1:]), flush=True)
        for total in args.totals:
            for spread in (("a",), ("a", "b"), ("a", "b", "c")):
                rows.append(measure(total, spread, args.window, Path(tmp)))
                print(table(rows[-1:]), flush=True)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"cluster-{time.strftime('%Y%m%d-%H%M%S')}.json"
    machine = {"cpus": mp.cpu_count(), "python": platform.python_version()}
    path.write_text(
        json.dumps(
            {"machine": machine, "window": args.window, "rows": [asdict(r) for r in rows]}, indent=2
        )
    )
    print(table(rows))
    print(f"results: {path}")


if __name__ == "__main__":
    main()
