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

A flood. Anyone who reaches a media port can fill its socket: 30,000 junk datagrams a
second overflow the kernel's buffer (a few hundred small datagrams) long before the next
batch, the consent answers are dropped with the junk, and aioice closes the connection after
six missed checks (~30 s). So every datagram read here is first sorted by its first byte
(RFC 7983: STUN 0-3, DTLS 20-63, RTP/RTCP 128-191) and its source: from an address the
peer's ICE agent pairs with, STUN, DTLS and RTP/RTCP go on to aioice as before; from any
other address only what looks like STUN (its magic cookie), a few per batch, since a new
address must be able to run a check; everything else is junk, counted and dropped before
aioice, aiortc or SRTP see it. A socket that brings `FLOOD_READS` datagrams to one batch
(a quiet receiver brings one or two, an unheard sender ten) is *guarded*: back on the event
loop, each wake-up reading all that waits (up to `_MAX_PER_WAKE`) through the same sorting,
and its receive buffer raised to `GUARDED_RECEIVE_BUFFER`, so the answers the peer's
consent needs find room. After `CALM_TICKS` batches' time without a flood it is batched
again. Sorting adds ~0.3 us to a datagram (~1 us to read it): nothing for a quiet receiver's
two a second. Dropping junk costs ~1.4 us a datagram: a 30,000/s flood at one listener took
the server from ~4 % to ~8 % of a core, with its listener kept and no datagram lost once the
socket was guarded (before, 90 % were dropped by the kernel and the listener after ~32 s).

On the one UDP port (webrtc.udp_port, udp_mux.py) a peer has no socket of its own to take
off the loop: its shares of the port are marked quiet instead, and while every peer on the
port is quiet the mux's shared socket is drained here, at each tick, under the mux's own
flood watch.

