"""Hardening, round 4: the transports under a flood.

A media port flooded with junk from another address keeps its listener (the ICE consent
answers still get through) and drops the junk before the ICE agent, counted; a WebSocket
client that stops reading and sends megabyte frames is cut off at the TCP level, and what it
sends is never held. The attacker is 127.0.0.2; everything else is on 127.0.0.1.

ICE consent gives up after six unanswered checks (~33 s by default). Here the server and the
clients give up after ~8-10 s (`webrtc.consent_timeout` 6, checks ~1 s apart, each waiting
0.5 s for its answer: the `short_consent` fixture) and the flood lasts FLOOD_SECONDS (15):
a flood that cost a listener its consent drops it before the flood is over.
`RELAY_FLOOD_SECONDS=90` floods for longer.
"""

from __future__ import annotations

import base64
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import pytest

from relay_app.client import RelayClient
from relay_app.tools.testing import ServerProcess, assert_kept_hearing, listening_pair

from ..helpers import server_event

pytestmark = [pytest.mark.anyio, pytest.mark.mode_independent]

ATTACKER = "127.0.0.2"
FLOOD_SECONDS = float(os.environ.get("RELAY_FLOOD_SECONDS", "15"))
FLOOD_RATE = 30_000  # datagrams a second, 60 bytes each
# A paced sender in its own process: the rate is a ceiling (each 5 ms it sends its share and
# sleeps), so on two shared cores it takes ~15 % of one and cannot starve the server.
FLOODER = """
import os, socket, sys, time
host, port, rate, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((sys.argv[5], 0))
junk, tick, sent = os.urandom(60), 0.005, 0
start = time.monotonic()
due = start
while time.monotonic() - start < seconds:
    for _ in range(int(rate * tick)):
        try:
            sock.sendto(junk, (host, port))
            sent += 1
        except OSError:
            pass
    due += tick
    time.sleep(max(0.0, due - time.monotonic()))
print(sent, time.monotonic() - start)
"""


def server_media_address(client: RelayClient) -> tuple[str, int]:
    """The server's host candidate in the description it sent this client."""
    assert client.pc is not None and client.pc.remoteDescription is not None
    for line in client.pc.remoteDescription.sdp.splitlines():
        if line.startswith("a=candidate:") and line.split()[7] == "host":
            return line.split()[4], int(line.split()[5])
    raise AssertionError("no host candidate in the server's description")


