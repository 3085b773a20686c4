"""The admin API (`/admin/...` on the main port, JSON): who is connected, Disconnect and
Remove, stop, lock, invites, and the recordings.

Who may call it is the guard's ADMIN door (endpoints/guard.py): with `auth.secret`, a token
of role `admin` (401 without a valid token, 403 with another role); without a secret, only
the server's own machine (loopback; 403 from anywhere else), since an open LAN server must not
let every phone kick the others.
Every action that changes something is logged as its own event with who did it (`by`: the
token's subject, or the loopback address) and from where.

Nothing here keeps state of its own: it reads and changes the StreamRegistry, and asks a
session to close through the registry's record of it (`SessionInfo.kick`), so a disconnected
session ends the way every session ends, by its task group exiting. Remove withdraws the
token the session holds (the context's Revocations, shared through Redis in cluster mode):
the guard refuses it at every door from then on, and ends every connection holding it.
"""

from __future__ import annotations

import functools
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quart import Quart, jsonify, request, send_file

from ..audio.recording import RECORDING_NAME, list_recordings
from ..core.auth import Grant, mint, parse_ttl
from ..core.config import CHANNEL_NAME
from ..core.errors import RelayError
from ..core.logs import get_logger
from ..core.people import MAX_NAME, clean_name
from ..core.protocol import Disconnected
from ..media.booth import OPERATOR, booth_row, give_turn, waiting_on
from ..streams.context import RelayContext
from ..streams.stream import UNNAMED_PREFIX, EndCause, SessionInfo, name_of
from .guard import ADMIN, REMOVED_WORDS, Entry, Guard

log = get_logger("relay_app.admin")


class NotFound(RelayError):
    kind = "not_found"
    http_status = 404


class NothingToWithdraw(RelayError):
    kind = "not_removable"
    http_status = 409


MAX_REASON = 100  # a close frame's reason holds 123 bytes, with our prefix
# What the operator's Disconnect tells a person (their page then stays off until reloaded).
DISCONNECTED_WORDS = "The operator disconnected you{why}. Reload this page to connect again."
# What each role is doing now, in the console's words.
WHAT = {
    "sender": "speaking",
    "waiting": "waiting to speak",
    "receiver": "listening",
    "listener": "listening",
}
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


@dataclass(frozen=True)
class Holders:
    """How many connections hold each token id, and each id a Remove would withdraw (a
    pass's invite included): counted once per listing, not once per row (a console polling
    a thousand connections every 2 s would otherwise walk them a million times)."""

    tokens: Counter[str | None]
    revocable: Counter[str]

    @classmethod
    def of(cls, sessions: Iterable[SessionInfo]) -> Holders:
        grants = [s.grant for s in sessions if s.grant is not None]
        return cls(
            Counter(g.token_id for g in grants),
            Counter(i for g in grants for i in g.revocation_ids),
        )


def session_row(info: SessionInfo, ctx: RelayContext, holders: Holders) -> dict[str, Any]:
    stream = ctx.registry.streams.get(info.stream_id) if info.stream_id else None
    channel = (
        info.stream_id if info.stream_id and not info.stream_id.startswith(UNNAMED_PREFIX) else None
    )
    configured = ctx.settings.channels.get(channel) if channel is not None else None
    label = configured.label if configured is not None else stream.label if stream else channel
    row: dict[str, Any] = {
        "connection_id": info.connection_id,
        "remote": info.remote,
        "role": info.role,
        "stream_id": info.stream_id,
        "channel": channel,
        "since": info.since,
        "bytes_in": info.bytes_in,
        "bytes_out": info.bytes_out,
        "user_agent": info.user_agent,
        # Who, what, where, on what (the console's words).
        "name": info.name,
        # A name the person typed, not one an operator gave their token: the console says so.
        "self_named": bool(info.given_name) and not (info.grant and info.grant.name),
        "what": "relaying to another node" if info.node_link else WHAT.get(info.role, "connected"),
        "channel_label": label or None,
        "device": info.device or None,
        "via": info.via,
        "token": token_row(info, holders),
    }
    if info.role == "sender":
        row["audio_bytes_in"] = stream.audio_bytes if stream is not None else 0
        # Its leg's loss: packets that never arrived, and those of them rebuilt from RED.
        row["packets_lost"] = stream.packets_lost if stream is not None else 0
        row["packets_repaired"] = stream.packets_repaired if stream is not None else 0
    if info.role == "receiver":  # a channel's receiver between two senders is waiting
        row["waiting"] = stream is None or info.connection_id not in stream.outputs
        # What it last reported losing of our packets (RTCP; fast-path listeners).
        row["loss"] = round(stream.listener_loss(info.connection_id), 3) if stream else 0.0
    return row


