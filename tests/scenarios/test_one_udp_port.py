"""One UDP port for every peer (`webrtc.udp_port`): a real server serves a speaker and twenty
listeners on it, with one UDP socket in its process; junk, checks for fragments nobody has,
checks with a listener's fragment but not its password, and a flood from another address
(127.0.0.2) at that port cost no listener its audio or its ICE consent, and are dropped
before the ICE agent and counted. While every peer is quiet (a speaker nobody hears yet) the
port is read in batches; a flood puts it back on the loop until it is calm.

The floods' server and clients give up on consent after 6 s (`short_consent`), and
`RELAY_FLOOD_SECONDS` sets the flood's length, as for the other flood
(test_hardening_round4_transport.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

import anyio
import pytest
from aioice import stun

from relay_app.client import RelayClient, ToneTrack, dominant_frequency
from relay_app.tools.testing import (
    ServerProcess,
    assert_kept_hearing,
    deep_merge,
    free_udp_port,
    listening_pair,
)

from ..helpers import server_event
from .test_hardening_round4_transport import (
    ATTACKER,
    FLOOD_RATE,
    FLOOD_SECONDS,
    scraped,
    server_media_address,
)

pytestmark = [pytest.mark.anyio, pytest.mark.serial]

LISTENERS = 20
# FLOODER's paced sender (test_hardening_round4_transport.py), cycling through the datagrams
# given in hex.
MIXED_FLOODER = """
import socket, sys, time
host, port, rate, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((sys.argv[5], 0))
datagrams = [bytes.fromhex(h) for h in sys.argv[6:]]
tick, sent = 0.005, 0
start = time.monotonic()
due = start
while time.monotonic() - start < seconds:
    for _ in range(int(rate * tick)):
        try:
            sock.sendto(datagrams[sent % len(datagrams)], (host, port))
            sent += 1
        except OSError:
            pass
    due += tick
    time.sleep(max(0.0, due - time.monotonic()))
print(sent, time.monotonic() - start)
"""


def udp_ports_of(pid: int) -> list[int]:
    """The local ports of the process's UDP sockets (its descriptors' inodes looked up in
    the kernel's UDP tables)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # (closed meanwhile)
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = []
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                if fields[9] in inodes:
                    ports.append(int(fields[1].split(":")[1], 16))
    return sorted(ports)


def ss_sockets_of(pid: int) -> list[str] | None:
    """`ss -uanp`'s lines for the process, where ss is installed."""
    if shutil.which("ss") is None:
        return None
    listing = subprocess.run(["ss", "-uanp"], capture_output=True, text=True, check=True)
    return [line for line in listing.stdout.splitlines() if f"pid={pid}," in line]


def ice_ufrag(sdp: str) -> str:
    return next(
        line.split(":", 1)[1] for line in sdp.splitlines() if line.startswith("a=ice-ufrag:")
    )


def check(username: str, password: str) -> bytes:
    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    request.attributes["USERNAME"] = username
    request.attributes["PRIORITY"] = 1
    request.attributes["ICE-CONTROLLING"] = 1
    request.add_message_integrity(password.encode("utf8"))
    return bytes(request)


async def flood(
    target: tuple[str, int], datagrams: list[bytes], each_second: Callable[[int], None]
) -> int:
    """MIXED_FLOODER from ATTACKER at `target` for FLOOD_SECONDS at FLOOD_RATE, calling
    `each_second(elapsed)` meanwhile (a failed check stops the flooder); datagrams sent."""
    command = [sys.executable, "-c", MIXED_FLOODER, target[0], str(target[1]), str(FLOOD_RATE)]
    command += [str(FLOOD_SECONDS), ATTACKER, *(d.hex() for d in datagrams)]
    flooded: list[str] = []

    async def run() -> None:
        done = await anyio.run_process(command)
        flooded.append(done.stdout.decode())

    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        while not flooded:
            await anyio.sleep(1)
            each_second(round(time.monotonic() - started))
    sent, seconds = flooded[0].split()
    assert int(sent) >= 0.8 * FLOOD_RATE * FLOOD_SECONDS, (sent, seconds)  # (a real flood)
    return int(sent)


async def test_a_speaker_and_twenty_listeners_on_one_udp_port_hear_the_tone(
    make_server: Callable[..., ServerProcess],
) -> None:
    port = free_udp_port()
    server = make_server({"webrtc": {"udp_port": port}})
    assert server.proc is not None
    async with AsyncExitStack() as stack:
        sender, first = await stack.enter_async_context(listening_pair(server.ws_url))
        listeners = [first]
        for _ in range(LISTENERS - 1):
            listener = await stack.enter_async_context(RelayClient.connect(server.ws_url))
            await listener.start_receiving(sender.stream_id)
            listeners.append(listener)
        for listener in listeners:
            assert server_media_address(listener) == ("127.0.0.1", port)
            await listener.wait_audio(1.0)
            heard = listener.recorder.audio(1.0)
            assert abs(dominant_frequency(heard, listener.recorder.sample_rate) - 440) <= 10
        assert udp_ports_of(server.proc.pid) == [port]  # one media socket, on the port
        lines = ss_sockets_of(server.proc.pid)
        assert lines is None or (len(lines) == 1 and f":{port} " in lines[0]), lines
        media_port = server.metrics()["media_port"]
        assert media_port["sockets"] == 1
        assert media_port["connections"] == LISTENERS + 1
        assert media_port["unknown_datagrams"] == 0
    # (make_server checks that every count, media_port_connections too, is back at zero)


