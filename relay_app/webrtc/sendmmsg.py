"""Many datagrams, one system call: `sendmmsg(2)` on one UDP socket (Linux), from ctypes.

A packet's copies to every listener on the one UDP port (webrtc.udp_port) all leave from one
socket, each to its own address: N `sendto` calls, each a trip into the kernel and back (on
the last profile most of a copy's cost). `sendmmsg` hands the kernel all N in one call.
`BatchSender.send` takes (data, address) pairs and sends them in as few calls as it can;
where libc has no `sendmmsg` (not Linux) it sends them one by one with `sendto`, the same
result, one call each.

Not wired in yet: the fan-out gathers one packet's copies and calls `send` once (a later
step). Nothing is queued or retried: a copy the kernel will not take now (its send buffer is
full) is dropped and counted, as a lost copy is on the fast path today; a copy the kernel
refuses for its own address (unreachable) is skipped and the rest still go.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import ipaddress
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

Address = tuple[str, int]
MAX_BATCH = 1024  # UIO_MAXIOV: the most messages one sendmmsg call takes
_ADDRESS_CACHE = 4096  # packed addresses kept (listeners come and go: cleared when full,
# before a batch, so a batch may take it up to MAX_BATCH over)


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(_Iovec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


def _libc_sendmmsg() -> Callable[..., int] | None:
    """libc's sendmmsg, or None where there is none (macOS, Windows, an old libc)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        function = libc.sendmmsg
    except (OSError, AttributeError, TypeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    function.restype = ctypes.c_int
    sendmmsg: Callable[..., int] = function
    return sendmmsg


_SENDMMSG = _libc_sendmmsg()
# Where the fields the batch fills live in the kernel's structures (as ctypes lays them out).
_MESSAGE_SIZE = ctypes.sizeof(_Mmsghdr)
_IOVEC_SIZE = ctypes.sizeof(_Iovec)
_NAME_GAP = _Msghdr.msg_namelen.offset - _Msghdr.msg_name.offset - ctypes.sizeof(ctypes.c_void_p)
_NAME = struct.Struct(f"@{_Msghdr.msg_name.offset}xP{_NAME_GAP}xI")  # msg_name, msg_namelen
_IOVEC = struct.Struct("@PN")


def _bytes_data_offset() -> int | None:
    """Where a bytes object's data starts, counted from its id (CPython keeps it inline, at
    a fixed offset); None when ctypes says otherwise (then each address is asked for)."""
    probes = [b"relay", bytes(range(200)), b"x" * 1500]
    offsets = {ctypes.cast(ctypes.c_char_p(p), ctypes.c_void_p).value - id(p) for p in probes}  # type: ignore[operator]
    return offsets.pop() if len(offsets) == 1 else None


_BYTES_DATA = _bytes_data_offset()


def _data_address(data: Any, keep: list[bytes]) -> int:
    """The address of `data`'s bytes: those of a bytes object or a writable buffer (a
    bytearray; the memoryview SRTP protects into) without a copy; a read-only buffer is
    copied once, the copy kept in `keep` until the batch is sent."""
    if type(data) is bytes or not len(data):
        pass
    else:
        try:
            return ctypes.addressof(ctypes.c_char.from_buffer(data))
        except TypeError:  # (read-only)
            data = bytes(data)
            keep.append(data)
    address = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value
    assert address is not None
    return address


_MSG_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)


@dataclass(frozen=True)
class SendStatistics:
    calls: int  # system calls made
    sent: int  # datagrams the kernel took
    dropped: int  # datagrams not sent: the send buffer full, or the address refused