def token_row(info: SessionInfo, holders: Holders) -> dict[str, Any] | None:
    """What Remove would withdraw from this session, and who else holds it (None: nothing,
    as on a server without auth.secret).

    kind: "pass" (a device's own, made from an invite), "invite" (a link or code itself),
    "token" (a personal token); `connection_only`: a pass of this connection alone (a WHEP
    or Ogg player that came with an invite: coming back with the invite gets it in again);
    `connections`: the connections holding the same token (this one included);
    `invite_connections`: those that came in with the same invite (with a pass of their own,
    or with the invite itself)."""
    grant = info.grant
    if grant is None or grant.role == "node" or info.node_link:
        return None
    invite = grant.parent if grant.parent is not None else grant.token_id if grant.invite else None
    return {
        "kind": "pass" if grant.parent is not None else "invite" if grant.invite else "token",
        "connection_only": grant.connection_only,
        "name": grant.name,
        "expires_at": grant.expires_at,
        "connections": holders.tokens[grant.token_id],
        "invite_connections": None if invite is None else holders.revocable[invite],
    }


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

    @app.post("/admin/streams/<stream_id>/stop")
    @_admin_only(guard)
    async def _stop(caller: Caller, stream_id: str) -> Any:
        stream = registry.streams.get(stream_id)
        if stream is None or stream.ended.is_set():
            raise NotFound(f"no live stream {stream_id!r}")
        stream.end(EndCause.STOPPED)
        _log(caller, "admin_stream_stopped", stream_id=stream_id, sender=stream.sender_id)
        return jsonify({"stopped": stream_id})

    _session_routes(app, ctx, guard)
    _channel_routes(app, ctx, guard)
    _invite_routes(app, ctx, guard)
    _recording_routes(app, ctx, guard)


def _session_routes(app: Quart, ctx: RelayContext, guard: Guard) -> None:
    """Who is connected; Disconnect; Remove."""
    registry = ctx.registry

    @app.get("/admin/sessions")
    @_admin_only(guard)
    async def _sessions(caller: Caller) -> Any:
        holders = Holders.of(registry.sessions.values())
        rows = [
            session_row(info, ctx, holders)
            for info in registry.sessions.values()
            if info.role != "admin"  # (admin calls hold a slot only while they run)
        ]
        return jsonify({"sessions": sorted(rows, key=lambda row: row["since"])})

    @app.post("/admin/sessions/<connection_id>/disconnect")
    @app.post("/admin/sessions/<connection_id>/kick")  # (its old name)
    @_admin_only(guard)
    async def _disconnect(caller: Caller, connection_id: str) -> Any:
        """Tell them and close: their page stays off until it is reloaded. A device's other
        connections (its pass's: a Listen page's plain-audio stream) end with it."""
        info = _connected(registry.sessions, connection_id)
        reason = clean_name(str((await _body()).get("reason", "")))[:MAX_REASON]
        why = f" ({reason})" if reason else ""
        farewell = Disconnected(reason="disconnected", message=DISCONNECTED_WORDS.format(why=why))
        ended = _end(_device_sessions(registry.sessions, info), farewell)
        fields = {"name": info.name, "reason": reason or None, "connections": len(ended)}
        _log(caller, "admin_session_disconnected", disconnected=connection_id, **fields)
        return jsonify({"disconnected": ended, "reason": reason, "message": farewell.message})

    @app.post("/admin/sessions/<connection_id>/remove")
    @_admin_only(guard)
    async def _remove(caller: Caller, connection_id: str) -> Any:
        """Disconnect, and withdraw what they came in with for the rest of its lifetime:
        their pass (a device's own token made from an invite), or their token; with
        `{"invite": true}` the invite itself, and with it every device that used it."""
        info = _connected(registry.sessions, connection_id)
        token_id, withdrawn = _withdrawing(info, (await _body()).get("invite") is True)
        grant = info.grant
        assert grant is not None
        until = grant.expires_at if grant.expires_at is not None else time.time() + 86400
        holders = [
            s
            for s in registry.sessions.values()
            if s.grant is not None and token_id in s.grant.revocation_ids
        ]
        ctx.revocations.revoke([token_id], until)  # the guard ends whoever holds it...
        farewell = Disconnected(reason="removed", message=REMOVED_WORDS)
        removed = _end(holders, farewell)  # ...and a second time is nothing (withdrawn before?)
        fields = {"withdrawn": withdrawn, "until": until, "connections": len(removed)}
        _log(caller, "admin_session_removed", removed=connection_id, name=info.name, **fields)
        return jsonify({"removed": removed, **fields, "message": farewell.message})


def _end(sessions: list[SessionInfo], farewell: Disconnected) -> list[str]:
    """Each of `sessions` told `farewell` and closed; their connection ids."""
    for session in sessions:
        if session.kick is not None:
            session.kick(farewell)
    return [session.connection_id for session in sessions]


def _withdrawing(info: SessionInfo, invite: bool) -> tuple[str, str]:
    """The token id Remove withdraws from `info`, and what it is: "pass", "token", or (asked
    for) "invite"; a plain-words RelayError when there is none."""
    grant = _removable(info)
    assert grant.token_id is not None  # (verify gives every grant one)
    if not invite:
        return grant.token_id, "pass" if grant.parent is not None else "token"
    if grant.parent is None and not grant.invite:
        raise RelayError(
            f"{info.name} did not come in with an invite (a link or code others share); "
            "Remove withdraws their own token"
        )
    return grant.parent or grant.token_id, "invite"