async def test_junk_strangers_checks_and_a_flood_at_the_one_port_cost_no_listener_its_audio(
    make_forward_server: Callable[..., ServerProcess], short_consent: dict[str, Any]
) -> None:
    server = make_forward_server(
        deep_merge(short_consent, {"webrtc": {"udp_port": free_udp_port()}})
    )
    async with (
        listening_pair(server.ws_url) as (sender, victim),
        RelayClient.connect(server.ws_url) as other,
    ):
        await other.start_receiving(sender.stream_id)
        await other.wait_audio(0.5)
        host, port = server_media_address(victim)
        assert victim.pc is not None and victim.pc.remoteDescription is not None
        victims_fragment = ice_ufrag(victim.pc.remoteDescription.sdp)
        datagrams = [
            os.urandom(60),  # junk
            b"\x80\x6f" + os.urandom(58),  # RTP-like, from nobody's address
            b"\x16\xfe\xfd" + os.urandom(57),  # DTLS-like
            check("nobody:x", "no password at all 123"),  # a fragment nobody has
            check(f"{victims_fragment}:x", "not the password 12345"),  # the victim's, unsigned
        ]
        unknown_before = scraped(server, "relay_media_unknown_datagrams_total")
        started = time.monotonic()
        heard = {client: client.recorder.seconds for client in (victim, other)}

        def still_connected(elapsed: int) -> None:
            for client in (victim, other):
                assert client.pc is not None and client.pc.connectionState == "connected", (
                    f"a listener lost its connection after {elapsed} s of flood"
                )
            assert server.metrics()["live"]["peer_connections"] == 3, elapsed

        sent = await flood((host, port), datagrams, still_connected)
        for client, before in heard.items():
            await assert_kept_hearing(client, before, started)
        unknown = scraped(server, "relay_media_unknown_datagrams_total") - unknown_before
        # Nearly all of it: not the victim's-fragment checks let through to be refused (at
        # most 40 a second), nor what the kernel dropped when its buffer was full.
        assert unknown >= 0.9 * sent, (unknown, sent)
        assert server.metrics()["media_port"]["addresses"] == 3  # (the attacker's not among them)


async def test_a_flood_while_every_peer_is_quiet_puts_the_port_on_the_loop_till_it_is_calm(
    make_forward_server: Callable[..., ServerProcess], short_consent: dict[str, Any]
) -> None:
    """A speaker nobody hears yet is quiet: the port is read in batches. A flood puts it
    back on the loop (the speaker keeps its consent and its stream), 5 s of calm in batches
    again, and a listener who comes then hears the speaker."""
    port = free_udp_port()
    server = make_forward_server(deep_merge(short_consent, {"webrtc": {"udp_port": port}}))
    async with RelayClient.connect(server.ws_url) as sender:
        await sender.start_sending(ToneTrack(440))
        await anyio.to_thread.run_sync(lambda: wait_for_port(server, batched=True))
        guarded: list[bool] = []

        def speaker_kept(elapsed: int) -> None:
            assert sender.pc is not None and sender.pc.connectionState == "connected", elapsed
            metrics = server.metrics()
            assert metrics["active_streams"] == 1, f"the stream ended after {elapsed} s"
            guarded.append(metrics["media_port"]["guarded"])

        await flood(("127.0.0.1", port), [os.urandom(60), b"\x80" + os.urandom(59)], speaker_kept)
        assert any(guarded), "the flood never put the port on the loop"
        await server_event(server, "media_socket_calm")
        assert server.find("media_socket_flooded", port=port)
        await anyio.to_thread.run_sync(lambda: wait_for_port(server, batched=True))
        async with RelayClient.connect(server.ws_url) as listener:
            await listener.start_receiving(sender.stream_id)
            await listener.wait_audio(1.0)
            heard = listener.recorder.audio(1.0)
            assert abs(dominant_frequency(heard, listener.recorder.sample_rate) - 440) <= 10


def wait_for_port(server: ServerProcess, timeout: float = 10, **state: bool) -> None:
    deadline = time.monotonic() + timeout
    while (port := server.metrics()["media_port"]) and any(port[k] != v for k, v in state.items()):
        assert time.monotonic() < deadline, f"the port stayed {port}"
        time.sleep(0.1)
