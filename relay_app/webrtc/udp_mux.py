"""One UDP port for every peer connection (`webrtc.udp_port`).

Without it each peer connection's ICE agent (aioice) binds a UDP socket of its own per local
address: a firewall or `docker run -p` must open a range, and `ss` shows a socket per peer.
With it the server opens one socket per announced address on that one port, for as long as
it serves (`UdpMux.serving`, in the lifespan), and every peer connection's host candidate is
that port. Each connection gets a `MuxedTransport` on the shared socket in place of a socket
of its own (the way py-libp2p runs aioice on one port: aioice's own `StunProtocol` is handed
a transport whose `sendto` writes on the shared socket, and whose `datagram_received` the mux
calls), so aioice itself is unchanged.

Who gets an incoming datagram (sorted by its first byte, RFC 7983):

- a STUN binding request: the connection whose ICE username fragment is the part of its
  USERNAME before ':' (the request's target names itself). aioice then checks
  MESSAGE-INTEGRITY with that connection's password and answers; its success answer is what
  teaches the mux the sender's address (a check from a new address, a Wi-Fi roam, is
  followed only once it is authenticated). Requests from an address the connection has not
  been reached from yet are limited to `STRANGER_CHECKS` per `STRANGER_WINDOW`: a flood
  that knows a fragment costs aioice no more than that;
- a STUN response: the connection whose request had that transaction id (a success from the
  address the request went to is learned as well);
- DTLS, RTP, RTCP (and STUN indications): the connection that address was learned for.

Anything else, a datagram from an address nobody learned, a request for a fragment nobody
has, a response to no request of ours, is dropped before any of aioice's work and counted
(`unknown_datagrams`: `relay_media_unknown_datagrams_total`). A connection's transport
leaves the tables when aioice closes it (the peer connection's close, at the end of its
scope); when the mux stops serving, every transport still open is closed with it.

The shared socket is read by the mux itself, from the loop's public `add_reader`, draining
what waits (up to `_MAX_PER_WAKE` datagrams a wake-up). The batched reads
(batched_reads.py) find no socket of their own on a muxed connection; instead they tell the
mux which of its peers are quiet (`set_quiet`: an unheard sender, a connected listener),
and while every peer on the port is quiet the port leaves the loop and is drained at each
of their batches (`tick`), as their own sockets would be: a stream nobody hears costs its
tenth of the wake-ups again. A batch that brings `FLOOD_UNKNOWN` datagrams nobody can claim
puts the port back on the loop (`media_socket_flooded`) until it has been calm for
`CALM_TICKS` batches (`media_socket_calm`): the consent answers of quiet peers are read at
once meanwhile, not lost with the junk in a full buffer. The fast path sends on the shared
socket directly (`MuxedTransport.direct_sendto`, which of_asyncio.datagram_sendto prefers).

One limit of any single port: two connections between the same two addresses cannot be
told apart. A cluster node's links to other nodes (client peer connections in the server's
process) therefore gather sockets of their own (`own_sockets`).
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import ipaddress
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import aioice.ice
import aioice.stun

from ..core.logs import get_logger
from ..internals import of_aioice

log = get_logger("relay_app.app")

Address = tuple[str, int]

_COOKIE = b"\x21\x12\xa4\x42"
_USERNAME = 0x0006  # the STUN attribute
# aioice's longest transaction: 7 tries, the first timeout 0.5 s, doubling (aioice.stun).
TRANSACTION_LIFETIME = 64.0
MAX_ADDRESSES = 8  # remote addresses one connection is reachable from at once (newest kept)
STRANGER_CHECKS = 8  # binding requests from not-yet-learned addresses, per connection ...
STRANGER_WINDOW = 0.2  # ... per this many seconds (a browser paces its checks at 20 a second)
_MAX_PER_WAKE = 256  # datagrams read at one wake-up of the loop, so others get their turn
_MAX_PER_DRAIN = 4096  # datagrams read at one batch, while every peer is quiet
FLOOD_UNKNOWN = 64  # unknown datagrams in one batch's time that mark the port as flooded
CALM_TICKS = 25  # batches' time (5 s) under FLOOD_UNKNOWN before a flooded port is batched again
RECEIVE_BUFFER = 4 << 20  # bytes asked for (the kernel caps it at net.core.rmem_max)
SEND_BUFFER = 4 << 20  # bytes asked for: one packet's copies leave in one burst
_DATAGRAM_SIZE = 65536

# False while a client peer connection of the server's own process gathers (own_sockets).
_muxing: contextvars.ContextVar[bool] = contextvars.ContextVar("relay_udp_mux", default=True)


@contextmanager
def own_sockets() -> Iterator[None]:
    """Peer connections that gather in this block get sockets of their own, not the shared
    port: a cluster node's links to another node, which may serve on the same port number
    (two links between the same two addresses could not be told apart)."""
    token = _muxing.set(False)
    try:
        yield
    finally:
        _muxing.reset(token)


@dataclass(frozen=True)
class MuxStatistics:
    sockets: int  # shared sockets open (one per announced address)
    connections: int  # ICE connections on them
    addresses: int  # remote addresses learned
    transactions: int  # our STUN requests still awaiting an answer
    unknown_datagrams: int  # dropped before aioice since the mux opened
    batched: bool = False  # every peer is quiet: the port is read every batch, not at once
    guarded: bool = False  # flooded: read at once whatever the peers, until it is calm


class MuxedTransport(asyncio.DatagramTransport):
    """One ICE connection's share of a shared socket: what its aioice `StunProtocol` sends
    with and hears from."""

    def __init__(self, port: _Port, connection: aioice.ice.Connection) -> None:
        super().__init__({"sockname": port.sockname, "socket": None})
        self.port = port
        self.connection = connection
        self.protocol = aioice.ice.StunProtocol(connection)
        self.closed = False
        self.quiet = False  # its peer needs nothing at once (batched_reads.py says so)
        self.addresses: list[Address] = []  # learned, oldest first
        self.transactions: set[bytes] = set()
        self.window = 0.0  # when the current window of stranger checks began
        self.stranger_checks = 0
        # What the fast path sends each copy with: the shared socket's own sendto.
        self.direct_sendto = port.sock.sendto
        self.protocol.connection_made(self)

    def get_protocol(self) -> Any:
        return self.protocol

    def is_closing(self) -> bool:
        return self.closed

    def sendto(self, data: Any, addr: Any = None) -> None:
        if not self.closed:
            self.port.send(self, bytes(data), (addr[0], addr[1]))

    def close(self) -> None:
        """Leave the mux (aioice's close of the connection calls it), then tell the protocol
        it is closed, as asyncio's transport would."""
        if self.closed:
            return
        self.closed = True
        self.port.forget(self)
        self.protocol.connection_lost(None)

    def abort(self) -> None:
        self.close()

    def get_write_buffer_size(self) -> int:
        return 0  # (nothing is queued: what the kernel will not take now is dropped)

    def may_check_from_stranger(self, now: float) -> bool:
        if now - self.window > STRANGER_WINDOW:
            self.window, self.stranger_checks = now, 0
        self.stranger_checks += 1
        return self.stranger_checks <= STRANGER_CHECKS


class _Port:
    """One shared socket (one local address) and who its datagrams are for."""

    def __init__(self, mux: UdpMux, sock: socket.socket) -> None:
        self.mux = mux
        self.sock = sock
        self.sockname: Address = sock.getsockname()[:2]
        self.by_ufrag: dict[str, list[MuxedTransport]] = {}
        self.by_address: dict[Address, MuxedTransport] = {}
        self.by_transaction: dict[bytes, tuple[MuxedTransport, Address]] = {}
        self.expiries: deque[tuple[float, bytes]] = deque()

    # Registration -----------------------------------------------------------------------
    def attach(self, connection: aioice.ice.Connection) -> MuxedTransport:
        transport = MuxedTransport(self, connection)
        self.by_ufrag.setdefault(connection.local_username, []).append(transport)
        self.mux.count_open(+1)
        return transport

    def forget(self, transport: MuxedTransport) -> None:
        ufrag = transport.connection.local_username
        sharing = self.by_ufrag.get(ufrag, [])
        if transport in sharing:
            sharing.remove(transport)
        if not sharing:
            self.by_ufrag.pop(ufrag, None)
        for address in transport.addresses:
            if self.by_address.get(address) is transport:
                del self.by_address[address]
        transport.addresses.clear()
        for transaction in transport.transactions:
            self.by_transaction.pop(transaction, None)
        transport.transactions.clear()
        self.mux.count_open(-1, quiet=transport.quiet)

    def learn(self, transport: MuxedTransport, address: Address) -> None:
        """`address` is now where `transport`'s peer is (the newest authenticated wins)."""
        current = self.by_address.get(address)
        if current is transport:
            return
        if current is not None:
            current.addresses.remove(address)
        self.by_address[address] = transport
        transport.addresses.append(address)
        if len(transport.addresses) > MAX_ADDRESSES:
            oldest = transport.addresses.pop(0)
            if self.by_address.get(oldest) is transport:
                del self.by_address[oldest]

    # Sending ----------------------------------------------------------------------------
    def send(self, transport: MuxedTransport, data: bytes, address: Address) -> None:
        if len(data) >= 20 and data[0] < 2 and data[4:8] == _COOKIE:
            kind = _stun_class(data)
            if kind == 0:  # our request: its answer comes back by its transaction id
                self._expect(transport, data[8:20], address)
            elif kind == 2:  # aioice answers success only to a check it authenticated
                self.learn(transport, address)
        try:
            self.sock.sendto(data, address)
        except OSError:  # (the kernel's buffer is full, or the socket is closed: lost)
            self.mux.send_failures += 1

    def _expect(self, transport: MuxedTransport, transaction: bytes, address: Address) -> None:
        now = time.monotonic()
        expiries = self.expiries
        while expiries and expiries[0][0] < now:
            _, old = expiries.popleft()
            entry = self.by_transaction.get(old)
            if entry is not None:
                entry[0].transactions.discard(old)
                del self.by_transaction[old]
        if transaction not in self.by_transaction:  # (a retransmission keeps its first)
            self.by_transaction[transaction] = (transport, address)
            transport.transactions.add(transaction)
            expiries.append((now + TRANSACTION_LIFETIME, transaction))

    # Receiving --------------------------------------------------------------------------
    def readable(self) -> None:
        """The loop's reader: route what waits on the socket, up to _MAX_PER_WAKE."""
        self.drain(_MAX_PER_WAKE)

    def drain(self, limit: int) -> int:
        """Route what waits on the socket, up to `limit` datagrams; how many were read."""
        receive = self.sock.recvfrom
        route = self.route
        for count in range(limit):
            try:
                data, address = receive(_DATAGRAM_SIZE)
            except (BlockingIOError, InterruptedError):
                return count
            except OSError:  # (an ICMP error reported on the socket: nothing to read)
                return count
            route(data, address)
        return limit

    def route(self, data: bytes, source: Any) -> None:
        """Hand one datagram to the connection it is for, or drop and count it."""
        address: Address = (source[0], source[1])
        first = data[0] if data else 255
        target: MuxedTransport | None
        if first < 4:
            if len(data) < 20 or data[4:8] != _COOKIE:
                target = None
            else:
                kind = _stun_class(data)
                if kind == 0:
                    target = self._by_username(data, address)
                elif kind == 1:  # an indication: only from a peer we know
                    target = self.by_address.get(address)
                else:
                    target = self._by_transaction(data, address, kind == 2)
        elif 19 < first < 64 or 127 < first < 192:  # DTLS; RTP and RTCP
            target = self.by_address.get(address)
        else:
            target = None
        if target is None or target.closed:
            self.mux.unknown_datagrams += 1
            return
        target.protocol.datagram_received(data, address)

    def _by_username(self, data: bytes, address: Address) -> MuxedTransport | None:
        username = _stun_username(data)
        if username is None:
            return None
        sharing = self.by_ufrag.get(username.partition(":")[0])
        if not sharing:
            return None
        target = sharing[0] if len(sharing) == 1 else _authenticated(sharing, data)
        if target is None:
            return None
        if self.by_address.get(address) is not target and not target.may_check_from_stranger(
            time.monotonic()
        ):
            return None
        return target

    def _by_transaction(self, data: bytes, address: Address, success: bool) -> Any:
        entry = self.by_transaction.get(data[8:20])
        if entry is None:
            return None
        transport, destination = entry
        if success and address == destination and not transport.closed:
            self.learn(transport, address)
        return transport

    def close(self) -> None:
        for sharing in list(self.by_ufrag.values()):
            for transport in list(sharing):
                transport.close()
        self.sock.close()


class UdpMux:
    """The shared sockets on `port`, one per address, while `serving`."""

    def __init__(self, addresses: Sequence[str] | None, port: int) -> None:
        self.addresses = addresses
        self.port = port
        self._ports: dict[str, _Port] = {}
        self.unknown_datagrams = 0
        self.send_failures = 0
        self._loop: asyncio.AbstractEventLoop | None = None  # while serving
        self._open = 0  # transports open on the port
        self._loud = 0  # of them, those not quiet: while any, the port is read at once
        self._batched = False  # read by `tick` (every peer quiet), not by the loop
        self._guard_ticks = 0  # > 0: flooded, read at once until this many calm ticks
        self._unknown_at_tick = 0

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[UdpMux]:
        """Open the port on every address and make it every peer connection's host
        candidate; closed, and aioice's own gathering back, when the block ends."""
        loop = asyncio.get_running_loop()
        try:
            for address in self._addresses():
                key = str(ipaddress.ip_address(address))
                if key not in self._ports:
                    self._ports[key] = _Port(self, _open_socket(key, self.port))
                    loop.add_reader(self._ports[key].sock.fileno(), self._ports[key].readable)
            self._loop = loop
            of_aioice.replace_host_gathering(self._bind)
            log.info("media_port_open", port=self.port, addresses=sorted(self._ports))
            yield self
        finally:
            of_aioice.replace_host_gathering(None)
            self._loop = None
            for shared in self._ports.values():
                if not self._batched:
                    loop.remove_reader(shared.sock.fileno())
                shared.close()
            self._ports.clear()
            self._batched, self._guard_ticks, self._loud, self._open = False, 0, 0, 0

    # Batched reads (batched_reads.py): while every peer is quiet ----------------------------
    def set_quiet(self, transport: MuxedTransport, quiet: bool) -> None:
        """Whether `transport`'s peer needs its datagrams at once (batched_reads.py asks for
        each peer it batches, and again when it stops). While every peer on the port is
        quiet (an unheard sender, connected listeners), the port is read every batch."""
        if transport.closed or transport.quiet == quiet:
            return
        transport.quiet = quiet
        self._loud += -1 if quiet else +1
        self._read_as_needed()

    def count_open(self, change: int, quiet: bool = False) -> None:
        self._open += change
        if not quiet:
            self._loud += change
        self._read_as_needed()

    def tick(self) -> None:
        """Every batch (batched_reads.py's reader): drain a batched port; watch for a flood,
        which puts the port back on the loop until it has been calm for CALM_TICKS."""
        if self._batched:
            for shared in self._ports.values():
                before = self.unknown_datagrams
                read = shared.drain(_MAX_PER_DRAIN)
                if self.unknown_datagrams - before >= FLOOD_UNKNOWN or read == _MAX_PER_DRAIN:
                    self._guard(shared)
        elif self._guard_ticks:
            flooded = self.unknown_datagrams - self._unknown_at_tick >= FLOOD_UNKNOWN
            self._guard_ticks = CALM_TICKS if flooded else self._guard_ticks - 1
            if not self._guard_ticks:
                log.info("media_socket_calm", port=self.port, unknown=self.unknown_datagrams)
                self._read_as_needed()
        self._unknown_at_tick = self.unknown_datagrams

    def _guard(self, shared: _Port) -> None:
        if not self._guard_ticks:
            log.warning("media_socket_flooded", port=self.port, unknown=self.unknown_datagrams)
        self._guard_ticks = CALM_TICKS
        self._read_as_needed()

    def _read_as_needed(self) -> None:
        """On the loop's reader while a peer is loud or the port flooded; else batched."""
        loop = self._loop
        # (With nobody on it, as when it is loud: only a peer's quiet says batches will come.)
        batched = self._open > 0 and self._loud == 0 and self._guard_ticks == 0
        if loop is None or batched == self._batched:
            return
        self._batched = batched
        for shared in self._ports.values():
            if batched:
                loop.remove_reader(shared.sock.fileno())
            else:
                loop.add_reader(shared.sock.fileno(), shared.readable)

    def check_free(self) -> None:
        """Raise MediaPortUnavailable, naming the key, if the port cannot be opened on every
        address: for a clear refusal at startup (`serving` opens it for real)."""
        for address in self._addresses():
            _open_socket(str(ipaddress.ip_address(address)), self.port).close()

    def _addresses(self) -> Sequence[str]:
        if self.addresses is not None:
            return self.addresses
        return aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True)  # (aioice's own)

    async def _bind(
        self, connection: aioice.ice.Connection, address: str
    ) -> aioice.ice.StunProtocol | None:
        if not _muxing.get():
            return await _own_socket(connection, address)
        shared = self._ports.get(str(ipaddress.ip_address(address)))
        if shared is None:  # (an interface that appeared after startup: not served)
            return None
        return shared.attach(connection).protocol

    def statistics(self) -> MuxStatistics:
        ports = self._ports.values()
        return MuxStatistics(
            sockets=len(self._ports),
            connections=sum(len(s) for p in ports for s in p.by_ufrag.values()),
            addresses=sum(len(p.by_address) for p in ports),
            transactions=sum(len(p.by_transaction) for p in ports),
            unknown_datagrams=self.unknown_datagrams,
            batched=self._batched,
            guarded=self._guard_ticks > 0,
        )