What it needs of aioice (the connection's sockets, its check list's addresses) and of
asyncio's selector loop (a transport's socket and read callback, the loop's reader
registration) it gets from the room of internals (internals/of_aioice.py, of_asyncio.py).
A loop that has none of that (uvloop; a system without epoll, such as macOS) gets no batched
reads: `run` says so once in the log (`batched_reads_off`, info) and waits, `watching` pauses
nothing, and every socket is read as it comes, as it would be without this module.
"""

from __future__ import annotations

import asyncio
import select
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import aioice.ice
import anyio
from aiortc import RTCPeerConnection

from ..core.logs import get_logger
from ..internals import of_aioice, of_asyncio
from .peer import ice_connections
from .udp_mux import MuxedTransport, UdpMux

log = get_logger("relay_app.app")

BATCH_INTERVAL = 0.2  # seconds: ten 20 ms packets per wake-up
_MAX_PER_DRAIN = 1000  # one socket's datagrams per drain, so no peer starves the loop
# Datagrams in one batch that mark a socket as flooded: a connected receiver brings one or
# two per batch, an unheard sender ten (twenty at 10 ms packets).
FLOOD_READS = 64
# Batches' time (5 s) a guarded socket spends under FLOOD_READS a batch before it is batched again.
CALM_TICKS = 25
_MAX_PER_WAKE = 256  # a guarded socket's datagrams per wake-up of the event loop
GUARDED_RECEIVE_BUFFER = 1 << 20  # bytes asked for (the kernel caps it at net.core.rmem_max)
_STRANGER_STUN_PER_TICK = 8  # STUN-like datagrams from unpaired addresses let through, per batch
_STUN_COOKIE = b"\x21\x12\xa4\x42"


@dataclass(eq=False)
class _Socket:
    """One of a watched peer's ICE sockets while it is off asyncio's own read callback."""

    transport: Any  # asyncio's datagram transport
    fd: int
    connection: Any  # aioice's Connection: whose pairs say which addresses are the peer's
    sorted: bool  # a plain host socket (not TURN's), whose datagrams are sorted
    guarded: bool = False  # flooded: on the event loop, drained whole at each wake-up
    reads: int = 0  # datagrams read since the last tick (guarded)
    calm: int = 0  # ticks in a row under FLOOD_READS (guarded)
    known: frozenset[tuple[str, int]] = frozenset()  # the pairs' remote addresses
    known_tick: int = -1  # the tick `known` was read at
    stranger_stun: int = 0  # STUN-like datagrams from unpaired addresses let through this tick


@dataclass(frozen=True)
class ReadStatistics:
    paused_sockets: int  # off asyncio's read callback: batched or guarded
    guarded_sockets: int  # flooded, drained at each wake-up with junk dropped
    junk_datagrams: int  # dropped before aioice since the reader started (all sockets)


@dataclass(eq=False)
class _Watched:
    pc: RTCPeerConnection
    batch_when: Callable[[], bool]
    paused: list[_Socket] = field(default_factory=list)  # its sockets, while batched
    quiet: list[MuxedTransport] = field(default_factory=list)  # its shares of the one port
    due: int = 0  # consecutive ticks at which batch_when() said yes


class BatchedReads:
    """The process's one reader of batched sockets; `watching` puts a peer in its care."""

    def __init__(self, interval: float = BATCH_INTERVAL) -> None:
        self.interval = interval
        self._watched: list[_Watched] = []
        self._paused: dict[int, _Socket] = {}  # fd -> every paused socket (batched or guarded)
        self._epoll: Any = None  # while `run` runs: the batched sockets' epoll set
        self._loop: Any = None
        self._ticks = 0
        self.junk_datagrams = 0
        # The one UDP port (webrtc.udp_port), when the server serves every peer on it: the
        # mux reads its shared sockets itself, so its peers have no socket to pause here.
        self.mux: UdpMux | None = None

    async def run(self) -> None:
        """Drain every `interval` until cancelled; nothing is paused unless this runs. On a
        loop batched reads cannot use, say so once and wait: nothing is ever paused."""
        loop = asyncio.get_running_loop()
        unavailable = of_asyncio.batched_reads_unavailable(loop)
        if unavailable is not None:
            log.info("batched_reads_off", reason=unavailable)
            await anyio.sleep_forever()
        self._loop = loop
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

    def statistics(self) -> ReadStatistics:
        guarded = sum(1 for sock in self._paused.values() if sock.guarded)
        return ReadStatistics(len(self._paused), guarded, self.junk_datagrams)

    def tick(self) -> None:
        """Pause or resume each watched peer as it now needs, then read what waits."""
        self._ticks += 1
        for watched in self._watched:
            if watched.batch_when():
                # Twice in a row before it pauses: a state that lasts a moment (listeners
                # moving to a channel's next speaker at its first packet) keeps reading at once.
                watched.due += 1
                if watched.due >= 2 and not (watched.paused or watched.quiet):
                    self._pause(watched)
            else:
                watched.due = 0
                if watched.paused or watched.quiet:
                    self._resume(watched)
        for sock in list(self._paused.values()):
            sock.stranger_stun = 0
            if sock.guarded:
                sock.calm = sock.calm + 1 if sock.reads < FLOOD_READS else 0
                sock.reads = 0
                if sock.calm >= CALM_TICKS and not sock.transport.is_closing():
                    self._unguard(sock)
        for fd, _ in self._epoll.poll(0):
            ready = self._paused.get(fd)
            if ready is None or ready.guarded or ready.transport.is_closing():
                continue
            if self._read(ready, _MAX_PER_DRAIN) >= FLOOD_READS:
                self._guard(ready)
        if self.mux is not None:
            self.mux.tick()

    def _pause(self, watched: _Watched) -> None:
        if self._epoll is None:
            return  # (not running: nobody would read them)
        # The selector loop's own (un)registration, as a transport calls it itself: the
        # public add_reader/remove_reader refuse a socket a transport owns.
        for transport, fd, connection, plain in _transports(watched.pc):
            if transport.is_closing() or fd in self._paused:
                continue
            if not of_asyncio.stop_reading(self._loop, fd):
                continue
            self._epoll.register(fd, select.EPOLLIN)
            sock = _Socket(transport, fd, connection, plain)
            self._paused[fd] = sock
            watched.paused.append(sock)
        if self.mux is not None:  # (the one port is read in batches once all are quiet)
            for shared in _muxed(watched.pc):
                self.mux.set_quiet(shared, True)
                watched.quiet.append(shared)

    def _resume(self, watched: _Watched) -> None:
        """Read what waits, then put the sockets back on asyncio's own read callback."""
        for sock in watched.paused:
            fd, transport = sock.fd, sock.transport
            if self._paused.get(fd) is not sock:
                continue  # (closed meanwhile, and the number reused: not ours any more)
            del self._paused[fd]
            if transport.is_closing():
                continue  # (a closed socket left the epoll set and the loop by itself)
            if not sock.guarded:
                self._epoll.unregister(fd)
            self._read(sock, _MAX_PER_DRAIN)
            of_asyncio.resume_reading(self._loop, transport)  # (replaces a guarded reader)
        watched.paused = []
        if self.mux is not None:
            for shared in watched.quiet:
                self.mux.set_quiet(shared, False)
        watched.quiet = []

    def _guard(self, sock: _Socket) -> None:
        """A flooded socket: read it at each wake-up of the loop, with room to queue."""
        self._epoll.unregister(sock.fd)
        sock.guarded, sock.reads, sock.calm = True, 0, 0
        _set_receive_buffer(sock.transport, GUARDED_RECEIVE_BUFFER)
        of_asyncio.read_with(self._loop, sock.fd, self._read_guarded, sock)
        port = sock.transport.get_extra_info("sockname")[1]
        log.warning("media_socket_flooded", port=port, junk_datagrams=self.junk_datagrams)

    def _unguard(self, sock: _Socket) -> None:
        of_asyncio.stop_reading(self._loop, sock.fd)
        sock.guarded = False
        self._epoll.register(sock.fd, select.EPOLLIN)
        port = sock.transport.get_extra_info("sockname")[1]
        log.info("media_socket_calm", port=port, junk_datagrams=self.junk_datagrams)

    def _read_guarded(self, sock: _Socket) -> None:
        sock.reads += self._read(sock, _MAX_PER_WAKE)

    def _read(self, sock: _Socket, limit: int) -> int:
        """Hand up to `limit` waiting datagrams to the transport's protocol, as its own read
        callback would have, one by one from the event loop; junk is counted and dropped.
        Returns how many were read."""
        transport = sock.transport
        receive = of_asyncio.datagram_receiver(transport)
        protocol: asyncio.DatagramProtocol = transport.get_protocol()
        size = transport.max_size
        for count in range(limit):
            try:
                data, address = receive(size)
            except (BlockingIOError, InterruptedError):
                return count
            except OSError as error:  # (as asyncio's transport does: the protocol hears of it)
                protocol.error_received(error)
                return count
            if not sock.sorted or self._wanted(sock, data, address):
                protocol.datagram_received(data, address)
            else:
                self.junk_datagrams += 1
        return limit

    def _wanted(self, sock: _Socket, data: bytes, address: Any) -> bool:
        """Whether a datagram may reach aioice: see the module's docstring."""
        first = data[0] if data else 255
        source = (address[0], address[1])
        if sock.known_tick != self._ticks and source not in sock.known:
            _learn_pairs(sock, self._ticks)  # (at most once a tick: a pair may be new)
        if source in sock.known or not sock.known:  # (no pairs yet: nothing to judge by)
            return first < 4 or 19 < first < 64 or 127 < first < 192
        stun = first < 4 and data[4:8] == _STUN_COOKIE
        if stun and sock.stranger_stun < _STRANGER_STUN_PER_TICK:
            sock.stranger_stun += 1
            sock.known_tick = -1  # (aioice may pair with it: read the pairs again)
            return True
        return False


