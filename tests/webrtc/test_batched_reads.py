"""batched_reads.py: an unheard sender's packets are read in batches, none lost, and one at a
time again once someone listens; on uvloop it stays off and the peers are read as usual (what
it reaches for in aioice and asyncio is checked in tests/internals/test_internals.py)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import os
import socket
from typing import Any

import anyio
import pytest
import structlog.testing
from aioice import stun
from aiortc import RTCPeerConnection
from aiortc.rtp import RtpPacket

from relay_app.client import ToneTrack
from relay_app.webrtc.batched_reads import (
    CALM_TICKS,
    BatchedReads,
    ReadStatistics,
    _transports,
)
from relay_app.webrtc.rtp_tap import audio_receiver, tap_receiver

from ..helpers import wait_until

pytestmark = pytest.mark.anyio

# In-process state (a reader's ticks, the mux's counts) changes within milliseconds.
soon = functools.partial(wait_until, step=0.01)


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
                await soon(lambda: reads.paused_sockets >= 1)  # (at the second tick)
                start = len(arrivals)
                await anyio.sleep(1.5)
                batched = arrivals[start:]
                unheard = False
                await soon(lambda: reads.paused_sockets == 0)  # (at the next tick)
                start = len(arrivals)
                await anyio.sleep(1.0)
                at_once = arrivals[start:]
                unheard = True
                await soon(lambda: reads.paused_sockets >= 1)
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
        fds = [fd for _, fd, _, _ in _transports(pc)]
        assert fds and all(fd in loop._selector.get_map() for fd in fds)
        with reads.watching(pc, lambda: True):
            async with anyio.create_task_group() as tg:
                tg.start_soon(reads.run)
                await soon(lambda: all(fd not in loop._selector.get_map() for fd in fds))
                tg.cancel_scope.cancel()
            assert all(fd in loop._selector.get_map() for fd in fds)
    finally:
        await pc.close()


def _per_wake_up(arrivals: list[tuple[float, int]]) -> float:
    """Packets per distinct arrival moment (packets read in one pass share their time to
    within a millisecond)."""
    moments = 1 + sum(1 for a, b in itertools.pairwise(arrivals) if b[0] - a[0] > 0.001)
    return len(arrivals) / moments


async def test_a_flooded_socket_is_read_at_once_and_junk_never_reaches_the_ice_agent() -> None:
    """30,000 junk datagrams a second from a stranger: the socket leaves the batches for the
    event loop, the junk is counted and dropped, the speaker's packets arrive (all of them
    once the first batch has shown the flood), a STUN request from the stranger still gets
    aioice's answer; calm again, the socket is batched."""
    speaker, relay = RTCPeerConnection(), RTCPeerConnection()
    arrivals: list[int] = []

    def on_track(track: Any) -> None:
        def on_packet(packet: RtpPacket, arrival: float) -> None:
            arrivals.append(packet.sequence_number)

        tap_receiver(audio_receiver(relay, track), on_packet, then_aiortc=False)

    relay.on("track", on_track)
    speaker.addTrack(ToneTrack(440))
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger.bind(("127.0.0.2", 0))
    stranger.setblocking(False)
    try:
        await speaker.setLocalDescription(await speaker.createOffer())
        await relay.setRemoteDescription(speaker.localDescription)
        await relay.setLocalDescription(await relay.createAnswer())
        await speaker.setRemoteDescription(relay.localDescription)
        with anyio.fail_after(10):
            while not arrivals:
                await anyio.sleep(0.02)
        [(transport, _, _, sorted_)] = _transports(relay)
        address = transport.get_extra_info("sockname")[:2]
        assert sorted_
        reads = BatchedReads(interval=0.05)
        async with anyio.create_task_group() as tg:
            tg.start_soon(reads.run)
            with reads.watching(relay, lambda: True):
                await soon(lambda: reads.statistics() == ReadStatistics(1, 0, 0))
                # From the peer's own address, a first byte that is none of STUN, DTLS or
                # RTP/RTCP is junk too.
                [(speaker_transport, _, _, _)] = _transports(speaker)
                speaker_transport.sendto(b"\x70not media", address)
                sent = 0
                for burst in range(100):  # 1 s at 30,000 a second
                    for _ in range(300):
                        stranger.sendto(os.urandom(60), address)
                        sent += 1
                    if burst == 0:  # (the first batch overflows: what it held is lost)
                        await soon(lambda: reads.statistics().guarded_sockets == 1)
                        guarded = len(arrivals)
                    await anyio.sleep(0.01)
                assert reads.statistics().guarded_sockets == 1
                request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
                stranger.sendto(bytes(request), address)
                with anyio.fail_after(2):
                    while True:  # aioice answers (400: it has no credentials)
                        with contextlib.suppress(BlockingIOError):
                            answer = stun.parse_message(stranger.recv(2048))
                            break
                        await anyio.sleep(0.01)
                assert answer.transaction_id == request.transaction_id
                await anyio.sleep(0.05 * CALM_TICKS)  # (calm: batched again)
                await soon(lambda: reads.statistics().guarded_sockets == 0)
                statistics = reads.statistics()
                assert statistics.paused_sockets == 1
                assert 0.8 * sent + 1 <= statistics.junk_datagrams <= sent + 1, (statistics, sent)
            tg.cancel_scope.cancel()
    finally:
        stranger.close()
        await speaker.close()
        await relay.close()
    # Once guarded, none of the speaker's packets is lost in the flood.
    assert len(arrivals) > guarded + 50
    since = arrivals[guarded:]
    assert since == [(since[0] + i) & 0xFFFF for i in range(len(since))]


