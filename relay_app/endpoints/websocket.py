"""`/ws`: one PeerSession per WebSocket, in the task Hypercorn gives the connection."""

from __future__ import annotations

from typing import Any

import anyio
from quart import Quart

from ..core.limits import Pace
from ..internals.of_quart import current_websocket
from ..signaling.session import PeerSession
from ..streams.context import RelayContext
from .guard import WEBSOCKET, Entry, Guard

DRAIN_FRAMES_PER_SECOND = 5000.0  # frames read from closed sessions' clients, server-wide


def websocket_route(app: Quart, ctx: RelayContext, guard: Guard) -> None:
    drain_pace = Pace(DRAIN_FRAMES_PER_SECOND)

    @app.websocket("/ws")
    @guard.door(WEBSOCKET)
    async def _ws(entry: Entry) -> None:
        ws = current_websocket()
        info = entry.keep()  # the session closes its own slot, as every session ends
        await PeerSession(ws, ctx, info, entry.grant, pending=entry.pending).run()
        await _drain_until_disconnect(ws, ctx.settings.relay.teardown_timeout, drain_pace)


async def _drain_until_disconnect(ws: Any, quiet: float, pace: Pace) -> None:
    """After the session has closed, read and drop what the client still sends, until it
    answers the close (Quart then cancels this) or stays quiet for `quiet` seconds.

    Why: once this handler returns nobody reads, and Hypercorn's reader blocks on its full
    queue, for good, with the TCP connection open, if the client is still sending (a flood
    that ignores the close). Returning only after a quiet spell means Hypercorn's queue is
    empty when it queues the disconnect and closes the socket. All such drains share one
    `pace` (frames a second, server-wide): a client that floods on after its close is held
    back by TCP instead of costing the event loop what it sends.
    """
    while True:
        with anyio.move_on_after(quiet) as silence:
            await ws.receive()
        if silence.cancelled_caught:
            return
        await pace.wait()