def _learn_pairs(sock: _Socket, tick: int) -> None:
    sock.known = of_aioice.paired_addresses(sock.connection)
    sock.known_tick = tick


def _set_receive_buffer(transport: Any, size: int) -> None:
    sock = transport.get_extra_info("socket")
    try:
        if sock is not None and sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < size:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    except OSError:  # (a bigger buffer helps; reading at once is what matters)
        pass


def _transports(pc: RTCPeerConnection) -> list[tuple[Any, int, Any, bool]]:
    """The asyncio selector-loop datagram transports of the peer connection's ICE sockets,
    each with its socket's file descriptor, its aioice connection and whether it is a plain
    host socket (a TURN client's socket hears from its server, whose address no pair names:
    its datagrams are not sorted)."""
    found: list[tuple[Any, int, Any, bool]] = []
    seen: set[int] = set()
    for connection in ice_connections(pc):
        for protocol in of_aioice.socket_protocols(connection):
            transport = protocol.transport
            fd = of_asyncio.selector_fd(transport)
            if transport is None or id(transport) in seen or fd is None:
                continue
            seen.add(id(transport))
            plain = type(protocol) is aioice.ice.StunProtocol
            found.append((transport, fd, connection, plain))
    return found


def _muxed(pc: RTCPeerConnection) -> list[MuxedTransport]:
    """The peer connection's shares of the one UDP port (webrtc.udp_port), if it has any."""
    return [
        protocol.transport
        for connection in ice_connections(pc)
        for protocol in of_aioice.socket_protocols(connection)
        if isinstance(protocol.transport, MuxedTransport)
    ]
