"""Fan-out benchmark: one sender, N lightweight receivers, both relay modes, all on 127.0.0.1.

    .venv/bin/python bench/fanout.py                    # both modes, N = 0, 1, 10, 25, ... 400
    .venv/bin/python bench/fanout.py --counts 1 10 50 --window 5
    .venv/bin/python -m bench.fanout --janus --counts 0 1 100 200 400   # + Janus, same run

With --janus, Debian's Janus 1.1.2 (streaming plugin, fed the same kind of Opus by ffmpeg,
loopback only) is measured in the same run by the shared harness (../shared/anchors/janus:
run its setup.sh once), with the same kind of receivers (aiortc, counting RTP), and its rows
join the table. N = 0 is the stream with no receivers (idle stream CPU); per-receiver CPU and
RSS are differences from it.

For each mode and N: a fresh server (`python -m relay_app`), a sender streaming a tone
(`relay_app.client send`), and N receivers spread over worker processes. Receivers count
and timestamp RTP packets without decoding them; like browsers they take RED whenever the
relay offers it (relay.red, on by default: `--modes forward+nored` measures plain Opus;
`forward+nice` runs the server at nice -10, as on a machine it shares; `forward+port` serves
every peer on one UDP port, webrtc.udp_port).
After the window each receiver decodes its last second (`tone`: how many heard the
sender's 440 Hz). Over a measurement window it records the server's CPU (% of one core, from
its /proc stats), RSS, packets lost (gaps in each receiver's RTP sequence numbers), and the
relay-added latency (ingress -> a receiver's sender) from the server's own histogram, and what
the kernel dropped for a full UDP buffer meanwhile (`kdrop`, machine-wide). A mode stops
growing N once it saturates (loss >= 5 %).

Results: bench/results/fanout-<timestamp>.json and a table on stdout. Not a pass/fail test.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from relay_app.tools.exposition import histogram_buckets, quantile
from relay_app.tools.testing import REPO, ServerProcess, deep_merge, free_udp_port, start_client

RESULTS = REPO / "bench" / "results"
PER_WORKER = 40
TONE_HZ = 440
CLK_TCK = os.sysconf("SC_CLK_TCK")
NICE = -10  # `forward+nice`: the server's priority (needs root or CAP_SYS_NICE)


def udp_drops() -> dict[str, int]:
    """The kernel's UDP drop counters (all processes: /proc/net/snmp): a full receive buffer
    (a receiver that did not read in time) and a full send buffer."""
    lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines()]
    names, values = [line for line in lines if line[0] == "Udp:"][:2]
    counts = dict(zip(names[1:], map(int, values[1:]), strict=True))
    return {key: counts[key] for key in ("RcvbufErrors", "SndbufErrors")}


# -- the server under test ---------------------------------------------------------------------
class Server(ServerProcess):
    """The tests' server process, with what the benchmark measures on top."""

    def __init__(self, mode: str, tmp: Path, extra: dict[str, Any] | None = None) -> None:
        mode, _, variant = mode.partition("+")
        config: dict[str, Any] = {
            "server": {"max_connections": 2000},
            "webrtc": {"connection_timeout": 600},  # packet counters send no RTCP reports
            "relay": {"mode": mode},
            "streams": {"max_receivers": 5000, "max_http_listeners": 5000},
        }
        if variant in ("fast", "aiortc"):  # relay.fast_path on/off: `--modes forward+aiortc`
            config["relay"]["fast_path"] = variant == "fast"
        if variant == "port":  # every peer on one UDP port (webrtc.udp_port): `forward+port`
            config["webrtc"]["udp_port"] = free_udp_port()
        if variant == "nored":  # relay.red off: receivers get plain Opus (`--modes forward+nored`)
            config["relay"]["red"] = False
        super().__init__(tmp, deep_merge(config, extra or {}))
        self.start()
        if variant == "nice":  # the server at nice -10, as an operator may run it (`forward+nice`)
            assert self.proc is not None
            os.setpriority(os.PRIO_PROCESS, self.proc.pid, NICE)

    def start_sender(self) -> subprocess.Popen[str]:
        """A tone sender (`relay_app.client send`), returned once its stream is live."""
        sender = start_client(
            self.ws_url,
            "send",
            "--tone",
            str(TONE_HZ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while self.metrics()["active_streams"] < 1:
            if time.monotonic() > deadline or sender.poll() is not None:
                sender.kill()
                raise RuntimeError("the sender did not start")
            time.sleep(0.2)
        return sender

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime

    def latency_buckets(self) -> list[tuple[float, int]]:
        text = self.get("/metrics", headers={"Accept": "text/plain"}).text
        return histogram_buckets(text, "relay_latency_seconds")


# -- receivers in worker processes -------------------------------------------------------------
def worker_main(
    url: str, count: int, ready: Any, commands: Any, results: Any, levels: bool = False
) -> None:
    import anyio

    from relay_app.client import RelayClient
    from relay_app.webrtc.ice import use_host_addresses
    from relay_app.webrtc.rtp_tap import audio_receiver, tap_receiver
    from relay_app.webrtc.sdp import red_payload_type

    use_host_addresses(["127.0.0.1"])
    # Per receiver: arrival times (monotonic -> converted to wall clock) and sequence numbers,
    # and its last second of payloads, decoded once the window is over (what it heard).
    offset = time.time() - time.monotonic()
    arrivals: list[list[tuple[float, int]]] = [[] for _ in range(count)]
    last_second: list[deque[tuple[bool, bytes]]] = [deque(maxlen=50) for _ in range(count)]

    async def one(index: int, connected: Any) -> None:
        log, payloads = arrivals[index], last_second[index]

        def on_track(pc: Any, track: Any) -> None:
            red_types: list[int | None] = []  # (the description is set after the track)

            def on_packet(packet: Any, arrival: float) -> None:
                log.append((arrival + offset, packet.sequence_number))
                if not red_types:
                    red_types.append(red_payload_type(pc.remoteDescription.sdp))
                payloads.append((packet.payload_type == red_types[0], packet.payload))

            tap_receiver(audio_receiver(pc, track), on_packet, then_aiortc=False)

        async with RelayClient.connect(url) as client:
            client.red = True  # as browsers do: RED whenever the relay offers it
            await client.start_receiving(on_track=on_track, visualization=levels)
            connected.release()
            await anyio.sleep_forever()

    async def main() -> None:
        limiter = anyio.Semaphore(8)  # negotiate a few at a time, like people joining
        connected = anyio.Semaphore(0, max_value=count)

        async def start(index: int) -> None:
            async with limiter:
                gate = anyio.Semaphore(0)
                tg.start_soon(one, index, gate)
                await gate.acquire()
            connected.release()

        async with anyio.create_task_group() as tg:
            for index in range(count):
                tg.start_soon(start, index)
            for _ in range(count):
                await connected.acquire()
            ready.put(count)
            start_at, end_at = await anyio.to_thread.run_sync(commands.recv)
            await anyio.sleep(max(0.0, end_at - time.time()) + 0.5)
            heard = [tone_of(payloads) for payloads in last_second]
            results.put(
                [
                    (*window_counts(log, start_at, end_at), hz)
                    for log, hz in zip(arrivals, heard, strict=True)
                ]
            )
            tg.cancel_scope.cancel()

    anyio.run(main)


def tone_of(payloads: deque[tuple[bool, bytes]]) -> float:
    """The dominant Hz of a receiver's last payloads (is it RED, the payload), decoded as a
    player would: the primary Opus of each RED packet, a plain Opus packet itself."""
    import av

    from relay_app.client import Recorder, dominant_frequency
    from relay_app.webrtc import red

    decoder, heard = av.CodecContext.create("opus", "r"), Recorder(keep_seconds=2.0)
    for is_red, payload in payloads:
        blocks = red.split(payload) if is_red else None
        if is_red and not blocks:
            continue  # (malformed RED: nothing a player could decode)
        for frame in decoder.decode(av.Packet(blocks[-1].payload if blocks else payload)):
            heard.add(frame)
    return dominant_frequency(heard.audio(), heard.sample_rate)


def window_counts(log: list[tuple[float, int]], start: float, end: float) -> tuple[int, int]:
    """What one receiver got in [start, end): distinct packets, and the span of sequence
    numbers from its first to its last (unwrapped): span - got = packets lost in between."""
    numbers: set[int] = set()
    previous = extended = None
    for at, sequence in log:
        if not start <= at < end:
            continue
        if previous is None or extended is None:
            extended = sequence
        else:
            delta = (sequence - previous) & 0xFFFF
            extended += delta - 0x10000 if delta >= 0x8000 else delta
        previous = sequence
        numbers.add(extended)
    return len(numbers), (max(numbers) - min(numbers) + 1 if numbers else 0)


class ReceiverPool:
    """Receivers in worker processes, PER_WORKER each (bench/cluster.py uses it too)."""

    def __init__(self) -> None:
        self._ctx = mp.get_context("spawn")
        self.workers: list[Any] = []
        self.pipes: list[Any] = []
        self.ready, self.results = self._ctx.Queue(), self._ctx.Queue()

    def add(self, url: str, receivers: int, levels: bool = False) -> None:
        remaining = receivers
        while remaining:
            count = min(PER_WORKER, remaining)
            remaining -= count
            parent, child = self._ctx.Pipe()
            process = self._ctx.Process(
                target=worker_main, args=(url, count, self.ready, child, self.results, levels)
            )
            process.start()
            self.workers.append(process)
            self.pipes.append(parent)

    def stop(self) -> None:
        for process in self.workers:
            process.terminate()
        for process in self.workers:
            process.join(10)


# -- one measurement ---------------------------------------------------------------------------
@dataclass
class Point:
    mode: str
    receivers: int
    cpu_percent: float
    cpu_per_receiver: float
    rss_mb: float
    delivered: int
    expected: int
    # Packets missing between each receiver's first and last in the window (its sequence
    # numbers: exact); against the sender's count instead (±1 packet per receiver at the
    # window's edges, ~0.2 % in 10 s, is the moments the server's counters were read).
    loss_percent: float
    min_receiver_packets: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    setup_seconds: float
    # Datagrams the kernel dropped in the window, machine-wide: a receiver's buffer full
    # (RcvbufErrors: the receiving client fell behind), a sender's (SndbufErrors).
    udp_drops: dict[str, int] | None = None
    loss_vs_sender_percent: float | None = None
    # Receivers whose last second, decoded after the window, is the sender's tone (±10 Hz).
    tone_heard: int | None = None


def measure(mode: str, receivers: int, window: float, tmp: Path, levels: bool = False) -> Point:
    if receivers == 0:
        return measure_idle(mode, window, tmp)
    return measure_receivers(mode, receivers, window, tmp, levels)


def measure_idle(mode: str, window: float, tmp: Path) -> Point:
    """N = 0: the server with one live stream and nobody listening."""
    with streaming(mode, tmp) as server:
        time.sleep(2.0)
        cpu0 = server.cpu_seconds()
        time.sleep(window)
        cpu = 100 * (server.cpu_seconds() - cpu0) / window
        rss = server.metrics()["process"]["rss_mb"]
        return Point(mode, 0, round(cpu, 1), 0.0, round(rss, 1), 0, 0, 0.0, 0, None, None, None, 0)


@contextmanager
def streaming(mode: str, tmp: Path) -> Iterator[Server]:
    """A fresh server with one tone sender live on it; both stopped on the way out."""
    server = Server(mode, tmp)
    try:
        sender = server.start_sender()
        try:
            yield server
        finally:
            sender.terminate()
            sender.wait(10)
    finally:
        server.stop()


def janus_points(counts: list[int], window: float, harness: Path) -> list[Point]:
    """The same sweep against Janus, by the shared harness (its own receivers and ffmpeg)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = RESULTS / f"janus-{stamp}.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    command = [
        "python3",
        str(harness / "bench.py"),
        "--target",
        "janus",
        "--ns",
        ",".join(str(n) for n in counts),
        "--window",
        str(window),
        "--settle",
        "5",
        "--stop-loss",
        "5",
        "--tag",
        f"fanout-{stamp}",
        "--out",
        str(out),
    ]
    subprocess.run(command, check=True, cwd="/tmp/janus-bench", timeout=3600)
    rows = json.loads(out.read_text())["results"]
    return [
        Point(
            mode="janus",
            receivers=row["N"],
            cpu_percent=row["server_cpu_pct"],
            cpu_per_receiver=round(row["server_cpu_pct"] / row["N"], 3) if row["N"] else 0.0,
            rss_mb=row["server_rss_mb"],
            delivered=0,
            expected=0,
            loss_percent=row.get("seq_gap_loss_pct") or 0.0,
            loss_vs_sender_percent=row.get("loss_vs_nominal_pct"),
            min_receiver_packets=row.get("min_receiver_pkts_in_window", 0),
            latency_p50_ms=None,  # Janus has no relay-added latency histogram
            latency_p95_ms=None,
            latency_p99_ms=None,
            setup_seconds=0,
        )
        for row in rows
    ]


def measure_receivers(
    mode: str, receivers: int, window: float, tmp: Path, levels: bool = False
) -> Point:
    with streaming(mode, tmp) as server:
        pool = ReceiverPool()
        workers, pipes, ready, results = pool.workers, pool.pipes, pool.ready, pool.results
        try:
            started = time.monotonic()
            pool.add(server.ws_url, receivers, levels)
            connected = sum(_get(ready, workers) for _ in workers)
            setup = time.monotonic() - started
            assert connected == receivers
            start_at = time.time() + 2.0  # let the last joiners settle
            end_at = start_at + window
            for pipe in pipes:
                pipe.send((start_at, end_at))
            time.sleep(max(0.0, start_at - time.time()))
            cpu0, buckets0 = server.cpu_seconds(), server.latency_buckets()
            sent0, drops0 = server.metrics()["relay"]["packets_in"], udp_drops()
            time.sleep(max(0.0, end_at - time.time()))
            cpu1, buckets1 = server.cpu_seconds(), server.latency_buckets()
            sent1, drops1 = server.metrics()["relay"]["packets_in"], udp_drops()
            rss = server.metrics()["process"]["rss_mb"]
            got = [row for _ in workers for row in _get(results, workers, timeout=60)]
            counts = [n for n, _, _ in got]
            delivered, spans = sum(counts), max(sum(span for _, span, _ in got), 1)
            tone_heard = sum(abs(hz - TONE_HZ) <= 10 for _, _, hz in got)
            # What the sender sent in the window, once per receiver.
            expected = max((sent1 - sent0) * receivers, 1)
            delta = [(b1[0], b1[1] - b0[1]) for b0, b1 in zip(buckets0, buckets1, strict=True)]
            cpu = 100 * (cpu1 - cpu0) / window

            def ms(value: float | None) -> float | None:
                return None if value is None else round(value * 1000, 2)

            return Point(
                mode=mode,
                receivers=receivers,
                cpu_percent=round(cpu, 1),
                cpu_per_receiver=round(cpu / receivers, 3),
                rss_mb=round(rss, 1),
                delivered=delivered,
                expected=expected,
                loss_percent=round(100 * (spans - delivered) / spans, 2),
                loss_vs_sender_percent=round(100 * max(0, expected - delivered) / expected, 2),
                min_receiver_packets=min(counts),
                latency_p50_ms=ms(quantile(delta, 0.5)),
                latency_p95_ms=ms(quantile(delta, 0.95)),
                latency_p99_ms=ms(quantile(delta, 0.99)),
                setup_seconds=round(setup, 1),
                udp_drops={key: drops1[key] - drops0[key] for key in drops0},
                tone_heard=tone_heard,
            )
        finally:
            pool.stop()


def _get(queue: Any, workers: list[Any], timeout: float = 300) -> Any:
    """The next item from a worker, failing fast if one of them died instead."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return queue.get(timeout=1)
        except Exception:  # queue.Empty
            dead = [w for w in workers if w.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"{len(dead)} receiver worker(s) failed") from None
    raise TimeoutError("receiver workers did not report in time")


def table(points: list[Point]) -> str:
    """One row per point; the per-receiver columns are differences from that mode's N = 0."""
    header = (
        f"{'system':<15} {'N':>4} {'cpu%':>7} {'+cpu%/rx':>9} {'rss MB':>7} {'+MB/rx':>7} "
        f"{'loss%':>6} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'kdrop':>6} {'tone':>5}"
    )
    lines = [header, "-" * len(header)]
    idle = {p.mode: p for p in points if p.receivers == 0}

    def f(value: float | None, digits: int = 2) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    for p in points:
        base = idle.get(p.mode)
        per_cpu = per_mb = None
        if base is not None and p.receivers:
            per_cpu = (p.cpu_percent - base.cpu_percent) / p.receivers
            per_mb = (p.rss_mb - base.rss_mb) / p.receivers
        lines.append(
            f"{p.mode:<15} {p.receivers:>4} {p.cpu_percent:>7.1f} {f(per_cpu, 3):>9} "
            f"{p.rss_mb:>7.1f} {f(per_mb, 3):>7} {p.loss_percent:>6.2f} "
            f"{f(p.latency_p50_ms):>7} {f(p.latency_p95_ms):>7} {f(p.latency_p99_ms):>7} "
            f"{sum(p.udp_drops.values()) if p.udp_drops else '-':>6} "
            f"{'-' if p.tone_heard is None else p.tone_heard:>5}"
        )
    return "\n".join(lines)


def summary(points: list[Point]) -> dict[str, Any]:
    """Per system: idle-stream CPU (N = 0), and per added receiver, at each N that kept up
    (loss < 5 %), the CPU and RSS over N = 0; then forward / Janus at the N both ran."""
    out: dict[str, Any] = {}
    per_rx: dict[str, dict[int, float]] = {}
    for system in sorted({p.mode for p in points}):
        rows = {p.receivers: p for p in points if p.mode == system}
        ok = [n for n, p in rows.items() if n and p.loss_percent < 1]
        ok = [n for n in ok if (rows[n].latency_p95_ms or 0) < 20]
        out[f"{system}_max_receivers_ok"] = max(ok, default=0)
        idle = rows.get(0)
        if idle is None:
            continue
        out[f"{system}_idle_stream_cpu_percent"] = idle.cpu_percent
        kept = {n: p for n, p in rows.items() if n and p.loss_percent < 5}
        per_rx[system] = {
            n: round((p.cpu_percent - idle.cpu_percent) / n, 3) for n, p in kept.items()
        }
        out[f"{system}_rss_mb_per_receiver"] = {
            n: round((p.rss_mb - idle.rss_mb) / n, 3) for n, p in kept.items()
        }
    out["cpu_percent_per_receiver"] = per_rx
    if "forward" in per_rx and "janus" in per_rx:
        common = sorted(set(per_rx["forward"]) & set(per_rx["janus"]))
        out["forward_over_janus_cpu_per_receiver"] = {
            n: round(per_rx["forward"][n] / per_rx["janus"][n], 2)
            for n in common
            if per_rx["janus"][n] > 0
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modes", nargs="+", default=["transcode", "forward"])
    parser.add_argument("--counts", nargs="+", type=int, default=[0, 1, 10, 25, 50, 100, 200, 400])
    parser.add_argument("--window", type=float, default=5.0, help="measurement seconds")
    parser.add_argument("--janus", action="store_true", help="also measure Janus, same run")
    parser.add_argument(
        "--levels",
        action="store_true",
        help="receivers ask for level messages (every receiver got them before levels were opt-in)",
    )
    parser.add_argument("--janus-harness", type=Path, default=REPO.parent / "shared/anchors/janus")
    args = parser.parse_args()
    points: list[Point] = []
    if args.janus:
        points += janus_points(args.counts, args.window, args.janus_harness)
        for point in points:
            print(table([point]).splitlines()[-1], flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes:
            for count in args.counts:
                point = measure(mode, count, args.window, Path(tmp), args.levels)
                if args.levels:
                    point.mode += "+levels"
                points.append(point)
                print(table([point]).splitlines()[-1], flush=True)
                if point.loss_percent >= 5:
                    print(f"{mode} saturated at {count} receivers", flush=True)
                    break
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    result = {
        "benchmark": "fanout",
        "when": stamp,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "window_seconds": args.window,
        "points": [asdict(p) for p in points],
        "summary": summary(points),
    }
    path = RESULTS / f"fanout-{stamp}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(table(points))
    print(json.dumps(result["summary"], indent=2))
    print(f"results: {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