@pytest.mark.parametrize("anyio_backend", [("asyncio", {"use_uvloop": True})])
async def test_on_uvloop_the_reader_says_once_it_is_off_and_peers_are_read_as_they_come(
    anyio_backend: Any,
) -> None:
    """uvloop has neither the selector loop's reader registration nor its transports'
    sockets: the reader logs `batched_reads_off` once, at info, pauses nothing, and an
    unheard peer's packets still arrive one by one."""
    speaker, relay = RTCPeerConnection(), RTCPeerConnection()
    arrivals: list[tuple[float, int]] = []

    def on_track(track: Any) -> None:
        def on_packet(packet: RtpPacket, arrival: float) -> None:
            arrivals.append((arrival, packet.sequence_number))

        tap_receiver(audio_receiver(relay, track), on_packet, then_aiortc=False)

    relay.on("track", on_track)
    speaker.addTrack(ToneTrack(440))
    reads = BatchedReads(interval=0.05)
    try:
        with structlog.testing.capture_logs() as logs:
            async with anyio.create_task_group() as tg:
                tg.start_soon(reads.run)
                with reads.watching(relay, lambda: True):
                    await speaker.setLocalDescription(await speaker.createOffer())
                    await relay.setRemoteDescription(speaker.localDescription)
                    await relay.setLocalDescription(await relay.createAnswer())
                    await speaker.setRemoteDescription(relay.localDescription)
                    await soon(lambda: len(arrivals) >= 5, timeout=10)
                    start = len(arrivals)
                    await anyio.sleep(1.0)  # (twenty of the reader's intervals)
                    assert reads.statistics() == ReadStatistics(0, 0, 0)
                    assert _transports(relay) == []  # (no selector-loop sockets to pause)
                tg.cancel_scope.cancel()
    finally:
        await speaker.close()
        await relay.close()
    off = [entry for entry in logs if entry["event"] == "batched_reads_off"]
    assert len(off) == 1 and off[0]["log_level"] == "info", logs
    assert "uvloop" in off[0]["reason"]
    assert _per_wake_up(arrivals[start:]) < 1.5, arrivals[start:]
    sequence = [number for _, number in arrivals]
    assert sequence == [(sequence[0] + i) & 0xFFFF for i in range(len(sequence))]
