"""PortDispatcher: one ASGI app for Hypercorn that serves :8080 and :8081 from one process."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from quart import Quart

from ..endpoints.guard import refuse_malformed_host
from ..endpoints.listen import ABORT, Abort
from .connection import cut

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


class PortDispatcher:
    """Hypercorn serves one app on every bind, so requests are routed by the local port they
    arrived on; lifespan goes to the main app, which owns ROOT."""

    def __init__(self, main: Quart, status: Quart, status_ports: set[int]) -> None:
        self.main = main
        self.status = status
        self.status_ports = status_ports

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        server = scope.get("server")
        app = self.main
        if scope["type"] != "lifespan" and server and server[1] in self.status_ports:
            app = self.status
        if await refuse_malformed_host(scope, send):
            return
        if scope["type"] == "http":
            # A response that must end now, however stuck its writes are (an Ogg listener
            # dropped as too slow): the route aborts, Quart sees a disconnect.
            abort = scope[ABORT] = Abort(lambda: cut(send))  # (it resets the connection)
            receive = abort.wrap(receive)
        await app(scope, receive, send)  # type: ignore[arg-type]
