"""WebSocket plumbing under Quart and Hypercorn: a bounded receive queue, and no compression.

Both are changes to how the libraries treat every WebSocket, not to our protocol: made once
when the app is built (app.py), guarded by tests on the library internals they touch.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hypercorn.protocol import ws_stream as hypercorn_ws_stream
from quart.asgi import ASGIWebsocketConnection
from wsproto.extensions import PerMessageDeflate

RECEIVE_QUEUE_FRAMES = 32  # incoming frames Quart holds per WebSocket (x 128 KiB at most)


class BoundedWebsocketConnection(ASGIWebsocketConnection):
    """Quart queues incoming frames for the handler without limit: a client that floods a
    session that is slow to read grows server memory (50 MiB sent -> +40 MB RSS). Bounded,
    a full queue makes Quart wait, Hypercorn's own bounded queue fills, its reader stops,
    and TCP holds the client back. (After the session, the `/ws` route drains until the
    client answers the close: endpoints/websocket.py.)"""

    def __init__(self, app: Any, scope: Any) -> None:
        super().__init__(app, scope)
        self.queue = asyncio.Queue(maxsize=RECEIVE_QUEUE_FRAMES)


class _DeclineDeflate(PerMessageDeflate):
    """permessage-deflate, always declined.

    Browsers ask for it and Hypercorn accepts whatever is asked: every WebSocket then holds a
    zlib compressor and decompressor (~300 KB, tracemalloc in bench/slow_readers.py) and
    compresses each small JSON message. Signaling on a LAN gains nothing from it.
    """

    def accept(self, offer: str) -> None:
        return None


def decline_websocket_compression() -> None:
    """Hypercorn has no setting for it: replace the extension its WSStream offers (guarded by
    tests, like rtp_tap.py's hook into aiortc)."""
    setattr(hypercorn_ws_stream, "PerMessageDeflate", _DeclineDeflate)  # noqa: B010
