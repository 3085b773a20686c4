"""The handover gap per kind of output, over many handovers.

    .venv/bin/python -m bench.handover                        # every kind, 20 takeovers each
    .venv/bin/python -m bench.handover --kinds fast_path ogg --count 10
    .venv/bin/python -m bench.handover --pause 1.0            # stop, 1 s of quiet, next speaker

For each kind of output (a WebRTC listener on the fast path, one with RED, one fed through an
aiortc track, one in transcode mode, a plain-HTTP Ogg listener, the channel's recording, a
WebRTC listener on node B of a channel spoken on node A over real Redis): a fresh server,
one listener of the channel "stage", and `--count` handovers, each next speaker taking the
channel over (or, with `--pause`, starting that long after the one before stopped) and
speaking for `--hold` seconds. For each handover, from what the listener received (RTP
packets and their timestamps, Ogg pages and their granule positions, as they arrived):

- silence: the longest wait at the listener from one packet to the next (an Ogg page's first
  packet came as long before the page as the page's audio, less one packet, lasts);
- error: how far the timeline's skip at that wait is from the wait less one packet (the audio
  that really was not there); drift: the timeline's offset from the wall clock in the second
  before the handover against the last second of the next speaker.

The recording has no arrival times: its row counts the files and, in a single file, its
skips against the fast-path listener beside it. The same measures as
tests/scenarios/test_handover_gap.py, which bounds them (100 ms); here their spread.
Results: bench/results/handover-<timestamp>.json and a table on stdout. Not a pass/fail test.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import multiprocessing as mp
import os
import platform
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import anyio
from aiortc.rtp import RtpPacket

from bench.fanout import RESULTS
from relay_app.audio.ogg import OPUS_RATE, page_granule, page_samples
from relay_app.client import RelayClient, ToneTrack
from relay_app.core import protocol as p
from relay_app.tools.ogg_listener import ogg_listener
from relay_app.tools.testing import (
    REPO,
    RedisProcess,
    ServerProcess,
    cluster_config,
    deep_merge,
)
from relay_app.webrtc.ice import use_host_addresses
from relay_app.webrtc.rtp_tap import tap_receiver

KINDS = ("fast_path", "red", "aiortc_track", "transcode", "ogg", "recording", "cluster")
CONFIG: dict[str, dict[str, Any]] = {
    "aiortc_track": {"relay": {"fast_path": False}},
    "transcode": {"relay": {"mode": "transcode"}},
}
CHANNELS = {"stage": {"label": "Main stage"}}
FRAME = 960  # one 20 ms packet at 48 kHz


class Piece(NamedTuple):
    """What a listener received: when (None: a recording's page), where on its timeline it
    starts, how long it lasts (48 kHz samples)."""

    arrival: float | None
    start: int
    samples: int


def rtp_pieces(packets: list[tuple[float, int]]) -> list[Piece]:
    """(arrival, timestamp) of each RTP packet, its timestamp unwrapped past 2**32."""
    pieces: list[Piece] = []
    position = last = 0
    for index, (arrival, timestamp) in enumerate(packets):
        if index == 0:
            position = timestamp
        else:
            step = (timestamp - last) & 0xFFFFFFFF
            position += step - (1 << 32) if step >= 1 << 31 else step
        last = timestamp
        pieces.append(Piece(arrival, position, FRAME))
    return pieces


def ogg_pieces(body: bytes | bytearray, arrivals: list[tuple[float, int]] | None) -> list[Piece]:
    """Each audio page of an Ogg/Opus stream, with the arrival of the chunk that completed it."""
    pieces, offset = [], 0
    while offset + 27 <= len(body):
        segments = body[offset + 26]
        end = offset + 27 + segments + sum(body[offset + 27 : offset + 27 + segments])
        if end > len(body):
            break
        data, offset = bytes(body[offset:end]), end
        samples = page_samples(data) if data[28:36] not in (b"OpusHead", b"OpusTags") else 0
        if samples:
            arrival = next(at for at, length in arrivals if length >= end) if arrivals else None
            pieces.append(Piece(arrival, page_granule(data) - samples, samples))
    return pieces


@dataclass
class Measure:
    """One handover as a listener saw it (seconds)."""

    silence: float
    error: float
    drift: float
    steps_back: int


def measure(pieces: list[Piece], moment: float, until: float) -> Measure:
    """The handover after `moment` in the pieces that arrived before `until`."""
    timed = [piece for piece in pieces if piece.arrival is not None and piece.arrival < until]

    def waited(a: Piece, b: Piece) -> float:
        assert a.arrival is not None and b.arrival is not None
        return b.arrival - (b.samples - FRAME) / OPUS_RATE - a.arrival

    def skip(a: Piece, b: Piece) -> float:
        return (b.start - (a.start + a.samples)) / OPUS_RATE

    def offset(window: list[Piece]) -> float:
        return statistics.median(
            float(piece.arrival or 0) - (piece.start + piece.samples) / OPUS_RATE
            for piece in window
        )

    pairs = [pair for pair in itertools.pairwise(timed) if (pair[1].arrival or 0) >= moment]
    a, b = max(pairs, key=lambda pair: waited(*pair))
    before = [piece for piece in timed if moment - 1.0 <= (piece.arrival or 0) < moment]
    settled = [piece for piece in timed if (piece.arrival or 0) >= until - 1.0]
    return Measure(
        silence=waited(a, b),
        error=skip(a, b) - (waited(a, b) - FRAME / OPUS_RATE),
        drift=offset(settled) - offset(before),
        steps_back=sum(skip(*pair) < 0 for pair in pairs),
    )


def wait_until(condition: Callable[[], bool], timeout: float = 10) -> None:
    """Poll, in a worker thread (the loop carries the speakers' audio meanwhile)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError("a condition was not met in time")
        time.sleep(0.05)


def listener_main(kind: str, url: str, ready: Any, stop: Any, out: Any) -> None:
    """The listener, in a process of its own (so the speakers' setup in the bench's process
    cannot delay its arrival times; time.monotonic() is the machine's): what it received,
    from `ready` until `stop`, goes to `out`."""
    if kind == "ogg":
        chunks: list[tuple[float, int]] = []
        with ogg_listener(url, chunks) as body:
            ready.set()
            stop.wait()
        out.put(("ogg", bytes(body), list(chunks)))
        return
    use_host_addresses(["127.0.0.1"])
    packets: list[tuple[float, int]] = []

    async def listen() -> None:
        async with RelayClient.connect(url) as client:
            client.red = kind == "red"
            await client.start_receiving("stage")
            assert client.pc is not None

            def note(packet: RtpPacket, arrival: float) -> None:
                packets.append((arrival, packet.timestamp))

            tap_receiver(client.pc.getReceivers()[0], note)
            ready.set()
            await anyio.to_thread.run_sync(stop.wait)

    anyio.run(listen)
    out.put(("rtp", packets))


@dataclass
class Stage:
    """A kind's server(s) (two nodes for the cluster kind), and its listener's process."""

    kind: str
    speaking: ServerProcess
    listening: ServerProcess
    directory: Path | None = None
    received: Any = None  # what the listener's process sent back

    @asynccontextmanager
    async def listener(self) -> AsyncIterator[None]:
        """The listener joins (the channel's speaker is live) and listens until the block ends."""
        listening = self.listening  # (node B lists node A's channel)
        await anyio.to_thread.run_sync(
            wait_until, lambda: "stage" in listening.get("/stream/status", status_port=True).text
        )
        ogg = f"{listening.status_url}/stream/stage.ogg"
        url = ogg if self.kind == "ogg" else listening.ws_url
        context = mp.get_context("spawn")
        ready, stop, out = context.Event(), context.Event(), context.Queue()
        process = context.Process(target=listener_main, args=(self.kind, url, ready, stop, out))
        process.start()
        try:
            if not await anyio.to_thread.run_sync(ready.wait, 30):
                raise RuntimeError("the listener did not start")
            yield
            stop.set()
            self.received = await anyio.to_thread.run_sync(out.get, True, 30)
        finally:
            stop.set()
            await anyio.to_thread.run_sync(process.join, 10)
            if process.is_alive():
                process.terminate()

    def pieces(self) -> list[Piece]:
        if self.received[0] == "ogg":
            return ogg_pieces(self.received[1], self.received[2])
        return rtp_pieces(self.received[1])


@contextmanager
def stage(kind: str, tmp: Path) -> Iterator[Stage]:
    config = deep_merge({"channels": CHANNELS}, CONFIG.get(kind, {}))
    servers: list[ServerProcess] = []
    redis: RedisProcess | None = None
    try:
        if kind == "cluster":
            redis = RedisProcess().start()
            for node in "ab":
                servers.append(
                    ServerProcess(tmp, deep_merge(config, cluster_config(redis.url, node)))
                )
                servers[-1].start().wait_event("cluster_joined")
            yield Stage(kind, servers[0], servers[1])
            return
        directory = None
        if kind == "recording":
            directory = tmp / f"recordings-{time.monotonic_ns()}"
            config = deep_merge(
                config, {"recording": {"enabled": True, "directory": str(directory)}}
            )
        servers.append(ServerProcess(tmp, config).start())
        yield Stage(kind, servers[0], servers[0], directory)
    finally:
        for server in servers:
            server.stop()
        if redis is not None:
            redis.stop()


async def speak(url: str, hz: float, takeover: bool, live: anyio.Event, done: anyio.Event) -> None:
    """A speaker on the channel until `done` (then it stops, as a person presses Stop)."""
    async with RelayClient.connect(url) as speaker:
        await speaker.start_sending(ToneTrack(hz), channel="stage", takeover=takeover)
        live.set()
        await done.wait()
        with contextlib.suppress(Exception):  # (a speaker taken over has nothing to stop)
            await speaker.send(p.Stop())


async def run_kind(kind: str, count: int, hold: float, pause: float, tmp: Path) -> dict[str, Any]:
    with stage(kind, tmp) as it:
        handovers: list[tuple[float, float]] = []  # (its moment, the end of its window)
        async with anyio.create_task_group() as tg:
            done = anyio.Event()
            live = anyio.Event()
            tg.start_soon(speak, it.speaking.ws_url, 440, False, live, done)
            await live.wait()
            async with it.listener():
                await anyio.sleep(hold)
                for index in range(count):
                    previous, done, live = done, anyio.Event(), anyio.Event()
                    moment = time.monotonic()
                    if pause:
                        previous.set()
                        await anyio.sleep(pause)
                    hz = (660, 440)[index % 2]
                    tg.start_soon(speak, it.speaking.ws_url, hz, not pause, live, done)
                    await live.wait()
                    await anyio.sleep(hold)
                    previous.set()  # (a speaker taken over leaves now)
                    handovers.append((moment, time.monotonic()))
            done.set()
        pieces = it.pieces()
        measures = [measure(pieces, moment, until) for moment, until in handovers]
        row: dict[str, Any] = {"kind": kind, "handovers": len(measures)}
        for name in ("silence", "error", "drift"):
            values: list[float] = [getattr(m, name) * 1000 for m in measures]
            worst = max(values, key=abs)
            row[f"{name}_ms"] = {
                "median": round(statistics.median(values), 1),
                "max": round(worst, 1),
            }
        row["steps_back"] = sum(m.steps_back for m in measures)
        if it.directory is not None:
            started = len(it.speaking.find("recording_started"))
            server = it.speaking
            await anyio.to_thread.run_sync(
                wait_until, lambda: len(server.find("recording_ended")) >= started
            )
            files = [ogg_pieces(path.read_bytes(), None) for path in it.directory.glob("*.ogg")]
            skips = [
                (b.start - (a.start + a.samples)) / OPUS_RATE
                for pieces in files
                for a, b in itertools.pairwise(pieces)
            ]
            row["recording"] = {
                "files": len(files),
                "skips_over_20_ms": sum(s > 0.02 for s in skips),
                "longest_skip_ms": round(max(skips, default=0.0) * 1000, 1),
            }
        return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--count", type=int, default=20, help="handovers per kind")
    parser.add_argument("--hold", type=float, default=1.5, help="seconds each speaker speaks")
    parser.add_argument(
        "--pause", type=float, default=0.0, help="seconds of quiet between speakers (0: takeover)"
    )
    args = parser.parse_args()
    use_host_addresses(["127.0.0.1"])
    rows = []
    print(f"{'kind':<13} {'silence ms':>16} {'error ms':>16} {'drift ms':>16}  back  recording")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds:
            row = anyio.run(run_kind, kind, args.count, args.hold, args.pause, Path(tmp))
            rows.append(row)
            cells = [
                f"{row[name]['median']:>7} / {row[name]['max']:>6}"
                for name in ("silence_ms", "error_ms", "drift_ms")
            ]
            print(
                f"{kind:<13} {' '.join(cells)}  {row['steps_back']:>4}  {row.get('recording', '')}"
            )
    print(f"(median / worst of each, worst = largest in size; load {os.getloadavg()[0]:.2f})")
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": platform.platform(),
        # Other work on the machine spreads the tails (1-minute load average, at the end).
        "load_average": round(os.getloadavg()[0], 2),
        "count": args.count,
        "hold": args.hold,
        "pause": args.pause,
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"handover-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
