"""A plain-HTTP Ogg listener in a thread, for tests and benchmarks: one connection read until
its block ends, then hung up by shutting its socket, so the reader stops even while no page
comes (a channel between speakers sends none) and the server sees the listener leave."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx


@contextmanager
def ogg_listener(url: str, arrivals: list[tuple[float, int]] | None = None) -> Iterator[bytearray]:
    """The response's body as it comes. A refusal's body is `HTTP <status>` instead. With
    `arrivals`, each chunk's arrival (time.monotonic()) is noted there beside the body's
    length then."""
    body, stop, sockets = bytearray(), threading.Event(), []

    def read() -> None:
        try:
            with httpx.stream("GET", url, timeout=30) as response:
                sockets.append(response.extensions["network_stream"].get_extra_info("socket"))
                if response.status_code != 200:
                    body.extend(f"HTTP {response.status_code}".encode())
                    return
                for chunk in response.iter_bytes():
                    body.extend(chunk)
                    if arrivals is not None:
                        arrivals.append((time.monotonic(), len(body)))
                    if stop.is_set():
                        return
        except httpx.HTTPError:
            return  # the server ended the response, or the block shut it: the body stays

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        yield body
    finally:
        stop.set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        reader.join(5)
