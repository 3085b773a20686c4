"""sendmmsg.py: a list of datagrams leaves one socket in one system call (Linux), each to its
own address, IPv4 and IPv6; without sendmmsg the same list goes out one by one; a full send
buffer drops the rest, an address the kernel refuses is skipped and the others still go."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pytest

from relay_app.webrtc import sendmmsg
from relay_app.webrtc.sendmmsg import MAX_BATCH, BatchSender, sendmmsg_available


@contextmanager
def listeners(count: int, family: int = socket.AF_INET) -> Iterator[list[socket.socket]]:
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    with ExitStack() as stack:
        socks = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(family, socket.SOCK_DGRAM))
            sock.bind((host, 0))
            sock.settimeout(2)
            socks.append(sock)
        yield socks


def sender(family: int = socket.AF_INET) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
    sock.setblocking(False)
    return sock


def address(sock: socket.socket) -> tuple[str, int]:
    host, port = sock.getsockname()[:2]
    return host, port


@pytest.mark.parametrize("batched", [True, False], ids=["sendmmsg", "sendto"])
def test_each_listener_gets_its_own_copy_from_the_one_socket(batched: bool) -> None:
    with listeners(50) as socks, sender() as out:
        batch = BatchSender(out, batched=batched)
        copies = [(b"copy %d" % i, address(sock)) for i, sock in enumerate(socks)]
        assert batch.send(copies) == 50
        for number, sock in enumerate(socks):
            data, source = sock.recvfrom(100)
            assert (data, source) == (b"copy %d" % number, address(out))
        stats = batch.statistics()
        assert (stats.sent, stats.dropped) == (50, 0)
        assert stats.calls == (1 if batched and sendmmsg_available() else 50)


def test_the_same_list_goes_out_twice_without_packing_the_addresses_again() -> None:
    with listeners(3) as socks, sender() as out:
        batch = BatchSender(out)
        for round_ in range(2):
            batch.send([(b"round %d" % round_, address(sock)) for sock in socks])
        for sock in socks:
            assert [sock.recv(100), sock.recv(100)] == [b"round 0", b"round 1"]


def test_ipv6_listeners_and_an_ipv4_one_on_a_dual_stack_socket() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    with (
        listeners(3, socket.AF_INET6) as six,
        listeners(1) as four,
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as out,
    ):
        out.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        out.bind(("::", 0))
        batch = BatchSender(out)
        targets = [*six, *four]
        assert batch.send([(b"v6 or v4", address(sock)) for sock in targets]) == 4
        for sock in targets:
            assert sock.recv(100) == b"v6 or v4"


def test_more_than_one_call_holds_goes_out_in_several() -> None:
    with listeners(1) as (sock,), sender() as out:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        out.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        batch = BatchSender(out)
        count = MAX_BATCH + 10
        taken = batch.send([(b"x" * 8, address(sock))] * count)
        assert taken == batch.statistics().sent and taken + batch.statistics().dropped == count
        if sendmmsg_available():
            assert batch.statistics().calls >= 2


def test_an_address_the_kernel_refuses_is_skipped_and_the_rest_still_go() -> None:
    with listeners(2) as socks, sender() as out:
        batch = BatchSender(out)
        refused = ("255.255.255.255", 9)  # (broadcast without SO_BROADCAST: EACCES)
        copies = [(b"a", address(socks[0])), (b"b", refused), (b"c", address(socks[1]))]
        assert batch.send(copies) == 2
        assert (socks[0].recv(10), socks[1].recv(10)) == (b"a", b"c")
        assert batch.statistics().dropped == 1


def test_a_closed_socket_drops_everything_and_raises_nothing() -> None:
    with listeners(2) as socks:
        out = sender()
        batch = BatchSender(out)
        out.close()
        assert batch.send([(b"lost", address(sock)) for sock in socks]) == 0
        assert batch.statistics().dropped == 2


def test_the_address_cache_filling_up_repacks_every_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sendmmsg, "_ADDRESS_CACHE", 2)
    with listeners(3) as socks, sender() as out:
        batch = BatchSender(out)
        copies = [(b"first", address(sock)) for sock in socks]  # (over the cache's size)
        for order in (copies, copies[::-1], copies):
            assert batch.send(order) == 3
            # Every message names an address the sender still holds (no freed buffer).
            held = {name[0] for name in batch._addresses.values()}
            named = {batch._messages[i].msg_hdr.msg_name for i in range(3)}
            assert named <= held, (named, held)
        for sock in socks:
            assert [sock.recv(100) for _ in range(3)] == [b"first"] * 3


@pytest.mark.parametrize("batched", [True, False], ids=["sendmmsg", "sendto"])
def test_buffers_go_out_as_they_are_without_a_copy_to_wait_for(batched: bool) -> None:
    """What SRTP protects into is a writable memoryview of each receiver's own buffer; a
    read-only view and an empty datagram go too."""
    with listeners(4) as socks, sender() as out:
        batch = BatchSender(out, batched=batched)
        buffers = [bytearray(b"view %d" % i) for i in range(2)]
        copies = [
            (memoryview(buffers[0])[:6], address(socks[0])),
            (memoryview(buffers[1]), address(socks[1])),
            (memoryview(b"read-only"), address(socks[2])),
            (b"", address(socks[3])),
        ]
        assert batch.send(copies) == 4
        assert [sock.recv(100) for sock in socks] == [b"view 0", b"view 1", b"read-only", b""]
