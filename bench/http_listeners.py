"""HTTP listeners (Ogg/Opus on :8081) next to WebRTC receivers, measured in one run.

    .venv/bin/python -m bench.http_listeners                  # N = 100 and 400, 10 s windows
    .venv/bin/python -m bench.http_listeners --counts 100 --window 5

For each N: a fresh forward-mode server and a sender streaming a tone, then N plain HTTP
listeners of `GET /stream/<id>.ogg` (worker processes that read and count bytes, as a player's
network stack would) for a window; the server's CPU (from /proc) over the window beside the
same server with no listener gives the cost per listener, and the server's own histogram the
time from a page's last packet arriving to the page being handed to the listener's connection.
The WebRTC side is `bench/fanout.py`'s measurement (forward mode) at the same N, in the same
run. Results: bench/results/http-listeners-<timestamp>.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.fanout import Server, measure
from relay_app.tools.testing import REPO, start_client

RESULTS = REPO / "bench" / "results"
PER_WORKER = 100


def worker_main(host: str, port: int, path: str, count: int, seconds: float, out: Any) -> None:
    """`count` listeners that read and count bytes for `seconds`."""

    async def one() -> int:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        received = 0
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), left)
            except TimeoutError:
                break
            if not chunk:
                break
            received += len(chunk)
        writer.close()
        return received

    async def main() -> list[int]:
        return list(await asyncio.gather(*(one() for _ in range(count))))

    out.put(asyncio.run(main()))


def cpu_over(server: Server, seconds: float) -> float:
    """The server's CPU over `seconds`, in % of one core."""
    before = server.cpu_seconds()
    time.sleep(seconds)
    return 100 * (server.cpu_seconds() - before) / seconds


def measure_http(listeners: int, window: float, tmp: Path) -> dict[str, Any]:
    server = Server("forward", tmp)
    sender = start_client(
        server.ws_url, "send", "--tone", "440", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    ctx = mp.get_context("spawn")
    workers: list[Any] = []
    out = ctx.Queue()
    try:
        deadline = time.monotonic() + 20
        while not (streams := server.metrics()["active_streams"]):
            if time.monotonic() > deadline:
                raise RuntimeError("the sender did not start")
            time.sleep(0.2)
        del streams
        stream_id = server.get("/stream/status", status_port=True).json()["active_streams"][0]
        idle_cpu = cpu_over(server, window)
        remaining, settle = listeners, 3.0
        while remaining:
            count = min(PER_WORKER, remaining)
            remaining -= count
            args = ("127.0.0.1", server.audio_port, f"/stream/{stream_id}.ogg", count)
            process = ctx.Process(target=worker_main, args=(*args, settle + window + 2, out))
            process.start()
            workers.append(process)
        time.sleep(settle)
        connected = server.metrics()["live"]["http_listeners"]
        metrics0 = server.metrics()
        cpu = cpu_over(server, window)
        metrics1 = server.metrics()
        received = [n for _ in workers for n in out.get(timeout=120)]
        sent = metrics1["relay"]["http_sent_bytes"] - metrics0["relay"]["http_sent_bytes"]
        latency = metrics1["relay"]["http_page_latency"]
        return {
            "listeners": listeners,
            "connected": connected,
            "cpu_percent_idle_stream": round(idle_cpu, 2),
            "cpu_percent": round(cpu, 2),
            "cpu_per_listener": round((cpu - idle_cpu) / listeners, 4),
            "rss_mb": metrics1["process"]["rss_mb"],
            "bytes_per_listener_per_second": round(sent / listeners / window),
            "min_listener_bytes": min(received),
            "dropped_listeners": metrics1["relay"]["http_listeners_dropped"],
            "page_latency_ms": {k: latency.get(k) for k in ("p50_ms", "p95_ms", "p99_ms")},
        }
    finally:
        for process in workers:
            process.join(30)
            if process.is_alive():
                process.terminate()
        sender.terminate()
        sender.wait(10)
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", nargs="+", type=int, default=[100, 400])
    parser.add_argument("--window", type=float, default=10.0, help="measurement seconds")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for count in args.counts:
            http = measure_http(count, args.window, Path(tmp))
            webrtc = measure("forward", count, args.window, Path(tmp))
            ratio = http["cpu_per_listener"] / webrtc.cpu_per_receiver
            rows.append({"n": count, "http": http, "webrtc": webrtc.__dict__, "ratio": ratio})
            print(
                f"N={count}: HTTP {http['cpu_per_listener']:.4f} %/listener "
                f"(page latency p95 {http['page_latency_ms']['p95_ms']} ms), WebRTC "
                f"{webrtc.cpu_per_receiver:.4f} %/receiver (loss {webrtc.loss_percent} %): "
                f"an HTTP listener costs {ratio:.2f} of a WebRTC receiver",
                flush=True,
            )
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"http-listeners-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"results: {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
