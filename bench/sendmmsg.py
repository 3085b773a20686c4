"""N `sendto` calls against one `sendmmsg` call: one packet's copies to N listeners from one
UDP socket (what the fan-out does on the one UDP port, webrtc.udp_port).

    .venv/bin/python -m bench.sendmmsg                      # N = 1, 10, 50, 100, 200, 400
    .venv/bin/python -m bench.sendmmsg --counts 100 200 --packets 2000

For each N: N listening sockets on 127.0.0.1 (drained between packets, outside the clock),
one sending socket, and `--packets` packets of 160 bytes (an SRTP'd Opus frame with RED is
about that), each sent to all N once with a `sendto` loop (relay_app.webrtc.sendmmsg's
fallback) and once with one `BatchSender.send` (sendmmsg), alternating. It records the CPU
time (this process: user + system, from os.times) per copy and per packet. On loopback the
kernel delivers each copy inside the sending call, so both include the receive side; the
difference is the calls saved. Results: bench/results/sendmmsg-<timestamp>.json and a table.
Not a pass/fail test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any

from relay_app.tools.testing import REPO
from relay_app.webrtc.sendmmsg import BatchSender, sendmmsg_available

RESULTS = REPO / "bench" / "results"
PAYLOAD = os.urandom(160)


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def drain(socks: Sequence[socket.socket]) -> None:
    for sock in socks:
        while True:
            try:
                sock.recv(2048)
            except BlockingIOError:
                break


def measure(count: int, packets: int) -> dict[str, Any]:
    with ExitStack() as stack:
        listeners = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
            listeners.append(sock)
        out = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        out.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        out.setblocking(False)
        copies = [(PAYLOAD, sock.getsockname()) for sock in listeners]
        ways: dict[str, BatchSender] = {
            "sendto": BatchSender(out, batched=False),
            "sendmmsg": BatchSender(out, batched=True),
        }
        spent = dict.fromkeys(ways, 0.0)
        wall = dict.fromkeys(ways, 0.0)
        for _ in range(packets):
            for name, sender in ways.items():
                send: Callable[[Sequence[tuple[bytes, Any]]], int] = sender.send
                cpu, started = cpu_seconds(), time.perf_counter()
                send(copies)
                wall[name] += time.perf_counter() - started
                spent[name] += cpu_seconds() - cpu
                drain(listeners)
        row: dict[str, Any] = {"n": count, "packets": packets}
        for name, sender in ways.items():
            stats = sender.statistics()
            row[name] = {
                "us_per_copy_wall": round(wall[name] / (packets * count) * 1e6, 3),
                "us_per_copy_cpu": round(spent[name] / (packets * count) * 1e6, 3),
                "us_per_packet_wall": round(wall[name] / packets * 1e6, 1),
                "calls": stats.calls,
                "dropped": stats.dropped,
            }
        return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", nargs="+", type=int, default=[1, 10, 50, 100, 200, 400])
    parser.add_argument("--packets", type=int, default=1000, help="packets per N")
    args = parser.parse_args()
    if not sendmmsg_available():
        print("this system has no sendmmsg: both columns are sendto loops")
    rows = [measure(n, args.packets) for n in args.counts]
    header = f"{'N':>5}  {'sendto us/copy':>15}  {'sendmmsg us/copy':>17}  {'saved':>6}"
    print(header + "\n" + "-" * len(header))
    for row in rows:
        plain, batched = row["sendto"]["us_per_copy_wall"], row["sendmmsg"]["us_per_copy_wall"]
        saved = f"{(1 - batched / plain) * 100:.0f} %" if plain else "-"
        print(f"{row['n']:>5}  {plain:>15.2f}  {batched:>17.2f}  {saved:>6}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"sendmmsg-{time.strftime('%Y%m%d-%H%M%S')}.json"
    result = {
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "payload_bytes": len(PAYLOAD),
        "sendmmsg_available": sendmmsg_available(),
        "rows": rows,
    }
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
