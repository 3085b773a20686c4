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

import json
import re
from typing import Any

from quart import Quart, Response, request

from .auth import Grant, verify
from .config import CHANNEL_NAME
from .context import RelayContext
from .errors import AuthError, NegotiationError, RelayError, http_error_body
from .http_peers import HttpPeers, Kind, relay_error
from .limits import check_sdp_size
from .logs import get_logger
from .origins import origin_allowed
from .receiver import run_answering_receiver
from .registry import SessionInfo
from .sender import check_offer, run_sender
from .session import new_connection_id

SDP = "application/sdp"
RETRY_AFTER = "5"
ALLOWED_HEADERS = "Authorization, Content-Type, If-Match"
EXPOSED_HEADERS = "Location, ETag, Link, Accept-Post"
CHANNEL_NAME_RE = re.compile(CHANNEL_NAME)


def _json(code: int, message: str, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(http_error_body(code, message))
    return Response(body, status=code, content_type="application/json", headers=headers or {})


def _refusal(error: RelayError) -> Response:
    headers = {}
    if error.http_status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="relay_app"'
    if error.http_status == 503:
        headers["Retry-After"] = RETRY_AFTER
    return _json(error.http_status, error.message, headers)


def bearer_grant(ctx: RelayContext, authorization: str) -> Grant | None:
    """The request's grant (None while auth is off); AuthError 401 without a valid token."""
    secret = ctx.settings.auth.secret
    if secret is None:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("this endpoint needs Authorization: Bearer <token>", http_status=401)
    try:
        return verify(secret.get_secret_value(), token.strip())
    except AuthError as error:
        raise AuthError(error.message, http_status=401) from None


def whip_routes(app: Quart, ctx: RelayContext, peers: HttpPeers) -> None:
    endpoints = WhipEndpoints(ctx, peers)
    for kind in ("whip", "whep"):
        for rule in (f"/{kind}/<channel>", f"/{kind}/<channel>/<resource_id>"):
            app.add_url_rule(
                rule,
                f"{kind}_preflight_{rule.count('/')}",
                endpoints.preflight,
                methods=["OPTIONS"],
            )
        app.add_url_rule(f"/{kind}/<channel>", f"{kind}_open", endpoints.open, methods=["POST"])
        resource = f"/{kind}/<channel>/<resource_id>"
        app.add_url_rule(resource, f"{kind}_delete", endpoints.delete, methods=["DELETE"])
        app.add_url_rule(resource, f"{kind}_patch", endpoints.patch, methods=["PATCH"])


class WhipEndpoints:
    """The WHIP and WHEP HTTP handlers (the kind is read from the path)."""

    def __init__(self, ctx: RelayContext, peers: HttpPeers) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.peers = peers

    def cors(self, response: Response) -> Response:
        origin = request.headers.get("Origin")
        if origin is not None and origin_allowed(origin, request.host, self.settings):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
            response.headers["Vary"] = "Origin"
        return response

    async def preflight(self, channel: str, resource_id: str | None = None) -> Response:
        methods = "DELETE, PATCH, OPTIONS" if resource_id else "POST, OPTIONS"
        response = Response("", status=204, headers={"Allow": methods, "Accept-Post": SDP})
        response.headers["Access-Control-Allow-Methods"] = methods
        response.headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
        response.headers["Access-Control-Max-Age"] = "86400"
        return self.cors(response)

    async def delete(self, channel: str, resource_id: str) -> Response:
        peer = self.peers.peers.get(resource_id)
        if peer is None or peer.info.stream_id != channel:
            return self.cors(_json(404, f"no session {resource_id!r} on {channel!r}"))
        peer.delete()
        await peer.done.wait()
        return self.cors(Response("", status=200))

    async def patch(self, channel: str, resource_id: str) -> Response:
        message = (
            "no trickle ICE and no ICE restart here: send an offer with all candidates "
            "(wait for ICE gathering to complete), and POST again to restart"
        )
        return self.cors(_json(405, message, {"Allow": "DELETE, OPTIONS"}))

    async def open(self, channel: str) -> Response:
        kind: Kind = "whip" if request.path.startswith("/whip/") else "whep"
        origin = request.headers.get("Origin")
        if not origin_allowed(origin, request.host, self.settings):
            return _json(403, f"origin {origin} is not allowed (server.allowed_origins)")
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != SDP:
            return _json(415, f"send the offer as Content-Type: {SDP}", {"Accept-Post": SDP})
        try:
            offer = await _read_offer(self.settings.webrtc.max_sdp_bytes)
            grant = bearer_grant(self.ctx, request.headers.get("Authorization", ""))
            peer = await self._start(kind, channel, offer, grant)
        except (RelayError, BaseExceptionGroup) as caught:
            error = relay_error(caught)
            if error is None:
                raise
            return self.cors(_refusal(error))
        assert peer.answer is not None
        headers = {"Location": f"/{kind}/{channel}/{peer.resource_id}"}
        headers["ETag"] = f'"{peer.resource_id}"'
        return self.cors(Response(peer.answer, status=201, content_type=SDP, headers=headers))

    async def _start(self, kind: Kind, channel: str, offer: str, grant: Grant | None) -> Any:
        if CHANNEL_NAME_RE.fullmatch(channel) is None:
            raise NegotiationError(f"{channel!r} is not a channel name", http_status=404)
        remote = request.remote_addr or ""
        info = SessionInfo(new_connection_id(), remote, user_agent=_user_agent())
        registry = self.ctx.registry
        if kind == "whip":
            if grant is not None:
                _check_role(grant, "send")
                grant.check_sending(channel)
            check_offer(offer, video_ignored=True)
            max_streams = self.settings.streams.max_streams

            def claim() -> None:
                registry.claim_sender(info, max_streams, channel)

            return await self.peers.open(kind, info, run_sender, offer, claim)
        if grant is not None:
            _check_role(grant, "receive")
            grant.check_receiving(channel)
        log = get_logger(connection_id=info.connection_id, role="receiver", via="whep")
        stream = registry.find_live_stream(channel, log)
        run, arg = run_answering_receiver, (stream, offer)
        return await self.peers.open(kind, info, run, arg, lambda: None)


async def _read_offer(limit: int) -> str:
    """The request's SDP; 413 over the limit. Read first even then: answering before the
    client has sent its body makes it see a reset instead of the 413. (Quart bounds any body
    at MAX_CONTENT_LENGTH, 16 MiB.)"""
    body = await request.get_data()
    offer = body if isinstance(body, str) else body.decode("utf-8", errors="replace")
    check_sdp_size(offer, limit)
    return offer


def _check_role(grant: Grant, what: str) -> None:
    if grant.role in ("metrics", "admin"):
        raise AuthError(f"a {grant.role} token may not {what}")


def _user_agent() -> str:
    return request.headers.get("User-Agent", "")[:200]
