"""udp_mux.py: real aioice agents on one shared port. Checks reach the connection their
username fragment names, answers the one whose request they answer, everything else the one
whose peer's address a check taught; what nobody can claim is dropped and counted; a peer's
new address is followed once its check is authenticated; a closed connection leaves no trace.
"""

from __future__ import annotations

import functools
import select
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from typing import Any

import aioice
import anyio
import pytest
from aioice import stun
from aiortc import RTCPeerConnection
from aiortc.rtp import RtpPacket

from relay_app.client import ToneTrack
from relay_app.internals import of_aioice, of_asyncio
from relay_app.tools.testing import free_udp_port
from relay_app.webrtc.batched_reads import BatchedReads
from relay_app.webrtc.peer import ice_connections
from relay_app.webrtc.rtp_tap import audio_receiver, tap_receiver
from relay_app.webrtc.udp_mux import (
    STRANGER_CHECKS,
    MuxedTransport,
    MuxStatistics,
    UdpMux,
    own_sockets,
)

from ..helpers import wait_until

pytestmark = pytest.mark.anyio

# In-process state (a reader's ticks, the mux's counts) changes within milliseconds.
soon = functools.partial(wait_until, step=0.01)
HOST = "127.0.0.1"


@asynccontextmanager
async def serving_mux() -> AsyncIterator[UdpMux]:
    mux = UdpMux([HOST], free_udp_port())
    async with mux.serving():
        yield mux
    assert mux.statistics().sockets == 0


@asynccontextmanager
async def connected_pair(mux: UdpMux) -> AsyncIterator[tuple[aioice.Connection, aioice.Connection]]:
    """An agent on the shared port (controlled, as the relay answering an offer) and its peer
    on a socket of its own (controlling), connected; both closed after the block."""
    relay = aioice.Connection(ice_controlling=False)
    peer = aioice.Connection(ice_controlling=True)
    try:
        await relay.gather_candidates()
        with own_sockets():
            await peer.gather_candidates()
        assert [c.port for c in relay.local_candidates] == [mux.port]
        assert [c.port for c in peer.local_candidates] != [mux.port]
        for a, b in ((relay, peer), (peer, relay)):
            for candidate in b.local_candidates:
                await a.add_remote_candidate(candidate)
            await a.add_remote_candidate(None)
            a.remote_username, a.remote_password = b.local_username, b.local_password
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(relay.connect)
                tg.start_soon(peer.connect)
        yield relay, peer
    finally:
        await peer.close()
        await relay.close()


@contextmanager
def raw_socket() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        sock.setblocking(False)
        yield sock


async def answers(sock: socket.socket, wait: float = 0.3) -> list[bytes]:
    """What arrives at `sock` until `wait` s pass without anything (the loop runs meanwhile)."""
    received: list[bytes] = []
    quiet_since = anyio.current_time()
    while anyio.current_time() - quiet_since < wait:
        try:
            received.append(sock.recv(2048))
            quiet_since = anyio.current_time()
        except BlockingIOError:
            await anyio.sleep(0.01)
    return received


def binding_request(username: str, password: str) -> bytes:
    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    request.attributes["USERNAME"] = username
    request.attributes["PRIORITY"] = 1
    request.attributes["ICE-CONTROLLING"] = 1
    request.add_message_integrity(password.encode("utf8"))
    return bytes(request)


async def test_peers_on_one_port_each_reach_only_their_own_connection() -> None:
    async with serving_mux() as mux, AsyncExitStack() as stack:
        pairs = [await stack.enter_async_context(connected_pair(mux)) for _ in range(3)]
        stats = mux.statistics()
        assert (stats.connections, stats.addresses, stats.unknown_datagrams) == (3, 3, 0)
        for number, (_, peer) in enumerate(pairs):
            await peer.send(b"\x80 data of peer %d" % number)  # (an RTP-like first byte)
        for number, (relay, _) in enumerate(pairs):
            with anyio.fail_after(5):
                assert await relay.recv() == b"\x80 data of peer %d" % number
            await relay.send(b"\x80 answer %d" % number)
        for number, (_, peer) in enumerate(pairs):
            with anyio.fail_after(5):
                assert await peer.recv() == b"\x80 answer %d" % number
    assert mux.statistics() == MuxStatistics(0, 0, 0, 0, 0)


