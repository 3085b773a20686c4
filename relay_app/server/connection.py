"""An HTTP response's TCP connection: seeing its client leave, and cutting it from the app;
what Hypercorn cannot be asked for.

A response that writes nothing for minutes (an Ogg listener while its channel has no
speaker) learns that its client left only from Hypercorn's `http.disconnect`, which comes
when Hypercorn reads the client's end of file. Hypercorn 0.18 stops reading an HTTP/1.1
connection until the response ends as soon as the client has sent anything past its request
(a pipelined request, a stray CRLF): a player that did so and hung up was held, with its
session and its place among streams.max_http_listeners, until the next page failed to go
out (the channel's next speaker) or streams.channel_wait_timeout (300 s). `watch_hangups`
has Hypercorn read on meanwhile (internals/of_hypercorn.py: WatchfulH11Protocol), so the
app is told within moments, as it is for any other client. (HTTP/2 reads on anyway.)

Hypercorn closes a connection by flushing what it has buffered first. For a client that keeps
its TCP window shut (an Ogg player that stopped reading) that is never: the app's handler
ends, but the connection, its buffers and its unsent data stay until the kernel gives up
after server.dead_peer_timeout (30 s), in FIN-WAIT-1 as an orphan once Hypercorn lets go.

`cut` resets it at once instead. Finding the connection reaches into Hypercorn 0.18's asyncio
worker (HTTP/1.1 and HTTP/2), in the room of internals (internals/of_hypercorn.py):
tests/internals/test_internals.py fails by name, and the server logs
`connection_abort_unavailable`, when that reach no longer finds the connection.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from typing import Any

from ..internals.of_hypercorn import connection_transport, watch_http11_hangups


def watch_hangups() -> None:
    """Serve HTTP/1.1 so that a client that hangs up during a silent response is seen
    (see above). Called where the server's app is built (app.py), once per process."""
    watch_http11_hangups()


def cut(send: Any) -> bool:
    """Reset the TCP connection under `send` now: SO_LINGER 0, then the transport aborted,
    so the kernel keeps nothing unsent and the client gets a RST. False when the connection
    cannot be found."""
    transport = connection_transport(send)
    if transport is None:
        return False
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    return True