def _connected(sessions: dict[str, SessionInfo], connection_id: str) -> SessionInfo:
    info = sessions.get(connection_id)
    if info is None or info.kick is None or info.role == "admin":
        raise NotFound(
            f"Nobody is connected as {connection_id[:40]!r} now: they may have left already "
            "(the list refreshes every 2 seconds)."
        )
    return info


async def _body() -> dict[str, Any]:
    """The request's JSON object ({} for none); bad JSON or another type is a plain 400."""
    if not await request.get_data():
        return {}
    try:
        body = await request.get_json(force=True, silent=True)
    except UnicodeDecodeError:  # (silent covers bad JSON, not bytes that are no UTF-8)
        body = None
    if not isinstance(body, dict):
        raise RelayError('the body must be a JSON object, e.g. {"reason": "..."}')
    return body


def _device_sessions(sessions: dict[str, SessionInfo], info: SessionInfo) -> list[SessionInfo]:
    """`info` and the device's other connections: those holding the same personal pass."""
    grant = info.grant
    if grant is None or grant.parent is None:
        return [info]
    mine = grant.token_id
    same = [s for s in sessions.values() if s.grant is not None and s.grant.token_id == mine]
    return [info, *(s for s in same if s is not info)]


def _removable(info: SessionInfo) -> Grant:
    """The grant Remove withdraws; NothingToWithdraw, in plain words, when there is none."""
    if info.node_link or (info.grant is not None and info.grant.role == "node"):
        raise NothingToWithdraw(
            "That is another relay node's link, not a person: it ends when its node stops."
        )
    if info.grant is None:
        raise NothingToWithdraw(
            "There is nothing to withdraw: this server runs without access tokens "
            "(auth.secret is not set), so anyone on the network can connect again. "
            "Use Disconnect, or set auth.secret."
        )
    return info.grant


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
            row.update(booth_row(ctx, row["channel"]))  # speaking, waiting, speaker lost
            if row["speaker_lost"]:
                row["level_dbfs"] = None  # (the last level heard is not what plays now)
        extra = sorted(registry.locked - {row["channel"] for row in rows})
        rows += [{"channel": name, "live": False, "locked": True} for name in extra]
        return jsonify({"channels": rows})

    @app.post("/admin/channels/<channel>/handover")
    @_admin_only(guard)
    async def _handover(caller: Caller, channel: str) -> Any:
        """Hand `channel` to a speaker waiting on it (`{"to": connection_id}`; none: whoever
        has waited longest): they are told `your_turn` and take it over (media/booth.py)."""
        body = await _body()
        to = str(body.get("to") or "")
        if CHANNEL_NAME_RE.fullmatch(channel) is None:
            raise NotFound(f"There is no channel called {channel[:40]!r}.")
        known = channel in ctx.settings.channels or channel in registry.streams
        if not known and not waiting_on(ctx, channel):
            raise NotFound(f"There is no channel called {channel!r}.")
        partner = give_turn(ctx, channel, lambda info: to in ("", info.connection_id), OPERATOR)
        _log(caller, "admin_channel_handed_over", channel=channel, to=partner.connection_id)
        to = partner.connection_id
        return jsonify({"channel": channel, "to": to, "name": name_of(partner, "A speaker")})

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
        Listen URL and a QR code); `{"channel", "ttl", "name"?}` in, `{"token",
        "expires_at"}` out. Each page that opens it exchanges it for a pass of its own
        (core/auth.personal_pass); `name` names whoever uses it on the console."""
        body = await _body()
        channel = str(body.get("channel", ""))
        if CHANNEL_NAME_RE.fullmatch(channel) is None:
            raise RelayError(f"{channel!r} is not a channel name (letters, digits, -, _)")
        try:
            ttl = parse_ttl(str(body.get("ttl", "8h")))
        except ValueError as error:
            raise RelayError(str(error)) from None
        name = body.get("name")
        if name is not None and (not isinstance(name, str) or len(clean_name(name)) > MAX_NAME):
            raise RelayError(f'name: a text of at most {MAX_NAME} characters, e.g. "Press"')
        name = clean_name(name) or None if name is not None else None
        secret = ctx.settings.auth.secret
        token = None
        if secret is not None:  # an open server needs no token: the link is the invite
            key, by = secret.get_secret_value(), f"invite by {caller.by}"
            token = mint(key, "receive", ttl, stream=channel, subject=by, name=name, invite=True)
        _log(caller, "admin_invite_made", channel=channel, ttl_seconds=ttl, name=name)
        return jsonify(
            {"channel": channel, "token": token, "name": name, "expires_at": time.time() + ttl}
        )


def _recording_routes(app: Quart, ctx: RelayContext, guard: Guard) -> None:
    registry = ctx.registry

    @app.get("/admin/recordings")
    @_admin_only(guard)
    async def _recordings(caller: Caller) -> Any:
        directory = Path(ctx.settings.recording.directory)
        recordings = [s.outputs.recording for s in registry.live_streams()]
        live = {r.path for r in recordings if r is not None}
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
