"""Slow-reader soak: clients that flood frames and never read, beside a listening pair.

    .venv/bin/python bench/slow_readers.py                      # 50 clients for 60 s
    .venv/bin/python bench/slow_readers.py --clients 10 --seconds 10

Each client connects with a small receive buffer, reads its `welcome` and nothing more, and
sends empty binary frames as fast as the server takes them; when the server closes it, it
connects again, until the time is up. Meanwhile a sender and a receiver keep a 440 Hz stream
going. Measured: how long each flooding session lived (server log: `client_connected` to
`connection_cleanup`), whether any outlived `webrtc.connection_timeout` +
`relay.teardown_timeout`, the server's RSS growth, how much audio the receiver heard, and that
every live count returns to zero. Results go to bench/results/slow-readers-<timestamp>.json;
`tests/test_hardening.py` runs a short version.
"""

from __future__ import annotations

import argparse
import datetime
import json
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import websockets

from relay_app.client import RelayClient, ToneTrack
from relay_app.ice import use_host_addresses
from relay_app.testing import REPO, ServerProcess

RESULTS = REPO / "bench" / "results"


async def flood_until_closed(url: str, port: int, deadline: float) -> str | None:
    """One connection: flood without reading until closed or `deadline`; its connection id."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    async with websockets.connect(url, sock=sock, max_queue=1, close_timeout=0.5) as ws:
        connection_id = json.loads(await ws.recv()).get("connection_id")
        with anyio.move_on_at(deadline):
            try:
                while True:
                    for _ in range(50):
                        await ws.send(b"")
                    await anyio.sleep(0.005)
            except websockets.ConnectionClosed:
                pass
        return str(connection_id) if connection_id else None


def _at(event: dict[str, Any]) -> float:
    return datetime.datetime.fromisoformat(event["timestamp"]).timestamp()


def session_lifetimes(server: ServerProcess, ids: set[str]) -> list[float]:
    """Seconds from `client_connected` to `connection_cleanup`, per flooding session."""
    opened = {e["connection_id"]: _at(e) for e in server.find("client_connected")}
    return [
        _at(e) - opened[e["connection_id"]]
        for e in server.find("connection_cleanup")
        if e.get("connection_id") in ids and e["connection_id"] in opened
    ]


async def slow_readers(server: ServerProcess, clients: int, seconds: float) -> dict[str, Any]:
    use_host_addresses(["127.0.0.1"])
    settings = server.config
    limit = settings.get("webrtc", {}).get("connection_timeout", 30.0) + settings.get(
        "relay", {}
    ).get("teardown_timeout", 3.0)
    rss_before = server.metrics()["process"]["rss_mb"]
    ids: set[str] = set()
    deadline = anyio.current_time() + seconds

    async def client() -> None:
        while anyio.current_time() < deadline:
            try:
                connection_id = await flood_until_closed(server.ws_url, server.port, deadline)
            except (OSError, websockets.WebSocketException):
                await anyio.sleep(0.1)  # refused while the server is busy: try again
                continue
            if connection_id:
                ids.add(connection_id)

    async with RelayClient.connect(server.ws_url) as sender:
        await sender.start_sending(ToneTrack(440))
        async with RelayClient.connect(server.ws_url) as receiver:
            await receiver.start_receiving()
            await receiver.wait_audio(0.5)
            heard, started = receiver.recorder.seconds, time.monotonic()
            async with anyio.create_task_group() as tg:
                for _ in range(clients):
                    tg.start_soon(client)
            elapsed = time.monotonic() - started
            heard = receiver.recorder.seconds - heard
    after = await anyio.to_thread.run_sync(server.wait_idle, 15.0)
    lifetimes = session_lifetimes(server, ids)
    return {
        "clients": clients,
        "seconds": seconds,
        "flooding_sessions": len(ids),
        "closed_sessions": len(lifetimes),
        "longest_session_s": round(max(lifetimes, default=0.0), 2),
        "limit_s": limit,
        "over_limit": sum(1 for t in lifetimes if t > limit),
        "rss_growth_mb": round(after["process"]["rss_mb"] - rss_before, 1),
        "audio_heard_ratio": round(heard / elapsed, 3),
        "errors": after["errors"],
        "live_after": after["live"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = {"server": {"max_connections": args.clients + 10}}
        server = ServerProcess(Path(tmp), config).start()
        try:
            server.take_baseline()
            result = anyio.run(slow_readers, server, args.clients, args.seconds)
        finally:
            server.stop()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"slow-readers-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"results: {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
