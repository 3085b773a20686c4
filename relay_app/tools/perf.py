"""`python -m relay_app.perf`: end-to-end latency through a running relay (the old
performance_test.py).

    python -m relay_app.perf --receivers 5 --seconds 10
    python -m relay_app.perf --url ws://192.168.1.50:8080/ws

One sender and N receivers in this process, on one clock. The sender's "microphone" beeps
(1 kHz, 100 ms) once a second; each receiver decodes what the relay sends and notes when each
beep's first loud frame comes out of its decoder. Latency = that moment - the moment the beep
left the sender's microphone: capture, Opus encode, network, relay, jitter buffer and decode,
everything but the sound card. Prints a JSON report; exit code 1 if a receiver heard nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import anyio
import numpy as np
import numpy.typing as npt
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame
from av.frame import Frame
from av.packet import Packet

from ..audio.levels import rms_dbfs
from ..client import PacedTrack, RelayClient
from ..client.cli import URL_HELP, default_url
from ..client.tracks import SAMPLE_RATE
from ..core.errors import sole_error
from ..webrtc.ice import use_host_addresses

BEEP_HZ = 1000.0
BEEP_SECONDS = 0.1
PERIOD_SECONDS = 1.0
LOUD_DBFS = -30.0


class BeepTrack(PacedTrack):
    """A 100 ms beep every second; remembers when each beep's first frame left."""

    def __init__(self) -> None:
        super().__init__()
        self.onsets: list[float] = []

    def samples(self, offset: int, count: int) -> npt.NDArray[np.int16]:
        index = np.arange(offset, offset + count)
        in_beep = (index % int(PERIOD_SECONDS * SAMPLE_RATE)) < BEEP_SECONDS * SAMPLE_RATE
        if in_beep[0] and offset % int(PERIOD_SECONDS * SAMPLE_RATE) == 0:
            self.onsets.append(time.monotonic())
        tone = 0.5 * np.sin(2 * math.pi * BEEP_HZ * index / SAMPLE_RATE)
        return (np.where(in_beep, tone, 0.0) * 32767).astype(np.int16)


def _loud(frame: Frame | Packet) -> bool:
    if not isinstance(frame, AudioFrame):
        return False
    return rms_dbfs(frame.to_ndarray() / 32768.0) > LOUD_DBFS


async def _detect(track: MediaStreamTrack, heard: list[float]) -> None:
    previous_loud = True  # ignore a beep already under way when we join
    try:
        while True:
            frame = await track.recv()
            loud = _loud(frame)
            if loud and not previous_loud:
                heard.append(time.monotonic())
            previous_loud = loud
    except MediaStreamError:
        pass


def _latencies(onsets: list[float], heard: list[float]) -> list[float]:
    """Match each heard onset with the latest beep sent before it (within one period)."""
    result = []
    for at in heard:
        sent = [t for t in onsets if t <= at]
        if sent and at - sent[-1] < PERIOD_SECONDS:
            result.append(at - sent[-1])
    return result


async def measure(url: str, receivers: int, seconds: float) -> dict[str, Any]:
    beeps = BeepTrack()
    heard: list[list[float]] = [[] for _ in range(receivers)]
    async with RelayClient.connect(url) as sender, anyio.create_task_group() as tg:
        stream_id = await sender.start_sending(beeps)

        async def listen(index: int) -> None:
            async with RelayClient.connect(url) as client:

                def on_track(pc: Any, track: MediaStreamTrack) -> None:
                    tg.start_soon(_detect, track, heard[index])

                await client.start_receiving(stream_id, on_track=on_track)
                await anyio.sleep(seconds + 1)

        async with anyio.create_task_group() as listeners:
            for index in range(receivers):
                listeners.start_soon(listen, index)
        tg.cancel_scope.cancel()
    per_receiver = [_latencies(beeps.onsets, h) for h in heard]
    everything = sorted(x for xs in per_receiver for x in xs)

    def ms(values: list[float], q: float) -> float | None:
        if not values:
            return None
        return round(1000 * values[min(len(values) - 1, int(q * len(values)))], 1)

    return {
        "url": url,
        "stream_id": stream_id,
        "receivers": receivers,
        "beeps_sent": len(beeps.onsets),
        "beeps_heard_per_receiver": [len(xs) for xs in per_receiver],
        "latency_ms": {
            "p50": ms(everything, 0.5),
            "p95": ms(everything, 0.95),
            "max": ms(everything, 1.0),
            "mean": round(1000 * statistics.fmean(everything), 1) if everything else None,
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m relay_app.perf", description=__doc__)
    parser.add_argument("--url", default=default_url(), help=URL_HELP)
    parser.add_argument("--receivers", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--ice-address", action="append", help="media candidate address")
    args = parser.parse_args(argv)
    if args.ice_address:
        use_host_addresses(args.ice_address)
    try:
        report = anyio.run(measure, args.url, args.receivers, args.seconds)
    except Exception as group:  # a CLI's last resort: say what broke, exit non-zero
        error = sole_error(group)
        print(f"perf failed: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2))
    return 0 if all(report["beeps_heard_per_receiver"]) else 1


if __name__ == "__main__":
    sys.exit(main())
