"""batched_reads.py: an unheard sender's packets are read in batches, none lost, and one at a
time again once someone listens. It reaches into aioice and asyncio's selector loop; these
fail loudly when an upgrade moves what it uses."""

from __future__ import annotations

import asyncio
import inspect
import itertools
from typing import Any

import aioice.ice
import anyio
import pytest
from aiortc import RTCPeerConnection
from aiortc.rtp import RtpPacket

from relay_app.client import ToneTrack
from relay_app.webrtc.batched_reads import BATCH_INTERVAL, BatchedReads, _transports
from relay_app.webrtc.rtp_tap import audio_receiver, tap_receiver

pytestmark = pytest.mark.anyio


def test_what_batched_reads_uses_is_where_it_was() -> None:
    transport_source = inspect.getsource(asyncio.selector_events._SelectorDatagramTransport)
    assert "self._sock.recvfrom(self.max_size)" in transport_source
    assert "self._protocol.datagram_received(data, addr)" in transport_source
    loop_source = inspect.getsource(asyncio.selector_events.BaseSelectorEventLoop)
    assert "def _add_reader(self, fd, callback, *args)" in loop_source
    assert "def _remove_reader(self, fd)" in loop_source
    assert "self._protocols: list[StunProtocol] = []" in inspect.getsource(aioice.ice.Connection)


async def test_an_unheard_peer_is_read_in_batches_without_loss_then_at_once_again() -> None:
    speaker, relay = RTCPeerConnection(), RTCPeerConnection()
    arrivals: list[tuple[float, int]] = []

    def on_track(track: Any) -> None:
        def on_packet(packet: RtpPacket, arrival: float) -> None:
            arrivals.append((arrival, packet.sequence_number))

        tap_receiver(audio_receiver(relay, track), on_packet, then_aiortc=False)

    relay.on("track", on_track)
    speaker.addTrack(ToneTrack(440))
    try:
        await speaker.setLocalDescription(await speaker.createOffer())
        await relay.setRemoteDescription(speaker.localDescription)
        await relay.setLocalDescription(await relay.createAnswer())
        await speaker.setRemoteDescription(relay.localDescription)
        with anyio.fail_after(10):
            while not arrivals:
                await anyio.sleep(0.02)

        unheard = True
        reads = BatchedReads()
        async with anyio.create_task_group() as tg:
            tg.start_soon(reads.run)
            with reads.watching(relay, lambda: unheard):
                await anyio.sleep(BATCH_INTERVAL * 2.5)  # (paused at the second tick)
                assert reads.paused_sockets >= 1
                start = len(arrivals)
                await anyio.sleep(1.5)
                batched = arrivals[start:]
                unheard = False
                await anyio.sleep(BATCH_INTERVAL * 1.5)  # (back on the loop at the next)
                assert reads.paused_sockets == 0
                start = len(arrivals)
                await anyio.sleep(1.0)
                at_once = arrivals[start:]
                unheard = True
                await anyio.sleep(BATCH_INTERVAL * 2.5)
                assert reads.paused_sockets >= 1
            assert reads.paused_sockets == 0  # (the block's end resumes them)
            tg.cancel_scope.cancel()
    finally:
        await speaker.close()
        await relay.close()

    # No packet lost or reordered by either way of reading.
    sequence = [number for _, number in arrivals]
    assert sequence == [(sequence[0] + i) & 0xFFFF for i in range(len(sequence))]
    # Unheard: several packets per wake-up; heard: one per wake-up, as they come.
    assert _per_wake_up(batched) >= 3, batched
    assert _per_wake_up(at_once) < 1.5, at_once


async def test_the_sockets_go_back_on_the_loop_when_the_reader_stops() -> None:
    pc = RTCPeerConnection()
    reads = BatchedReads()
    loop: Any = asyncio.get_running_loop()
    try:
        pc.addTransceiver("audio")
        await pc.setLocalDescription(await pc.createOffer())  # (gathers: the sockets exist)
        fds = [transport._sock_fd for transport, _, _ in _transports(pc)]
        assert fds and all(fd in loop._selector.get_map() for fd in fds)
        with reads.watching(pc, lambda: True):
            async with anyio.create_task_group() as tg:
                tg.start_soon(reads.run)
                await anyio.sleep(BATCH_INTERVAL * 2.5)
                assert all(fd not in loop._selector.get_map() for fd in fds)
                tg.cancel_scope.cancel()
            assert all(fd in loop._selector.get_map() for fd in fds)
    finally:
        await pc.close()


def _per_wake_up(arrivals: list[tuple[float, int]]) -> float:
    """Packets per distinct arrival moment (packets read in one pass share their time to
    within a millisecond)."""
    moments = 1 + sum(1 for a, b in itertools.pairwise(arrivals) if b[0] - a[0] > 0.001)
    return len(arrivals) / moments
