"""The admin API (`/admin/...` on the main port, JSON): who is connected, kick, stop, lock, and
the recordings.

Who may call it: with `auth.secret`, a Bearer token of role `admin` (401 without a valid
token, 403 with another role); without a secret, only the server's own machine (loopback;
403 from anywhere else), since an open LAN server must not let every phone kick the others.
Every action that changes something is logged as its own event with who did it (`by`: the
token's subject, or the loopback address) and from where.

Nothing here keeps state of its own: it reads and changes the StreamRegistry, and asks a
session to close through the registry's record of it (`SessionInfo.kick`), so a kicked
session ends the way every session ends, by its task group exiting.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quart import Quart, Response, jsonify, request, send_file

from .auth import verify
from .config import CHANNEL_NAME
from .context import RelayContext
from .errors import AuthError, http_error_body
from .logs import get_logger
from .recording import RECORDING_NAME, list_recordings
from .registry import UNNAMED_PREFIX, EndCause, SessionInfo

log = get_logger("relay_app.admin")

MAX_REASON = 100  # a close frame's reason holds 123 bytes, with our prefix
CHANNEL_NAME_RE = re.compile(CHANNEL_NAME)


@dataclass(frozen=True)
class Caller:
    """Who called the admin API: logged with every action."""

    by: str
    remote: str


class Refused(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _is_loopback(remote: str) -> bool:
    try:
        return ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


def admin_caller(ctx: RelayContext, authorization: str, remote: str) -> Caller:
    """The caller if the admin API may answer it; Refused (401/403) if not."""
    secret = ctx.settings.auth.secret
    if secret is None:
        if not _is_loopback(remote):
            raise Refused(
                403,
                "the admin API answers only this machine (loopback) while auth.secret is not "
                "set; set auth.secret and use an admin token to call it from elsewhere",
            )
        return Caller(by=f"local {remote}", remote=remote)
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Refused(401, "the admin API needs Authorization: Bearer <admin token>")
    try:
        grant = verify(secret.get_secret_value(), token.strip())
    except AuthError as error:
        raise Refused(401, error.message) from None
    if grant.role != "admin":
        raise Refused(403, f"this token's role ({grant.role}) may not use the admin API")
    return Caller(by=grant.subject or "admin token", remote=remote)


def session_row(info: SessionInfo, ctx: RelayContext) -> dict[str, Any]:
    stream = ctx.registry.streams.get(info.stream_id) if info.stream_id else None
    row: dict[str, Any] = {
        "connection_id": info.connection_id,
        "remote": info.remote,
        "role": info.role,
        "stream_id": info.stream_id,
        "channel": info.stream_id
        if info.stream_id and not info.stream_id.startswith(UNNAMED_PREFIX)
        else None,
        "since": info.since,
        "bytes_in": info.bytes_in,
        "bytes_out": info.bytes_out,
        "user_agent": info.user_agent,
    }
    if info.role == "sender":
        row["audio_bytes_in"] = stream.audio_bytes if stream is not None else 0
    if info.role == "receiver":  # a channel's receiver between two senders is waiting
        row["waiting"] = stream is None or info.connection_id not in stream.receivers
    return row


Handler = Callable[..., Awaitable[Any]]


def _admin_only(ctx: RelayContext) -> Callable[[Handler], Handler]:
    """Route decorator: the handler runs for an allowed caller (its first argument) only."""

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def guarded(**kwargs: Any) -> Any:
            authorization = request.headers.get("Authorization", "")
            try:
                caller = admin_caller(ctx, authorization, request.remote_addr or "")
            except Refused as refused:
                return _error(refused.code, refused.message)
            return await handler(caller, **kwargs)

        return guarded

    return decorate


def admin_routes(app: Quart, ctx: RelayContext) -> None:
    registry = ctx.registry

    @app.get("/admin/sessions")
    @_admin_only(ctx)
    async def _sessions(caller: Caller) -> Any:
        rows = [session_row(info, ctx) for info in registry.sessions.values()]
        return jsonify({"sessions": sorted(rows, key=lambda row: row["since"])})

    @app.post("/admin/sessions/<connection_id>/kick")
    @_admin_only(ctx)
    async def _kick(caller: Caller, connection_id: str) -> Any:
        info = registry.sessions.get(connection_id)
        if info is None or info.kick is None:
            return _error(404, f"no session {connection_id!r}")
        body = await request.get_json(force=True, silent=True) or {}
        reason = str(body.get("reason", "")).strip()[:MAX_REASON] if isinstance(body, dict) else ""
        info.kick(reason)
        _log(caller, "admin_session_kicked", kicked=connection_id, reason=reason or None)
        return jsonify({"kicked": connection_id, "reason": reason})

    @app.post("/admin/streams/<stream_id>/stop")
    @_admin_only(ctx)
    async def _stop(caller: Caller, stream_id: str) -> Any:
        stream = registry.streams.get(stream_id)
        if stream is None or stream.ended.is_set():
            return _error(404, f"no live stream {stream_id!r}")
        stream.end(EndCause.STOPPED)
        _log(caller, "admin_stream_stopped", stream_id=stream_id, sender=stream.sender_id)
        return jsonify({"stopped": stream_id})

    @app.get("/admin/channels")
    @_admin_only(ctx)
    async def _channels(caller: Caller) -> Any:
        rows = [info.model_dump() for info in registry.channel_infos()]
        for row in rows:
            row["locked"] = row["channel"] in registry.locked
        extra = sorted(registry.locked - {row["channel"] for row in rows})
        rows += [{"channel": name, "live": False, "locked": True} for name in extra]
        return jsonify({"channels": rows})

    @app.post("/admin/channels/<channel>/<action>")
    @_admin_only(ctx)
    async def _lock(caller: Caller, channel: str, action: str) -> Any:
        if action not in ("lock", "unlock"):
            return _error(404, f"no action {action!r}: lock or unlock")
        if CHANNEL_NAME_RE.fullmatch(channel) is None:
            return _error(400, f"{channel!r} is not a channel name (letters, digits, -, _)")
        if action == "lock":
            registry.locked.add(channel)
        else:
            registry.locked.discard(channel)
        _log(caller, f"admin_channel_{action}ed", channel=channel)
        return jsonify({"channel": channel, "locked": channel in registry.locked})

    _recording_routes(app, ctx)


def _recording_routes(app: Quart, ctx: RelayContext) -> None:
    registry = ctx.registry

    @app.get("/admin/recordings")
    @_admin_only(ctx)
    async def _recordings(caller: Caller) -> Any:
        directory = Path(ctx.settings.recording.directory)
        live = {s.recording.path for s in registry.live_streams() if s.recording is not None}
        return jsonify(
            {
                "enabled": ctx.settings.recording.enabled,
                "directory": str(directory),
                "recordings": list_recordings(directory, live),
            }
        )

    @app.get("/admin/recordings/<name>")
    @_admin_only(ctx)
    async def _recording(caller: Caller, name: str) -> Any:
        path = Path(ctx.settings.recording.directory) / name
        if RECORDING_NAME.match(name) is None or not path.is_file():
            return _error(404, f"no recording {name!r}")
        _log(caller, "admin_recording_downloaded", name=name)
        response = await send_file(path, mimetype="audio/ogg", as_attachment=True)
        response.timeout = None  # a long recording to a slow client
        return response


def _error(code: int, message: str) -> tuple[Response, int]:
    return jsonify(http_error_body(code, message)), code


def _log(caller: Caller, event: str, **fields: Any) -> None:
    log.info(event, role="admin", by=caller.by, remote=caller.remote, **fields)
