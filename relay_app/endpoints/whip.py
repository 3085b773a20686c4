"""WHIP ingest (RFC 9725) and WHEP playback (the IETF draft): standard HTTP signaling for
tools that do not speak our WebSocket protocol (OBS, FFmpeg, GStreamer, any browser).

    POST   /whip/<channel>        offer (application/sdp) -> 201, Location, answer
    POST   /whep/<channel>        a player's offer (recvonly) -> 201, Location, answer
    DELETE /whip|whep/<channel>/<resource>   ends that session -> 200
    OPTIONS                       CORS preflight -> 204
    PATCH  <resource>             405: no trickle ICE and no ICE restart (offers carry all
                                  their candidates, as with our WebSocket protocol)

A WHIP publisher is a sender and a WHEP player a receiver like any other: the same media
tasks, limits, registry, logs and metrics (http_peers.py runs them). Errors are the
RelayErrors a WebSocket client would get, with their HTTP status (`RelayError.http_status`):
400 bad SDP, 401 no or bad token, 403 a token that may not, 404 no such channel, 409 a busy
or locked channel, 413 an SDP over webrtc.max_sdp_bytes, 415 not application/sdp, 503 over a
limit (with Retry-After).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from quart import Quart, Response, request

from ..core.config import CHANNEL_NAME
from ..core.errors import LimitError, NegotiationError, NoStreamError, RelayError
from ..core.limits import check_sdp_size
from ..core.logs import get_logger
from ..media.host import MediaRun, admit_sender, check_sender
from ..media.receiver import run_answering_receiver
from ..media.sender import check_offer, run_sender
from ..signaling.http_peers import HttpPeer, HttpPeers, Kind, relay_error
from ..streams.context import RelayContext
from ..streams.finder import stream_to_play
from .guard import PAGE, RESOURCE, WHEP, WHIP, Entry, Guard, origin_allowed

SDP = "application/sdp"
ALLOWED_HEADERS = "Authorization, Content-Type, If-Match"
EXPOSED_HEADERS = "Location, ETag, Link, Accept-Post"
CHANNEL_NAME_RE = re.compile(CHANNEL_NAME)
WHIP_PATHS = ("/whip/", "/whep/")


def whip_routes(app: Quart, ctx: RelayContext, guard: Guard, peers: HttpPeers) -> None:
    endpoints = WhipEndpoints(ctx, peers)
    for kind, door in (("whip", WHIP), ("whep", WHEP)):
        for rule in (f"/{kind}/<channel>", f"/{kind}/<channel>/<resource_id>"):
            app.add_url_rule(
                rule,
                f"{kind}_preflight_{rule.count('/')}",
                guard.door(PAGE)(endpoints.preflight),
                methods=["OPTIONS"],
            )
        opener = guard.door(door)(endpoints.open)
        app.add_url_rule(f"/{kind}/<channel>", f"{kind}_open", opener, methods=["POST"])
        resource = f"/{kind}/<channel>/<resource_id>"
        delete = guard.door(RESOURCE)(endpoints.delete)
        app.add_url_rule(resource, f"{kind}_delete", delete, methods=["DELETE"])
        patch = guard.door(RESOURCE)(endpoints.patch)
        app.add_url_rule(resource, f"{kind}_patch", patch, methods=["PATCH"])

    @app.after_request
    async def _cors(response: Response) -> Response:
        """A browser page of an allowed origin may read every WHIP/WHEP answer, errors too."""
        origin = request.headers.get("Origin")
        on_path = request.path.startswith(WHIP_PATHS)
        if on_path and origin is not None and origin_allowed(origin, request.host, ctx.settings):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
            response.headers["Vary"] = "Origin"
        return response


class WhipEndpoints:
    """The WHIP and WHEP HTTP handlers (the kind is read from the path)."""

    def __init__(self, ctx: RelayContext, peers: HttpPeers) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.peers = peers

    async def preflight(
        self, entry: Entry, channel: str, resource_id: str | None = None
    ) -> Response:
        methods = "DELETE, PATCH, OPTIONS" if resource_id else "POST, OPTIONS"
        response = Response("", status=204, headers={"Allow": methods, "Accept-Post": SDP})
        response.headers["Access-Control-Allow-Methods"] = methods
        response.headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
        response.headers["Access-Control-Max-Age"] = "86400"
        return response

    async def delete(self, entry: Entry, channel: str, resource_id: str) -> Response:
        peer = self.peers.peers.get(resource_id)
        if peer is None or peer.info.stream_id != channel:
            raise NoStreamError(f"no session {resource_id!r} on {channel!r}")
        peer.delete()
        await peer.done.wait()
        return Response("", status=200)

    async def patch(self, entry: Entry, channel: str, resource_id: str) -> Response:
        raise RelayError(
            "no trickle ICE and no ICE restart here: send an offer with all candidates "
            "(wait for ICE gathering to complete), and POST again to restart",
            http_status=405,
            headers={"Allow": "DELETE, OPTIONS"},
        )

    async def open(self, entry: Entry, channel: str) -> Response:
        kind: Kind = "whip" if request.path.startswith("/whip/") else "whep"
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != SDP:
            message = f"send the offer as Content-Type: {SDP}"
            raise RelayError(message, http_status=415, headers={"Accept-Post": SDP})
        offer = await _read_offer(self.settings.webrtc.max_sdp_bytes)
        try:
            peer = await self._start(kind, channel, offer, entry)
        except BaseExceptionGroup as group:
            error = relay_error(group)
            if error is None:
                raise
            raise error from None
        assert peer.answer is not None
        headers = {"Location": f"/{kind}/{channel}/{peer.resource_id}"}
        headers["ETag"] = f'"{peer.resource_id}"'
        return Response(peer.answer, status=201, content_type=SDP, headers=headers)

    async def _start(self, kind: Kind, channel: str, offer: str, entry: Entry) -> HttpPeer:
        if CHANNEL_NAME_RE.fullmatch(channel) is None:
            raise NegotiationError(f"{channel!r} is not a channel name", http_status=404)
        grant, info = entry.grant, entry.info
        assert info is not None  # a door that holds a slot
        if kind == "whip":  # admitted as a /ws sender is (media/host.py), no takeover
            check_sender(grant, channel, False, self.settings)
            check_offer(offer, video_ignored=True)
            hint = (
                "another publisher has it: stop that one first, or ask the operator to stop it "
                f"(POST /admin/streams/{channel}/stop), or publish on another channel"
            )

            def claim() -> None:
                admit_sender(self.ctx, info, channel, False, hint)

            return await self._open(entry, kind, run_sender, offer, claim)
        if grant is not None:
            grant.check_receiving(channel)
        log = get_logger(connection_id=info.connection_id, role="receiver", via="whep")
        stream = await stream_to_play(self.ctx, channel, log)  # (another node's too)
        return await self._open(entry, kind, run_answering_receiver, (stream, offer), None)

    async def _open(
        self, entry: Entry, kind: Kind, run: MediaRun, arg: object, claim: Callable[[], Any] | None
    ) -> HttpPeer:
        """Run the resource until it has negotiated; from then on it holds the guard's slot
        (and releases it when it ends, or when its token expires: signaling/http_peers.py)."""
        assert entry.info is not None  # a door that holds a slot
        claim = claim or (lambda: None)
        peer = await self.peers.open(kind, entry.info, run, arg, claim, entry.grant)
        entry.keep()
        return peer


async def _read_offer(limit: int) -> str:
    """The request's SDP, read only as far as `limit` (webrtc.max_sdp_bytes): a body declared
    or found larger is refused with 413 at once, so no client makes the server hold more
    than an offer's worth. (The guard has checked the token before any of it is read.)"""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise _too_large(declared, limit)
    body = bytearray()
    async for chunk in request.body:
        body += chunk
        if len(body) > limit:
            raise _too_large(len(body), limit)
    offer = body.decode("utf-8", errors="replace")
    check_sdp_size(offer, limit)
    return offer


def _too_large(size: int, limit: int) -> LimitError:
    return LimitError(
        f"SDP too large: {size} bytes (limit {limit}, webrtc.max_sdp_bytes)", http_status=413
    )
