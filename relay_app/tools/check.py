"""`python -m relay_app.check`: can a client reach the relay? (the old guide's test_ws.py)

    python -m relay_app.check                         # ws://localhost:8080/ws
    python -m relay_app.check --url ws://192.168.1.50:8080/ws
    python -m relay_app.check --listen 3              # also receive 3 s of the newest stream

Connects to /ws, prints the welcome, the live streams and the ping round trip, and with
--listen receives audio and reports its level and dominant frequency. Exit code 0 when every
step worked, 1 otherwise, with the reason on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

import anyio
import websockets

from ..audio.levels import rms_dbfs
from ..client import RelayClient, ServerError, dominant_frequency
from ..client.cli import URL_HELP, default_url, describe
from ..core import protocol as p
from ..core.errors import sole_error
from ..webrtc.ice import use_host_addresses


class NoAudio(Exception):
    """Connected, receiving, and yet no (or too little) audio came."""


async def run_check(url: str, listen: float) -> dict[str, object]:
    report: dict[str, object] = {"url": url}
    async with RelayClient.connect(url, open_timeout=5) as client:
        report["websocket"] = "connected"
        report["connection_id"] = client.connection_id
        started = time.perf_counter()
        await client.send(p.Ping())
        await client.receive(p.Pong)
        report["ping_ms"] = round((time.perf_counter() - started) * 1000, 1)
        await client.send(p.GetAvailableStreams())
        streams = await client.receive(p.AvailableStreams)
        report["streams"] = [s.stream_id for s in streams.streams]
        if listen > 0:
            report["receiving"] = await client.start_receiving()
            try:
                await client.wait_audio(listen, timeout=listen + 10)
            except TimeoutError:
                heard = round(client.recorder.seconds, 1)
                raise NoAudio(
                    f"no audio arrived within {listen + 10:g} s ({heard} s heard)"
                ) from None
            audio = client.recorder.audio(listen)
            report["audio_seconds"] = round(client.recorder.seconds, 2)
            report["audio_rms_dbfs"] = round(rms_dbfs(audio), 1)
            report["dominant_hz"] = round(dominant_frequency(audio, client.recorder.sample_rate))
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m relay_app.check", description=__doc__)
    parser.add_argument("--url", default=default_url(), help=URL_HELP)
    parser.add_argument("--listen", type=float, default=0, metavar="SECONDS")
    parser.add_argument("--ice-address", action="append", help="media candidate address")
    args = parser.parse_args(argv)
    if args.ice_address:
        use_host_addresses(args.ice_address)
    try:
        report = anyio.run(run_check, args.url, args.listen)
    except Exception as group:  # a CLI's last resort: say what broke, exit non-zero
        error = sole_error(group)
        if isinstance(error, ServerError):
            print(f"check failed: the server said: {error.message}", file=sys.stderr)
        elif isinstance(error, NoAudio):
            print(f"check failed: {error}", file=sys.stderr)
        elif isinstance(error, OSError | websockets.InvalidHandshake):
            print(f"check failed: cannot reach {args.url}: {describe(error)}", file=sys.stderr)
        else:
            print(f"check failed: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
