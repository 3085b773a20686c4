"""asyncio's selector event loop (CPython 3.11+): its datagram transports' sockets and its
reader registration.

Two parts of relay_app need what asyncio keeps inside its selector loop:

- the fast path (webrtc/fast_path.py) sends each listener's copy with one direct call of the
  socket's `sendto`: the transport's own `sendto` only adds checks and, when the kernel's
  buffer is full, a queue (late audio is no better than lost);
- batched reads (webrtc/batched_reads.py) take a quiet peer's sockets off the loop and read
  them together every 200 ms: the public `add_reader`/`remove_reader` refuse a socket a
  transport owns, so the loop's own `_add_reader`/`_remove_reader` are used, as the
  transport calls them itself, with the transport's `_read_ready` put back afterwards.

Another loop (uvloop, which Hypercorn runs with `-k uvloop`; or a system without epoll, such
as macOS) has none of these: `batched_reads_unavailable` says why (the reader then stays
off, and every socket is read as it comes), and `datagram_sendto` gives the transport's public
`sendto` instead of the socket's.
"""

from __future__ import annotations

import asyncio
import select
import socket
from collections.abc import Callable
from typing import Any

SendTo = Callable[[bytes | memoryview, Any], object]
"""Sends one datagram to an address; raises OSError when it cannot (closed, buffer full)."""


def batched_reads_unavailable(loop: asyncio.AbstractEventLoop) -> str | None:
    """Why batched reads cannot run on `loop` (no epoll, or not asyncio's selector loop),
    or None when they can."""
    if not hasattr(select, "epoll"):
        return "this system has no epoll"
    if not isinstance(loop, asyncio.SelectorEventLoop) or not (
        callable(getattr(loop, "_add_reader", None))
        and callable(getattr(loop, "_remove_reader", None))
    ):
        kind = type(loop)
        return (
            f"the event loop, {kind.__module__}.{kind.__qualname__}, is not asyncio's selector loop"
        )
    return None


def selector_fd(transport: Any) -> int | None:
    """The socket's file descriptor of an asyncio selector-loop datagram transport; None for
    any other (uvloop's, a TURN client's)."""
    fd = getattr(transport, "_sock_fd", None)
    return fd if isinstance(fd, int) else None


def stop_reading(loop: Any, fd: int) -> bool:
    """Take `fd` off the selector loop's readers (the transport's own callback or ours);
    False when it was not on it."""
    return bool(loop._remove_reader(fd))


def resume_reading(loop: Any, transport: Any) -> None:
    """Give the transport's socket back to its own read callback (replacing any other)."""
    loop._add_reader(transport._sock_fd, transport._read_ready)


def read_with(loop: Any, fd: int, callback: Callable[..., object], *args: Any) -> None:
    """Have the selector loop call `callback(*args)` whenever `fd` is readable (replacing
    the transport's own callback)."""
    loop._add_reader(fd, callback, *args)


def datagram_receiver(transport: Any) -> Callable[[int], tuple[bytes, Any]]:
    """The socket's own non-blocking `recvfrom`, as the transport's read callback calls it."""
    receive: Callable[[int], tuple[bytes, Any]] = transport._sock.recvfrom
    return receive


def datagram_sendto(transport: Any) -> SendTo:
    """What the fast path sends a datagram on `transport` with.

    On asyncio's selector loop: the socket's own `sendto`, one direct call per copy (the
    fast path's cost per listener); a closed socket raises OSError. On any other loop
    (uvloop): the transport's public `sendto` with a copy of the data, since the fast path
    rewrites its buffer for the next copy at once and such a transport may queue what it
    cannot send yet; a closed one drops what it is given (the fast path checks the DTLS
    state first anyway). A transport that names its own direct send (`direct_sendto`: a
    share of the one UDP port, webrtc/udp_mux.py) is sent on with that.
    """
    direct = getattr(transport, "direct_sendto", None)
    if callable(direct):
        sent: SendTo = direct
        return sent
    sock = getattr(transport, "_sock", None)
    if isinstance(sock, socket.socket):
        sendto: SendTo = sock.sendto
        return sendto
    send = transport.sendto

    def send_copy(data: bytes | memoryview, address: Any) -> None:
        send(bytes(data), address)

    return send_copy
