"""Slow-reader soak: clients that flood frames and never read, beside a listening pair.

    .venv/bin/python bench/slow_readers.py                      # 50 clients for 60 s
    .venv/bin/python bench/slow_readers.py --clients 10 --seconds 10
    .venv/bin/python bench/slow_readers.py --ogg --clients 10   # stalled Ogg listeners

Each client connects with a small receive buffer, reads its `welcome` and nothing more, and
sends empty binary frames as fast as the server takes them; when the server closes it, it
connects again, until the time is up. Meanwhile a sender and a receiver keep a 440 Hz stream
going. Measured: how long each flooding session lived (server log: `client_connected` to
`connection_cleanup`), whether any outlived `webrtc.connection_timeout` +
`relay.teardown_timeout`, the server's RSS growth, how much audio the receiver heard, and that
every live count returns to zero. Results go to bench/results/slow-readers-<timestamp>.json;
`tests/scenarios/test_hardening.py` runs a short version.

The same for plain-HTTP (Ogg) listeners, `ogg_slow_readers`: listeners of a fast stream
(`BulkOpusTrack`, ~500 KB/s) that never read, each with a 4 KiB receive buffer, so the
server drops them as too slow within a second or two; measured: how long after its drop each
one's TCP connection is still held by the server (its socket, from /proc/net/tcp), watched
for `--seconds`. Results: bench/results/slow-readers-ogg-<timestamp>.json;
`tests/scenarios/test_hardening_round4_doors.py` runs it.
"""

from __future__ import annotations

import argparse
import datetime
import fractions
import json
import math
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import websockets
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av.packet import Packet

from relay_app.client import RelayClient
from relay_app.tools.testing import REPO, ServerProcess, start_client
from relay_app.webrtc.ice import use_host_addresses

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


async def slow_readers(
    server: ServerProcess, clients: int, seconds: float, drain_wait: float = 600
) -> dict[str, Any]:
    """The soak; `drain_wait`: how long to wait, afterwards, for closed connections whose
    client left data behind to be read out before RSS is measured again."""
    use_host_addresses(["127.0.0.1"])
    settings = server.config
    timeouts = settings.get("webrtc", {}), settings.get("relay", {})
    limit = timeouts[0].get("connection_timeout", 30.0) + timeouts[1].get("teardown_timeout", 3)
    rss_before = server.metrics()["process"]["rss_mb"]
    ids: set[str] = set()
    deadline = math.inf

    async def client() -> None:
        while anyio.current_time() < deadline:
            try:
                connection_id = await flood_until_closed(server.ws_url, server.port, deadline)
            except (OSError, websockets.WebSocketException):
                await anyio.sleep(0.1)  # refused while the server is busy: try again
                continue
            if connection_id:
                ids.add(connection_id)

    # The listening pair runs in processes of its own: the flooders load this one.
    with tempfile.TemporaryDirectory() as tmp:
        sender = start_client(server.ws_url, "send", "--tone", "440", "--duration", "600")
        try:
            listen = ["listen", "--out", f"{tmp}/heard.wav", "--duration", str(seconds)]
            listener = start_client(server.ws_url, *listen)
            await anyio.sleep(1.0)  # let it start receiving before the flood
            deadline = anyio.current_time() + seconds
            async with anyio.create_task_group() as tg:
                for _ in range(clients):
                    tg.start_soon(client)
            out, _ = await anyio.to_thread.run_sync(listener.communicate, None, 60)
        finally:
            sender.kill()
            sender.wait()
    recorded = json.loads(out.splitlines()[-1])
    heard_ratio = recorded["seconds"] / seconds
    settle, rss_flood_end, connections_gone, after = await _aftermath(server, drain_wait)
    lifetimes = session_lifetimes(server, ids)
    return {
        "clients": clients,
        "seconds": seconds,
        "flooding_sessions": len(ids),
        "closed_sessions": len(lifetimes),
        "longest_session_s": round(max(lifetimes, default=0.0), 2),
        "limit_s": limit,
        "over_limit": sum(1 for t in lifetimes if t > limit),
        "rss_growth_at_flood_end_mb": round(rss_flood_end - rss_before, 1),
        "connections_drained_s": round(connections_gone, 1),
        "rss_growth_mb": round(after["process"]["rss_mb"] - rss_before, 1),
        # How long the server took, after the clients stopped, to be back to its baseline.
        "settle_s": round(settle, 1),
        "audio_heard_ratio": round(heard_ratio, 3),
        "audio_dominant_hz": recorded["dominant_hz"],
        "errors": after["errors"],
        "live_after": after["live"],
    }


async def _aftermath(server: ServerProcess, drain_wait: float) -> tuple[float, float, float, Any]:
    """After the flood: seconds to idle, RSS then, seconds until closed connections are
    drained, and the metrics after a memory trim."""
    stopped = time.monotonic()
    after = await anyio.to_thread.run_sync(server.wait_idle, 120.0)
    settle = time.monotonic() - stopped
    rss_flood_end = after["process"]["rss_mb"]
    # Connections whose sessions are closed may still be read (and dropped) at a paced rate
    # until the client's last data is gone: wait for their tasks, then read RSS after a trim.
    baseline_tasks = (server.baseline or after)["live"]["asyncio_tasks"]
    with anyio.move_on_after(drain_wait):
        while after["live"]["asyncio_tasks"] > baseline_tasks + 10:
            await anyio.sleep(2)
            after = await anyio.to_thread.run_sync(server.metrics)
    connections_gone = time.monotonic() - stopped
    await anyio.sleep(2.5)  # a memory trim (relay.memory_trim_interval = 1 s here)
    after = await anyio.to_thread.run_sync(server.metrics)
    return settle, rss_flood_end, connections_gone, after


