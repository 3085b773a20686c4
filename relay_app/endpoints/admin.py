"""The admin API (`/admin/...` on the main port, JSON): who is connected, kick, stop, lock, and
the recordings.

Who may call it is the guard's ADMIN door (endpoints/guard.py): with `auth.secret`, a token
of role `admin` (401 without a valid token, 403 with another role); without a secret, only
the server's own machine (loopback; 403 from anywhere else), since an open LAN server must not
let every phone kick the others.
Every action that changes something is logged as its own event with who did it (`by`: the
token's subject, or the loopback address) and from where.

Nothing here keeps state of its own: it reads and changes the StreamRegistry, and asks a
session to close through the registry's record of it (`SessionInfo.kick`), so a kicked
session ends the way every session ends, by its task group exiting.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quart import Quart, jsonify, request, send_file

from ..audio.recording import RECORDING_NAME, list_recordings
from ..core.auth import mint, parse_ttl
from ..core.config import CHANNEL_NAME
from ..core.errors import RelayError
from ..core.logs import get_logger
from ..streams.context import RelayContext
from ..streams.stream import UNNAMED_PREFIX, EndCause, SessionInfo
from .guard import ADMIN, Entry, Guard

log = get_logger("relay_app.admin")


class NotFound(RelayError):
    kind = "not_found"
    http_status = 404


MAX_REASON = 100  # a close frame's reason holds 123 bytes, with our prefix
CHANNEL_NAME_RE = re.compile(CHANNEL_NAME)


@dataclass(frozen=True)
class Caller:
    """Who called the admin API: logged with every action."""

    by: str
    remote: str

    @classmethod
    def of(cls, entry: Entry) -> Caller:
        if entry.grant is None:  # no auth.secret: the guard let only this machine in
            return cls(by=f"local {entry.remote}", remote=entry.remote)
        return cls(by=entry.grant.subject or "admin token", remote=entry.remote)


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
        # Its leg's loss: packets that never arrived, and those of them rebuilt from RED.
        row["packets_lost"] = stream.packets_lost if stream is not None else 0
        row["packets_repaired"] = stream.packets_repaired if stream is not None else 0
    if info.role == "receiver":  # a channel's receiver between two senders is waiting
        row["waiting"] = stream is None or info.connection_id not in stream.receivers
        # What it last reported losing of our packets (RTCP; fast-path listeners).
        row["loss"] = round(stream.listener_loss(info.connection_id), 3) if stream else 0.0
    return row


def _admin_only(guard: Guard) -> Callable[[Handler], Handler]:
    """Route decorator: the ADMIN door, and the handler gets its `Caller` first."""

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def with_caller(entry: Entry, **kwargs: Any) -> Any:
            return await handler(Caller.of(entry), **kwargs)

        return guard.door(ADMIN)(with_caller)

    return decorate


Handler = Callable[..., Awaitable[Any]]


def admin_routes(app: Quart, ctx: RelayContext, guard: Guard) -> None:
    registry = ctx.registry

    @app.get("/admin/sessions")
    @_admin_only(guard)
    async def _sessions(caller: Caller) -> Any:
        rows = [
            session_row(info, ctx)
            for info in registry.sessions.values()
            if info.role != "admin"  # (admin calls hold a slot only while they run)
        ]
        return jsonify({"sessions": sorted(rows, key=lambda row: row["since"])})

    @app.post("/admin/sessions/<connection_id>/kick")
    @_admin_only(guard)
    async def _kick(caller: Caller, connection_id: str) -> Any:
        info = registry.sessions.get(connection_id)
        if info is None or info.kick is None:
            raise NotFound(f"no session {connection_id!r}")
        body = await request.get_json(force=True, silent=True) or {}
        reason = str(body.get("reason", "")).strip()[:MAX_REASON] if isinstance(body, dict) else ""
        info.kick(reason)
        _log(caller, "admin_session_kicked", kicked=connection_id, reason=reason or None)
        return jsonify({"kicked": connection_id, "reason": reason})

    @app.post("/admin/streams/<stream_id>/stop")
    @_admin_only(guard)
    async def _stop(caller: Caller, stream_id: str) -> Any:
        stream = registry.streams.get(stream_id)
        if stream is None or stream.ended.is_set():
            raise NotFound(f"no live stream {stream_id!r}")
        stream.end(EndCause.STOPPED)
        _log(caller, "admin_stream_stopped", stream_id=stream_id, sender=stream.sender_id)
        return jsonify({"stopped": stream_id})

    _channel_routes(app, ctx, guard)
    _invite_routes(app, ctx, guard)
    _recording_routes(app, ctx, guard)


def _channel_routes(app: Quart, ctx: RelayContext, guard: Guard) -> None:
    registry = ctx.registry

    @app.get("/admin/channels")
    @_admin_only(guard)
    async def _channels(caller: Caller) -> Any:
        rows = [info.model_dump() for info in registry.channel_infos()]
        for row in rows:
            row["locked"] = row["channel"] in registry.locked
            stream = registry.streams.get(row["channel"])
            live = stream is not None and not stream.ended.is_set()
            row["level_dbfs"] = stream.level if live and stream is not None else None
        extra = sorted(registry.locked - {row["channel"] for row in rows})
        rows += [{"channel": name, "live": False, "locked": True} for name in extra]
        return jsonify({"channels": rows})

    @app.post("/admin/channels/<channel>/<action>")
    @_admin_only(guard)
    async def _lock(caller: Caller, channel: str, action: str) -> Any:
        if action not in ("lock", "unlock"):
            raise NotFound(f"no action {action!r}: lock or unlock")
        if CHANNEL_NAME_RE.fullmatch(channel) is None:
            raise RelayError(f"{channel!r} is not a channel name (letters, digits, -, _)")
        if action == "lock":
            registry.locked.add(channel)
        else:
            registry.locked.discard(channel)
        _log(caller, f"admin_channel_{action}ed", channel=channel)
        return jsonify({"channel": channel, "locked": channel in registry.locked})


def _invite_routes(app: Quart, ctx: RelayContext, guard: Guard) -> None:
    @app.post("/admin/invites")
    @_admin_only(guard)
    async def _invite(caller: Caller) -> Any:
        """A receive token for one channel, for an invite link (the console shows it as a
        Listen URL and a QR code); `{"channel", "ttl"}` in, `{"token", "expires_at"}` out."""
        body = await request.get_json(force=True, silent=True) or {}
        channel = str(body.get("channel", "")) if isinstance(body, dict) else ""
        if CHANNEL_NAME_RE.fullmatch(channel) is None:
            raise RelayError(f"{channel!r} is not a channel name (letters, digits, -, _)")
        try:
            ttl = parse_ttl(str(body.get("ttl", "8h")))
        except ValueError as error:
            raise RelayError(str(error)) from None
        secret = ctx.settings.auth.secret
        token = None
        if secret is not None:  # an open server needs no token: the link is the invite
            key = secret.get_secret_value()
            token = mint(key, "receive", ttl, stream=channel, subject=f"invite by {caller.by}")
        _log(caller, "admin_invite_made", channel=channel, ttl_seconds=ttl)
        return jsonify({"channel": channel, "token": token, "expires_at": time.time() + ttl})


def _recording_routes(app: Quart, ctx: RelayContext, guard: Guard) -> None:
    registry = ctx.registry

    @app.get("/admin/recordings")
    @_admin_only(guard)
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
    @_admin_only(guard)
    async def _recording(caller: Caller, name: str) -> Any:
        path = Path(ctx.settings.recording.directory) / name
        if RECORDING_NAME.match(name) is None or not path.is_file():
            raise NotFound(f"no recording {name!r}")
        _log(caller, "admin_recording_downloaded", name=name)
        response = await send_file(path, mimetype="audio/ogg", as_attachment=True)
        response.timeout = None  # a long recording to a slow client
        return response


def _log(caller: Caller, event: str, **fields: Any) -> None:
    log.info(event, role="admin", by=caller.by, remote=caller.remote, **fields)
