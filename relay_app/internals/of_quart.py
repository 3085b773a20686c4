"""Quart 0.22.0 (and the Werkzeug proxy it hands a route): the WebSocket's receive queue and
the WebSocket object behind `quart.websocket`.

Quart queues a WebSocket's incoming frames for the handler in `ASGIWebsocketConnection.queue`,
without limit, and has no setting for it: a client that floods a session that is slow to
read grows server memory (50 MiB sent -> +40 MB RSS). The queue is replaced by a bounded
one right where Quart makes it; its `handle_messages` then waits when it is full,
Hypercorn's own bounded queue fills, its reader stops, and TCP holds the client back.
"""

from __future__ import annotations

import asyncio
from typing import Any

from quart import websocket
from quart.asgi import ASGIWebsocketConnection


def bounded_websocket_connection(frames: int) -> type[ASGIWebsocketConnection]:
    """Quart's WebSocket connection class (`app.asgi_websocket_class`) with at most `frames`
    incoming frames queued for the handler."""

    class BoundedWebsocketConnection(ASGIWebsocketConnection):
        def __init__(self, app: Any, scope: Any) -> None:
            super().__init__(app, scope)
            self.queue = asyncio.Queue(maxsize=frames)

    return BoundedWebsocketConnection


def current_websocket() -> Any:
    """The route's WebSocket object itself, not Quart's context-bound proxy to it (Werkzeug's
    `LocalProxy._get_current_object`): the session keeps it and uses it from its own tasks."""
    return websocket._get_current_object()  # type: ignore[attr-defined]