async def test_what_no_connection_can_claim_is_dropped_before_aioice_and_counted() -> None:
    async with serving_mux() as mux, connected_pair(mux) as (relay, peer):
        answer = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.RESPONSE)
        junk = [
            b"\x80 RTP from a stranger",
            b"\x16\xfe\xfd DTLS from a stranger",
            b"\xff junk",
            b"",
            binding_request(f"nobody:{peer.local_username}", "x" * 22),  # an unknown fragment
            bytes(answer),  # an answer to no request of ours
            b"\x00\x01\x00\x00" + b"no cookie, no STUN" * 2,
        ]
        with raw_socket() as stranger:
            for datagram in junk:
                stranger.sendto(datagram, (HOST, mux.port))
            await soon(lambda: mux.statistics().unknown_datagrams == len(junk))
            assert await answers(stranger) == []  # (nobody answered)
        await peer.send(b"\x80 still heard")
        with anyio.fail_after(5):
            assert await relay.recv() == b"\x80 still heard"


async def test_a_new_address_is_followed_only_once_its_check_is_authenticated() -> None:
    async with serving_mux() as mux, connected_pair(mux) as (relay, peer):
        username = f"{relay.local_username}:{peer.local_username}"
        with raw_socket() as roamed:
            roamed.sendto(b"\x80 before any check", (HOST, mux.port))
            await soon(lambda: mux.statistics().unknown_datagrams == 1)

            roamed.sendto(binding_request(username, "a wrong password 12345"), (HOST, mux.port))
            [refused] = map(stun.parse_message, await answers(roamed))
            assert (refused.message_class, refused.attributes["ERROR-CODE"][0]) == (
                stun.Class.ERROR,
                401,
            )
            roamed.sendto(b"\x80 after a refused check", (HOST, mux.port))
            await soon(lambda: mux.statistics().unknown_datagrams == 2)

            roamed.sendto(binding_request(username, relay.local_password), (HOST, mux.port))
            # (aioice answers, and checks the new address back: a triggered check)
            classes = {stun.parse_message(d).message_class for d in await answers(roamed)}
            assert stun.Class.RESPONSE in classes and stun.Class.ERROR not in classes
            assert mux.statistics().addresses == 2  # (the old address and the new one)
            roamed.sendto(b"\x80 from the new address", (HOST, mux.port))
            with anyio.fail_after(5):
                assert await relay.recv() == b"\x80 from the new address"
        assert mux.statistics().unknown_datagrams == 2


async def test_checks_from_a_stranger_are_limited_before_aioice_sees_them() -> None:
    async with serving_mux() as mux, connected_pair(mux) as (relay, peer):
        username = f"{relay.local_username}:{peer.local_username}"
        with raw_socket() as stranger:
            for _ in range(5 * STRANGER_CHECKS):
                stranger.sendto(
                    binding_request(username, "not the password 1234"), (HOST, mux.port)
                )
            await soon(lambda: mux.statistics().unknown_datagrams >= 3 * STRANGER_CHECKS)
            refused = len(await answers(stranger))
            assert 0 < refused <= 2 * STRANGER_CHECKS  # (a window may turn over meanwhile)
        await peer.send(b"\x80 still heard")
        with anyio.fail_after(5):
            assert await relay.recv() == b"\x80 still heard"


async def test_a_closed_connection_leaves_the_port_and_its_peer_is_a_stranger_again() -> None:
    async with serving_mux() as mux, connected_pair(mux) as (relay, peer):
        assert isinstance(of_aioice.socket_protocols(relay)[0].transport, MuxedTransport)
        await relay.close()
        stats = mux.statistics()
        assert (stats.connections, stats.addresses, stats.transactions) == (0, 0, 0)
        await peer.sendto(b"\x80 to nobody", 1)
        await soon(lambda: mux.statistics().unknown_datagrams == stats.unknown_datagrams + 1)


async def test_when_the_port_closes_its_connections_close_with_it() -> None:
    mux = UdpMux([HOST], free_udp_port())
    async with AsyncExitStack() as stack:
        async with mux.serving():
            relay, _ = await stack.enter_async_context(connected_pair(mux))
        assert mux.statistics() == MuxStatistics(0, 0, 0, 0, 0)
        with anyio.fail_after(5):
            await relay.close()  # (its protocol was told: the close does not wait for it)


