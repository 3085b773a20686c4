"""The room of library internals: every private name of aiortc, aioice, pylibsrtp, asyncio,
Quart and Hypercorn that relay_app touches is touched here, and nowhere else.

Why it reaches at all: a forwarding relay needs what these libraries keep to themselves (the
RTP packet as it arrives, the receiver's SRTP session and socket, the selector loop's
reader registration, Hypercorn's WebSocket stream); each function here says what it reaches
for and why no public road gets there. The rest of relay_app calls these functions and never
spells a private name (tests/operations/test_design_rules.py holds that line), so an upgrade
breaks in this room, and `tests/internals/test_internals.py` names what broke: one row per
reach, and the versions below, which pyproject.toml and constraints.txt pin exactly.

Why a package and where: one module per library, so that importing the aiortc reaches (the
client does) imports no Hypercorn, and one floor of its own just above `core`, below
`webrtc` and `server` alike, so both the media plane and the web server can call into it
without an import running up the layers. It imports nothing of relay_app but `core`.

    of_aiortc     receivers' RTP hook, senders' reports, DTLS state and SRTP, certificates
    of_aioice     the nominated pair, the sockets, the check list, host-candidate hooks
    of_pylibsrtp  SRTP protection in the session's own buffer
    of_asyncio    the selector loop's datagram sockets: direct sends, batched reads
    of_quart      the WebSocket's receive queue, the request's WebSocket object
    of_hypercorn  the WebSocket stream, permessage-deflate, HTTP/1.1 reading on during a
                  response (a client that hangs up is seen), a response's TCP transport

Another event loop (uvloop, or a loop without epoll) has none of the selector loop's
internals: `of_asyncio` says so (`batched_reads_unavailable`) and gives the transport's public
`sendto` instead of the socket's; the relay works, without batched reads.
"""

# The versions these reaches were written for and checked against (pinned exactly in
# pyproject.toml and constraints.txt; tests/internals/test_internals.py compares all three).
WRITTEN_FOR = {
    "aiortc": "1.16.0",
    "aioice": "0.13.0",
    "pylibsrtp": "1.0.0",
    "Quart": "0.22.0",
    "Hypercorn": "0.18.0",
}