class MediaPortUnavailable(OSError):
    """webrtc.udp_port cannot be opened on one of the addresses."""


def _open_socket(address: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        for option, size in ((socket.SO_RCVBUF, RECEIVE_BUFFER), (socket.SO_SNDBUF, SEND_BUFFER)):
            with suppress(OSError):  # (a bigger buffer helps; it is not required)
                sock.setsockopt(socket.SOL_SOCKET, option, size)
        sock.bind((address, port))
    except OSError as error:
        sock.close()
        why = "in use by another program" if error.errno == errno.EADDRINUSE else error.strerror
        raise MediaPortUnavailable(
            error.errno, f"cannot open UDP port {port} on {address} (webrtc.udp_port): {why}"
        ) from None
    return sock


async def _own_socket(connection: aioice.ice.Connection, address: str) -> aioice.ice.StunProtocol:
    """A socket of the connection's own on any port, as aioice would open it."""
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_datagram_endpoint(
        lambda: aioice.ice.StunProtocol(connection), local_addr=(address, 0)
    )
    return protocol


def _stun_class(data: bytes) -> int:
    """0 request, 1 indication, 2 success response, 3 error response (RFC 8489 section 5)."""
    return ((data[0] & 0x01) << 1) | ((data[1] & 0x10) >> 4)


def _stun_username(data: bytes) -> str | None:
    """The USERNAME attribute of a STUN message, or None (absent, or the message is bad)."""
    end = min(len(data), 20 + int.from_bytes(data[2:4], "big"))
    offset = 20
    while offset + 4 <= end:
        kind = int.from_bytes(data[offset : offset + 2], "big")
        length = int.from_bytes(data[offset + 2 : offset + 4], "big")
        if offset + 4 + length > end:
            return None
        if kind == _USERNAME:
            try:
                return data[offset + 4 : offset + 4 + length].decode("utf8")
            except UnicodeDecodeError:
                return None
        offset += 4 + length + (-length % 4)
    return None


def _authenticated(sharing: list[MuxedTransport], data: bytes) -> MuxedTransport | None:
    """Of connections whose fragments happen to be equal, the one whose password signed the
    request (aioice's fragments are 4 random characters: rare, but not impossible)."""
    try:
        message = aioice.stun.parse_message(data)
    except ValueError:
        return None
    for transport in sharing:
        key = transport.connection.local_password.encode("utf8")
        if message.check_message_integrity(key):
            return transport
    return None
