"""QR codes of the Listen URL: for the terminal (`python -m relay_app qr`) and the pages.

A listener in the hall points the phone's camera at the code instead of typing an address.
segno makes the code; the terminal version is drawn with two characters per module so that
it stays square, dark modules as spaces on a light background when the terminal has colours
(phone cameras want dark-on-light), as full blocks otherwise (pipes, logs, tests).

The server's codes (`/qr.svg`) are built by `QrCodes`, never on the event loop: segno is pure
Python, ~10 ms for a bare Listen URL and ~25 ms for one with an invite's token, and the loop
that builds it is the loop that forwards every listener's audio. Measured: two clients looping
`/qr.svg` with long invites stretched a listener's largest gap between packets from ~25 ms to
over 250 ms. A thread does not help: segno holds the GIL, and the fast path gives the GIL away
at every `sendto`, so a busy thread would take it from the loop once per copy (the convoy
effect). A worker process does, and the cache makes the codes a page asks for again (each
channel's, the entrance display's) cost nothing after the first.
"""

from __future__ import annotations

import asyncio
import io
import multiprocessing
import os
from collections import OrderedDict
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import segno

from ..core.errors import RelayError

QUIET_ZONE = 4  # modules of margin the QR standard asks for
# The longest text a code is made of: a Listen URL with a channel and an invite's token is
# ~350 characters; the QR standard's limit (~2,300 at level M) would take ~100 ms to build
# and a phone's camera struggles with such a dense code anyway.
MAX_TEXT = 1024
# One mask instead of segno's search over eight: 3-4x faster, and every mask is valid (the
# search only picks the one with the fewest look-alike patterns; phones read either).
MASK = 0


class QrTooLong(RelayError):
    """The text does not fit a code a phone can read (MAX_TEXT)."""

    kind = "qr_too_long"
    http_status = 414


class QrBusy(RelayError):
    """Too many different codes are being built at once: try again in a moment."""

    kind = "qr_busy"
    http_status = 503


def qr_matrix(text: str) -> list[list[bool]]:
    """Rows of modules (True = dark), with the quiet zone."""
    code = segno.make_qr(text, error="m")
    return [[bool(module) for module in row] for row in code.matrix_iter(border=QUIET_ZONE)]


def terminal_qr(text: str, colour: bool) -> str:
    if colour:  # black on white whatever the terminal's own colours are
        dark, light, end = "\x1b[40m  ", "\x1b[47m  ", "\x1b[0m"
    else:
        dark, light, end = "██", "  ", ""
    rows = qr_matrix(text)
    return "\n".join("".join(dark if m else light for m in row) + end for row in rows) + "\n"


def qr_svg(text: str) -> bytes:
    """The code as SVG (what the worker process runs)."""
    buffer = io.BytesIO()
    segno.make_qr(text, error="m", mask=MASK).save(
        buffer, kind="svg", scale=6, border=QUIET_ZONE, title=text, xmldecl=False
    )
    return buffer.getvalue()


class QrCodes:
    """The server's SVG codes: built in one worker process, the newest `CACHE_SIZE` kept.

    Bounded everywhere: the text (MAX_TEXT), the cache, and the builds under way
    (MAX_BUILDS; a request for the same text joins the build already running). The worker
    starts at the first code, not with the server, and stops with it (`close`).
    """

    CACHE_SIZE = 256
    MAX_BUILDS = 8
    # One address cannot take every build from the others: its codes are built two at a time
    # (a page with several channels asks for them at once: they wait their turn), and a few
    # more wait; beyond that, 503.
    MAX_BUILDS_PER_CLIENT = 2
    MAX_WAITING_PER_CLIENT = 16

    def __init__(self) -> None:
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._building: dict[str, asyncio.Future[bytes]] = {}
        self._builders: dict[str, set[asyncio.Future[bytes]]] = {}  # address -> its builds
        self._waiting: dict[str, int] = {}  # address -> its requests waiting for a build
        self._pool: Executor | None = None
        self.built = 0  # codes made by the worker (the rest came from the cache)

    async def svg(self, text: str, client: str = "") -> bytes:
        if len(text) > MAX_TEXT:
            raise QrTooLong(
                f"a QR code holds at most {MAX_TEXT} characters here; this one needs {len(text)}"
            )
        cached = self._cache.get(text)
        if cached is not None:
            self._cache.move_to_end(text)
            return cached
        build = self._building.get(text)
        if build is None:
            mine = self._builders.get(client, set())
            if len(mine) >= self.MAX_BUILDS_PER_CLIENT:
                await self._wait_turn(client, mine)
                return await self.svg(text, client)  # (built meanwhile, perhaps)
            if len(self._building) >= self.MAX_BUILDS:
                raise QrBusy("too many QR codes are being made at once; try again in a moment")
            build = asyncio.wrap_future(self._executor().submit(qr_svg, text))
            self._building[text] = build
            self._builders.setdefault(client, set()).add(build)
            build.add_done_callback(lambda done: self._built(text, client, done))
        # Shielded: a client that leaves does not cancel a build others may be waiting for;
        # the build ends on its own (the worker gives it at most ~30 ms) and is cached.
        return await asyncio.shield(build)

    async def _wait_turn(self, client: str, mine: set[asyncio.Future[bytes]]) -> None:
        """Until one of `client`'s builds ends (QrBusy if too many of its requests wait)."""
        waiting = self._waiting.get(client, 0)
        if waiting >= self.MAX_WAITING_PER_CLIENT:
            raise QrBusy("too many QR codes are being made at once; try again in a moment")
        self._waiting[client] = waiting + 1
        try:  # (asyncio.wait never cancels what it waits for)
            await asyncio.wait(set(mine), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if (left := self._waiting.pop(client) - 1) > 0:
                self._waiting[client] = left

    def _built(self, text: str, client: str, build: asyncio.Future[bytes]) -> None:
        self._building.pop(text, None)
        mine = self._builders.get(client)
        if mine is not None:
            mine.discard(build)
            if not mine:
                del self._builders[client]
        if build.cancelled():
            return
        error = build.exception()
        if isinstance(error, BrokenProcessPool):  # the worker died: the next code starts one
            self.close()
        if error is not None:
            return
        self.built += 1
        self._cache[text] = build.result()
        while len(self._cache) > self.CACHE_SIZE:
            self._cache.popitem(last=False)

    def _executor(self) -> Executor:
        if self._pool is None:
            # spawn, not fork: the server's process has threads and an event loop that a
            # forked child must not inherit.
            # Niced: on a busy machine the audio's loop gets the core first.
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(
                max_workers=1, mp_context=context, initializer=os.nice, initargs=(10,)
            )
        return self._pool

    def close(self) -> None:
        """Stop the worker (at shutdown); a later code starts a new one."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