class BulkOpusTrack(MediaStreamTrack):
    """Fake "Opus" at `bytes_per_second` (500 KB/s by default, some 60 times a voice's):
    2.5 ms packets of random bytes behind a CELT TOC byte (at most ~1,400 bytes each: SRTP
    buffers are 1,500), handed to aiortc already encoded (it sends an `av.Packet` as it
    is). The server pages it like any Opus (forward mode; with visualization off nothing
    decodes it): the quick way to fill a stalled listener's buffers."""

    kind = "audio"
    PACKET_SECONDS = 0.0025
    TOC = bytes([28 << 3])  # config 28: CELT, fullband, 2.5 ms; mono; one frame

    def __init__(self, bytes_per_second: int = 500_000) -> None:
        super().__init__()
        self.size = min(1400, max(2, round(bytes_per_second * self.PACKET_SECONDS)))
        self._start: float | None = None
        self._sent = 0

    async def recv(self) -> Packet:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        wait = self._start + self._sent * self.PACKET_SECONDS - now
        if wait > 0:
            await anyio.sleep(wait)
        packet = Packet(self.TOC + os.urandom(self.size - 1))
        packet.pts = self._sent * 120
        packet.time_base = fractions.Fraction(1, 48000)
        self._sent += 1
        return packet


def stalled_ogg_listener(port: int, path: str) -> socket.socket:
    """A plain-HTTP listener that asks for `path` and never reads a byte (4 KiB receive
    buffer): its window closes at once and stays shut, while its kernel keeps answering."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return sock


def server_held(server_port: int, client_ports: set[int]) -> set[int]:
    """Which of these client ports the server still holds a TCP connection with (its side of
    it, in any state but TIME_WAIT, read from /proc/net/tcp)."""
    ours = f":{server_port:04X}"
    held = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state = fields[1], fields[2], fields[3]
        if local.endswith(ours) and state != "06":  # 06: TIME_WAIT, nothing held
            port = int(remote.rsplit(":", 1)[1], 16)
            if port in client_ports:
                held.add(port)
    return held


async def ogg_slow_readers(
    server: ServerProcess, clients: int = 10, watch: float = 60.0
) -> dict[str, Any]:
    """`clients` stalled Ogg listeners of a fast stream, dropped as too slow within a second
    or two; how long after the last drop the server still held each one's connection (None:
    still held `watch` seconds after the drops)."""
    use_host_addresses(["127.0.0.1"])
    async with RelayClient.connect(server.ws_url) as sender:
        stream_id = await sender.start_sending(BulkOpusTrack())
        path = f"/stream/{stream_id}.ogg"
        sockets = [stalled_ogg_listener(server.audio_port, path) for _ in range(clients)]
        ports = {sock.getsockname()[1] for sock in sockets}
        try:
            for _ in range(150):  # (30 s at most; it takes a second or two)
                if len(_dropped(server, stream_id)) == clients:
                    break
                await anyio.sleep(0.2)
            drops = _dropped(server, stream_id)
            gone: dict[int, float] = {}
            deadline = time.time() + watch
            while time.time() < deadline and len(gone) < len(ports):
                now = time.time()
                for port in ports - server_held(server.audio_port, ports) - gone.keys():
                    gone[port] = now
                await anyio.sleep(0.2)
        finally:
            for sock in sockets:
                sock.close()
    # (A drop's log line names the client's address, not its port: timed from the last.)
    last_drop = max(drops, default=time.time())
    held_s = [
        max(0.0, round(gone[port] - last_drop, 1)) if port in gone else None for port in ports
    ]
    return {
        "clients": clients,
        "dropped_too_slow": len(drops),
        "first_to_last_drop_s": round(last_drop - min(drops, default=last_drop), 1),
        "held_after_last_drop_s": sorted(held_s, key=lambda s: (s is None, s or 0)),
        "still_held": sum(1 for s in held_s if s is None),
        "watched_s": watch,
    }


def _dropped(server: ServerProcess, stream_id: str) -> list[float]:
    """When each of the stream's Ogg listeners was dropped as too slow (server clock)."""
    found = server.find("http_listener_ended", stream_id=stream_id, reason="too slow")
    return [_at(event) for event in found]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--ogg", action="store_true", help="stalled Ogg listeners instead")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config: dict[str, Any] = {
            "server": {"max_connections": args.clients + 10},
            "relay": {"memory_trim_interval": 1.0},
            "visualization": {"enabled": not args.ogg},  # (nothing decodes the fake Opus)
        }
        server = ServerProcess(Path(tmp), config).start()
        try:
            server.take_baseline()
            soak = ogg_slow_readers if args.ogg else slow_readers
            result = anyio.run(soak, server, args.clients, args.seconds)
        finally:
            server.stop()
    RESULTS.mkdir(parents=True, exist_ok=True)
    kind = "slow-readers-ogg" if args.ogg else "slow-readers"
    path = RESULTS / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"results: {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