class BatchSender:
    """Sends lists of (data, address) on `sock`, in one `sendmmsg` call where it can."""

    def __init__(self, sock: socket.socket, batched: bool = True) -> None:
        self.sock = sock
        self.batched = batched and _SENDMMSG is not None
        self.calls = 0
        self.sent = 0
        self.dropped = 0
        self._family = sock.family
        self._addresses: dict[Address, tuple[int, int, Any]] = {}
        # The kernel's arrays, filled with struct.pack_into (a ctypes field assignment per
        # copy cost more than the system calls it saves): each message has one iovec.
        self._messages = (_Mmsghdr * MAX_BATCH)()
        self._iovecs = (_Iovec * MAX_BATCH)()
        for message, iovec in zip(self._messages, self._iovecs, strict=True):
            message.msg_hdr.msg_iov = ctypes.pointer(iovec)
            message.msg_hdr.msg_iovlen = 1
        self._message_view = memoryview(self._messages).cast("B")
        self._iovec_view = memoryview(self._iovecs).cast("B")
        # The address each message slot names now: a fan-out sends to the same listeners in
        # the same order packet after packet, so a slot's address is rarely packed again.
        self._slots: list[Any] = [None] * MAX_BATCH

    def statistics(self) -> SendStatistics:
        return SendStatistics(self.calls, self.sent, self.dropped)

    def send(self, datagrams: Sequence[tuple[Any, Address]]) -> int:
        """Send each `data` (bytes, or a buffer such as a memoryview, which must stay as it
        is until this returns) to its `address`; how many the kernel took."""
        if not self.batched:
            return self._send_one_by_one(datagrams)
        taken = 0
        for start in range(0, len(datagrams), MAX_BATCH):
            taken += self._send_batch(datagrams[start : start + MAX_BATCH])
        return taken

    def _send_batch(self, datagrams: Sequence[tuple[Any, Address]]) -> int:
        if len(self._addresses) >= _ADDRESS_CACHE:  # (between batches: none is in use)
            self._addresses.clear()
            self._slots[:] = [None] * MAX_BATCH  # (their buffers went with the cache)
        messages, iovecs = self._message_view, self._iovec_view
        names, pack, slots = self._addresses, self._pack, self._slots
        pack_name, pack_iovec = _NAME.pack_into, _IOVEC.pack_into
        message_size, iovec_size = _MESSAGE_SIZE, _IOVEC_SIZE
        inline = _BYTES_DATA
        keep: list[bytes] = []  # (read-only buffers' copies, alive until the call returns)
        # `datagrams` holds every `data` alive until the call returns: the iovecs point
        # into the bytes objects and buffers themselves (no copy).
        for index, (data, address) in enumerate(datagrams):
            if inline and type(data) is bytes:
                where = id(data) + inline
            else:
                where = _data_address(data, keep)
            pack_iovec(iovecs, index * iovec_size, where, len(data))
            if slots[index] is not address:
                name = names.get(address) or pack(address)
                pack_name(messages, index * message_size, name[0], name[1])
                slots[index] = address
        assert _SENDMMSG is not None
        fd, count, offset, taken = self.sock.fileno(), len(datagrams), 0, 0
        base = ctypes.addressof(self._messages)
        while offset < count:
            self.calls += 1
            result = _SENDMMSG(fd, base + offset * message_size, count - offset, _MSG_DONTWAIT)
            if result > 0:
                offset += result
                taken += result
                continue
            error = ctypes.get_errno()
            if error == errno.EINTR:
                continue
            if error in (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS, errno.EBADF):
                break  # (the buffer is full, or the socket closed: the rest are lost)
            offset += 1  # (this one's address refused: skip it, send the rest)
        self.sent += taken
        self.dropped += count - taken
        return taken

    def _send_one_by_one(self, datagrams: Sequence[tuple[Any, Address]]) -> int:
        sendto, taken = self.sock.sendto, 0
        for data, address in datagrams:
            self.calls += 1
            try:
                sendto(data, address)
                taken += 1
            except OSError:
                self.dropped += 1
        self.sent += taken
        return taken

    def _pack(self, address: Address) -> tuple[int, int, Any]:
        """The address as the kernel reads it (sockaddr_in or sockaddr_in6), kept."""
        host, port = address[0], address[1]
        ip = ipaddress.ip_address(host)
        if self._family == socket.AF_INET6:
            if ip.version == 4:
                ip = ipaddress.IPv6Address(f"::ffff:{ip}")
            packed = struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", port, 0)
            packed += ip.packed + struct.pack("=I", 0)
        else:
            if ip.version != 4:
                raise ValueError(f"an IPv6 address on an IPv4 socket: {host}")
            packed = struct.pack("=H", socket.AF_INET) + struct.pack("!H", port)
            packed += ip.packed + bytes(8)
        buffer = ctypes.create_string_buffer(packed, len(packed))
        name = (ctypes.addressof(buffer), len(packed), buffer)  # (the buffer kept alive)
        self._addresses[address] = name
        return name


def sendmmsg_available() -> bool:
    """Whether this system's libc has sendmmsg (else BatchSender sends one by one)."""
    return _SENDMMSG is not None
