"""Reading peers' sockets in batches where nothing they carry is needed at once.

A sender's packets wake the event loop 50 times a second, and each wake-up runs the whole
receive path cold (epoll, aioice, the DTLS task, SRTP, the tap): for a stream nobody listens
to, that was most of its cost (on a virtual machine a wake-up costs more than the work it
does). Nothing that stream feeds needs a packet the moment it arrives (the sender's own level
meter is a few updates a second; liveness is seconds), so while it has no listener its
sockets are taken off the event loop and drained every `BATCH_INTERVAL` in one pass: a tenth
of the wake-ups, the same packets, in order. Once a listener joins, the sockets go back on
the loop and each packet is read as it arrives.

A receiver's socket carries nothing urgent once it is connected: its RTCP reports (about
one a second each), STUN consent checks and their answers. Read as they came, 200 receivers
woke the loop ~300 times a second more than the speaker's packets did; batched, the process
wakes `1 / BATCH_INTERVAL` times a second for all of them, from one reader (`BatchedReads`,
run by the server's root task group) that asks one epoll set of its own which paused
sockets have data.

STUN (consent), DTLS and RTCP ride on the same sockets and wait as long at most: inside
their timers (aioice gives a consent check 500 ms, a browser gives up after 30 s). Meanwhile
the sender's statistics show a round trip longer by up to that.

Reaches into aioice 0.13 (the connection's protocols) and asyncio's selector loop and
datagram transport (the socket, its read callback, their registration);
tests/webrtc/test_batched_reads.py fails loudly if an upgrade moves them.
"""

from __future__ import annotations

import asyncio
import select
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
from aiortc import RTCPeerConnection

from ..core.logs import get_logger
from .peer import ice_connections

log = get_logger("relay_app.app")

BATCH_INTERVAL = 0.2  # seconds: ten 20 ms packets per wake-up
_MAX_PER_DRAIN = 1000  # one socket's datagrams per drain, so no peer starves the loop


@dataclass(eq=False)
class _Watched:
    pc: RTCPeerConnection
    batch_when: Callable[[], bool]
    paused: list[Any] = field(default_factory=list)  # its transports, while batched
    due: int = 0  # consecutive ticks at which batch_when() said yes


class BatchedReads:
    """The process's one reader of batched sockets; `watching` puts a peer in its care."""

    def __init__(self, interval: float = BATCH_INTERVAL) -> None:
        self.interval = interval
        self._watched: list[_Watched] = []
        self._paused: dict[int, Any] = {}  # fd -> transport, for every paused socket
        self._epoll: Any = None  # while `run` runs: the paused sockets' epoll set
        self._loop: Any = None

    async def run(self) -> None:
        """Drain every `interval` until cancelled; nothing is paused unless this runs."""
        self._loop = asyncio.get_running_loop()
        self._epoll = select.epoll()
        try:
            while True:
                await anyio.sleep(self.interval)
                try:
                    self.tick()
                except Exception:  # a ROOT child logs its own bugs: the server goes on
                    log.exception("batched_reads_failed")
        finally:
            for watched in self._watched:
                self._resume(watched)
            self._epoll.close()
            self._epoll = None

    @contextmanager
    def watching(self, pc: RTCPeerConnection, batch_when: Callable[[], bool]) -> Iterator[None]:
        """For this block, `pc`'s sockets are read in batches whenever `batch_when()` says
        so (asked every interval), and as packets come otherwise; as they come after it."""
        watched = _Watched(pc, batch_when)
        self._watched.append(watched)
        try:
            yield
        finally:
            self._watched.remove(watched)
            self._resume(watched)

    @property
    def paused_sockets(self) -> int:
        return len(self._paused)

    def tick(self) -> None:
        """Pause or resume each watched peer as it now needs, then read what waits."""
        for watched in self._watched:
            if watched.batch_when():
                # Twice in a row before it pauses: a state that lasts a moment (listeners
                # moving to a channel's next speaker at its first packet) keeps reading at once.
                watched.due += 1
                if watched.due >= 2 and not watched.paused:
                    self._pause(watched)
            else:
                watched.due = 0
                if watched.paused:
                    self._resume(watched)
        for fd, _ in self._epoll.poll(0):
            transport = self._paused.get(fd)
            if transport is not None and not transport.is_closing():
                _drain(transport)

    def _pause(self, watched: _Watched) -> None:
        if self._epoll is None:
            return  # (not running: nobody would read them)
        # The selector loop's own (un)registration, as a transport calls it itself: the
        # public add_reader/remove_reader refuse a socket a transport owns.
        for transport in _transports(watched.pc):
            fd = transport._sock_fd
            if transport.is_closing() or fd in self._paused or not self._loop._remove_reader(fd):
                continue
            self._epoll.register(fd, select.EPOLLIN)
            self._paused[fd] = transport
            watched.paused.append(transport)

    def _resume(self, watched: _Watched) -> None:
        """Read what waits, then put the sockets back on the event loop."""
        for transport in watched.paused:
            fd = transport._sock_fd
            if fd not in self._paused or self._paused[fd] is not transport:
                continue  # (closed meanwhile, and the number reused: not ours any more)
            del self._paused[fd]
            if transport.is_closing():
                continue  # (a closed socket left the epoll set by itself)
            self._epoll.unregister(fd)
            _drain(transport)
            self._loop._add_reader(fd, transport._read_ready)
        watched.paused = []


def _transports(pc: RTCPeerConnection) -> list[Any]:
    """The asyncio datagram transports of the peer connection's ICE sockets."""
    found: list[Any] = []
    for connection in ice_connections(pc):
        for protocol in connection._protocols:
            if protocol.transport is not None and protocol.transport not in found:
                found.append(protocol.transport)
    return found


def _drain(transport: Any) -> None:
    """Hand every waiting datagram to the transport's protocol, as its own read callback
    would have, one by one from the event loop."""
    receive: Callable[[int], tuple[bytes, Any]] = transport._sock.recvfrom
    protocol: asyncio.DatagramProtocol = transport._protocol
    for _ in range(_MAX_PER_DRAIN):
        try:
            data, address = receive(transport.max_size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:  # (as asyncio's transport does: the protocol hears of it)
            protocol.error_received(error)
            return
        protocol.datagram_received(data, address)
