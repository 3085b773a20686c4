"""WebSocket plumbing under Quart and Hypercorn: a bounded receive queue, a stream that takes
nothing in once it has said goodbye, and no compression.

These are changes to how the libraries treat every WebSocket, not to our protocol: made once
when the app is built (app.py; asgi.py for Hypercorn's own command line). How they are made
reaches into Quart's and Hypercorn's internals, so that lives in the room of internals
(internals/of_quart.py, internals/of_hypercorn.py, checked by tests/internals); here are the
numbers and why:

- Quart queues incoming frames for the handler without limit: a client that floods a session
  that is slow to read grows server memory (50 MiB sent -> +40 MB RSS). Bounded, a full
  queue makes Quart wait, Hypercorn's own bounded queue fills, its reader stops, and TCP
  holds the client back.
- Hypercorn keeps taking in what a client sends after the server's close frame (a message
  over the limit grew its buffer without end). Once the server has said goodbye, only the
  client's answer counts, for CLOSE_ANSWER_TIMEOUT, read a chunk at a time with a pause.
- Browsers ask for permessage-deflate and Hypercorn accepts whatever is asked: every
  WebSocket then holds a zlib compressor and decompressor (~300 KB, tracemalloc in
  bench/slow_readers.py) and compresses each small JSON message. A LAN gains nothing.
"""

from __future__ import annotations

from ..internals import of_hypercorn, of_quart

RECEIVE_QUEUE_FRAMES = 32  # incoming frames Quart holds per WebSocket (x 128 KiB at most)
# After the server's close frame: how long the client has to answer it (while it sends on,
# what it sends is dropped), and the pause after each chunk read meanwhile (Hypercorn reads
# 64 KiB at most a time: <= 6.5 MB/s, so TCP holds back a client that floods on).
CLOSE_ANSWER_TIMEOUT = 2.0
AFTER_CLOSE_READ_PAUSE = 0.01

BoundedWebsocketConnection = of_quart.bounded_websocket_connection(RECEIVE_QUEUE_FRAMES)


def bound_websocket_streams(max_message_size: int | None = None) -> None:
    """Serve WebSockets (HTTP/1.1, and HTTP/2's RFC 8441 ones) with a stream that takes in
    messages of at most `max_message_size` bytes (also capped by Hypercorn's own setting:
    hypercorn.toml can say anything, the app's limit holds) and nothing after its goodbye."""
    of_hypercorn.bound_websocket_streams(
        max_message_size, CLOSE_ANSWER_TIMEOUT, AFTER_CLOSE_READ_PAUSE
    )


def decline_websocket_compression() -> None:
    """Decline permessage-deflate. Called where every app is built (app.py), so it also puts
    the bounded stream in place there, capped by Hypercorn's own setting."""
    of_hypercorn.decline_permessage_deflate()
    if not of_hypercorn.websocket_streams_bounded():
        bound_websocket_streams()