async def test_the_port_is_refused_with_its_key_when_another_program_holds_it() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind((HOST, 0))
        mux = UdpMux([HOST], holder.getsockname()[1])
        with pytest.raises(OSError, match=r"webrtc\.udp_port"):
            async with mux.serving():
                pass
    assert aioice.Connection.get_component_candidates.__module__ == "aioice.ice"  # restored


@asynccontextmanager
async def speaker_to_relay(mux: UdpMux) -> AsyncIterator[tuple[RTCPeerConnection, list[float]]]:
    """A speaker (sockets of its own) sending a tone to a relay peer connection on the
    shared port; the relay's packet arrival times (read by aiortc's own receiver)."""
    relay = RTCPeerConnection()
    speaker = RTCPeerConnection()
    arrivals: list[float] = []

    def on_track(track: Any) -> None:
        def on_packet(packet: RtpPacket, arrival: float) -> None:
            arrivals.append(arrival)

        tap_receiver(audio_receiver(relay, track), on_packet, then_aiortc=False)

    relay.on("track", on_track)
    speaker.addTrack(ToneTrack(440))
    try:
        with own_sockets():
            await speaker.setLocalDescription(await speaker.createOffer())
        await relay.setRemoteDescription(speaker.localDescription)
        await relay.setLocalDescription(await relay.createAnswer())
        assert f" {mux.port} typ host" in relay.localDescription.sdp
        await speaker.setRemoteDescription(relay.localDescription)
        await soon(lambda: bool(arrivals), 10)
        yield relay, arrivals
    finally:
        await speaker.close()
        await relay.close()


async def test_a_quiet_peer_on_the_port_is_read_in_batches_and_at_once_again_when_heard() -> None:
    async with serving_mux() as mux, speaker_to_relay(mux) as (relay, arrivals):
        reads = BatchedReads(interval=0.05)
        reads.mux = mux
        unheard = True
        async with anyio.create_task_group() as tg:
            tg.start_soon(reads.run)
            with reads.watching(relay, lambda: unheard):
                await soon(lambda: mux.statistics().batched)
                assert reads.paused_sockets == 0  # (no socket of its own to pause)
                arrivals.clear()
                await anyio.sleep(1)
                batches = {round(arrival / 0.05) for arrival in arrivals}
                assert len(arrivals) >= 40 and len(batches) <= 0.5 * len(arrivals)
                unheard = False
                await soon(lambda: not mux.statistics().batched)
                arrivals.clear()
                await anyio.sleep(0.5)
                assert len({round(arrival, 3) for arrival in arrivals}) >= 0.8 * len(arrivals)
                unheard = True
                await soon(lambda: mux.statistics().batched)
            assert not mux.statistics().batched  # (out of its care: read at once)
            tg.cancel_scope.cancel()


async def test_a_flood_at_a_batched_port_is_read_at_once_until_it_is_calm() -> None:
    async with serving_mux() as mux, speaker_to_relay(mux) as (relay, arrivals):
        reads = BatchedReads(interval=0.02)  # (calm after CALM_TICKS x 0.02 s = 0.5 s)
        reads.mux = mux
        async with anyio.create_task_group() as tg:
            tg.start_soon(reads.run)
            with reads.watching(relay, lambda: True), raw_socket() as attacker:
                await soon(lambda: mux.statistics().batched)
                for _ in range(10):
                    for _ in range(200):
                        attacker.sendto(b"\xff junk", (HOST, mux.port))
                    await anyio.sleep(0.01)
                assert mux.statistics().guarded and not mux.statistics().batched
                await soon(lambda: mux.statistics().batched, 5)
                assert mux.statistics().unknown_datagrams == 2000
                arrivals.clear()
                await anyio.sleep(0.3)
                assert arrivals  # (the speaker still heard)
            tg.cancel_scope.cancel()


async def test_a_muxed_peer_sends_on_the_shared_socket_and_has_no_socket_of_its_own() -> None:
    async with serving_mux() as mux, speaker_to_relay(mux) as (relay, _):
        protocol = of_aioice.socket_protocols(ice_connections(relay)[0])[0]
        assert of_asyncio.selector_fd(protocol.transport) is None
        sendto = of_asyncio.datagram_sendto(protocol.transport)
        with raw_socket() as listener:
            sendto(b"\x80 a fast-path copy", listener.getsockname())
            await soon(lambda: bool(select.select([listener], [], [], 0)[0]))
            data, source = listener.recvfrom(2048)
            assert (data, source) == (b"\x80 a fast-path copy", (HOST, mux.port))
    assert mux.statistics().connections == 0