def scraped(server: ServerProcess, name: str) -> float:
    text = server.get("/metrics", headers={"Accept": "text/plain"}).text
    values = [line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")]
    assert values, f"{name} is not on /metrics"
    return float(values[0])


# A. Junk at one listener's media port ----------------------------------------------------------
@pytest.mark.serial
async def test_a_flooded_listener_port_keeps_its_listener_and_the_junk_is_dropped_and_counted(
    make_forward_server: Callable[..., ServerProcess], short_consent: dict[str, Any]
) -> None:
    """Before, the listener's socket was read every 0.2 s (batched_reads.py): 30,000 junk
    datagrams a second overflowed it, the consent answers were lost with the junk, and the
    listener was dropped after ~32 s (the default consent timeout); now the socket is read as
    the junk comes, which is dropped before the ICE agent."""
    server = make_forward_server(short_consent)
    async with (
        listening_pair(server.ws_url) as (sender, victim),
        RelayClient.connect(server.ws_url) as other,
    ):
        await other.start_receiving(sender.stream_id)
        await other.wait_audio(0.5)
        await anyio.sleep(1)  # (both listeners' sockets are batched by now)
        host, port = server_media_address(victim)
        junk_before = scraped(server, "relay_media_junk_datagrams_total")
        started = time.monotonic()
        heard = {client: client.recorder.seconds for client in (victim, other)}
        command = [sys.executable, "-c", FLOODER, host, str(port), str(FLOOD_RATE)]
        flooded: list[str] = []

        async def flood() -> None:
            done = await anyio.run_process([*command, str(FLOOD_SECONDS), ATTACKER])
            flooded.append(done.stdout.decode())

        async with anyio.create_task_group() as tg:  # (a failed check stops the flooder)
            tg.start_soon(flood)
            while not flooded:
                await anyio.sleep(1)
                elapsed = round(time.monotonic() - started)
                assert victim.pc is not None and victim.pc.connectionState == "connected", (
                    f"the flooded listener lost its connection after {elapsed} s"
                )
                assert server.metrics()["live"]["peer_connections"] == 3, elapsed
        sent, seconds = flooded[0].split()
        assert int(sent) >= 0.8 * FLOOD_RATE * FLOOD_SECONDS, (sent, seconds)  # (a real flood)
        for client, before in heard.items():
            await assert_kept_hearing(client, before, started)
        junk = scraped(server, "relay_media_junk_datagrams_total") - junk_before
        assert junk >= 0.9 * int(sent), (junk, sent)
        assert server.find("media_socket_flooded", port=port)
        # Once the flood is over, the socket is batched again.
        await server_event(server, "media_socket_calm", port=port)


# B. A WebSocket client that stops reading and sends megabyte frames --------------------------
@dataclass
class Outcome:
    frames_sent: int  # of the megabyte frames, before the server cut the connection
    cut_off: bool  # the server closed the TCP connection (FIN or reset) within 10 s
    received: bytes  # what the server sent before: the welcome, errors, the close frame


def _frame(payload: bytes, opcode: int) -> bytes:
    """A masked client frame (the mask is zero: a valid mask that leaves the payload as is)."""
    size = len(payload)
    if size < 126:
        length = bytes([0x80 | size])
    elif size < 1 << 16:
        length = bytes([0x80 | 126]) + size.to_bytes(2, "big")
    else:
        length = bytes([0x80 | 127]) + size.to_bytes(8, "big")
    return bytes([0x80 | opcode]) + length + b"\0\0\0\0" + payload


def send_megabytes(port: int, flood_first: bool, frames: int = 50) -> Outcome:
    """A client with a 4 KiB receive buffer that reads nothing after the handshake: it sends
    `frames` 1 MiB text frames (after a burst of 300 empty binary frames, which closes its
    session for flooding, with `flood_first`), then looks whether the server cut it off."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    with sock:
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        response = b""
        while b"\r\n\r\n" not in response:
            response += sock.recv(1)  # (byte by byte: nothing after the headers is read)
        assert response.startswith(b"HTTP/1.1 101"), response
        sent = 0
        try:
            if flood_first:
                sock.sendall(_frame(b"", 2) * 300)
                time.sleep(0.5)  # (the session closes: not reading, flood)
            megabyte = _frame(b"x" * (1 << 20), 1)
            for _ in range(frames):
                sock.sendall(megabyte)
                sent += 1
        except OSError:
            pass  # (cut off while sending)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
            cut_off = True
        except ConnectionResetError:
            cut_off = True
        except TimeoutError:
            cut_off = False
        return Outcome(sent, cut_off, received)


@pytest.mark.serial
async def test_a_client_that_stops_reading_and_sends_megabyte_frames_is_cut_off_and_held_to_nothing(
    make_forward_server: Callable[..., ServerProcess],
) -> None:
    """Before, Hypercorn kept a message over its size limit (128 KiB) and added to it all the
    client sent next, with the connection open: 50 x 1 MiB grew the server by ~52 MB, with
    or without the session closed first. Round 2's test_1 sent only empty frames, so it
    never reached that buffer."""
    server = make_forward_server()
    rss_before = server.metrics()["process"]["rss_mb"]
    async with listening_pair(server.ws_url) as (_, receiver):
        heard, started = receiver.recorder.seconds, time.monotonic()
        for flood_first in (False, True):
            outcome = await anyio.to_thread.run_sync(send_megabytes, server.port, flood_first)
            assert outcome.cut_off, (flood_first, outcome.frames_sent)
            assert outcome.frames_sent < 50, flood_first  # (taken in up to the cut only)
        await assert_kept_hearing(receiver, heard, started)
        growth = server.metrics()["process"]["rss_mb"] - rss_before
    assert growth <= 12, growth
    assert server.find("websocket_message_too_big", limit=131072)
    assert server.find("client_error", kind="flood") or server.find(
        "client_error", kind="not_reading"
    )
    with anyio.fail_after(10):  # both sessions ended, and their connections with them
        while server.metrics()["active_connections"] != 0:
            await anyio.sleep(0.1)


async def test_a_frame_over_the_limit_still_gets_its_1009_and_an_answering_client_a_clean_close(
    make_forward_server: Callable[..., ServerProcess],
) -> None:
    """The cut-off does not cost a well-behaved client the close frame that says why."""
    server = make_forward_server()
    async with RelayClient.connect(server.ws_url) as client:
        await client.send("x" * 200_000)
        with anyio.fail_after(10):
            await client.closed.wait()
        assert client.close_code == 1009
    with anyio.fail_after(10):
        while server.metrics()["active_connections"] != 0:
            await anyio.sleep(0.1)
