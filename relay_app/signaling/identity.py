"""Who a WebSocket session is, and the operator's word on it.

A session's grant as it authenticates (a token in its first message, a mid-session `auth`),
the pass an invite's holder gets with its `welcome` (core/auth.personal_pass), the name its
client gives, and the operator's Disconnect and Remove (`dismiss`: told, then closed). Kept
apart from the session's lifetime (session.py), which calls these.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..core import protocol as p
from ..core.auth import Grant, authenticate, personal_pass, reauthenticate
from ..core.errors import CloseCode
from ..core.people import given_name
from ..streams.stream import SessionInfo

if TYPE_CHECKING:
    from .session import PeerSession


def welcome(session: PeerSession, config: dict[str, Any]) -> p.Welcome:
    """`welcome` with `config` (what the client needs), and, for a page that came with an
    invite (a link or code many share), a token of its own (core/auth.personal_pass) that the
    session holds from now on: the operator's Remove then withdraws this device, not
    everyone's invite."""
    secret = session.settings.auth.secret
    made = (
        personal_pass(secret.get_secret_value(), session.grant)
        if secret and session.grant
        else None
    )
    if made is None:
        return p.Welcome(connection_id=session.connection_id, config=config)
    token, session.grant = made
    session.info.grant = session.grant
    session.info.number = session.ctx.names.adopt(session.grant, session.info.number)
    return p.Welcome(connection_id=session.connection_id, config=config, personal_token=token)


async def first_message_grant(session: PeerSession) -> Grant:
    """The grant of a token sent as the first message (a withdrawn one is refused)."""
    revoked, info = session.ctx.revocations, session.info
    grant = await authenticate(session.ws, session.settings, session.log, revoked)
    info.grant, info.number = grant, session.ctx.names.adopt(grant, info.number)
    return grant


def reauthenticated(session: PeerSession, token: str) -> p.ServerMessage:
    """`auth` mid-session: the new grant (a withdrawn token is refused), and the answer.

    An invite never becomes the session's grant: the session keeps the pass it has from
    that invite, or gets one for this connection alone (core/auth.reauthenticate), and the
    console lists it as holding that pass, so Remove ends this device only."""
    revoked, held = session.ctx.revocations, session.grant
    session.grant, reply = reauthenticate(session.settings, token, revoked, held)
    session.info.grant = session.grant
    return reply


def dismiss(session: PeerSession, farewell: p.Disconnected) -> None:
    """The operator ends the session (Disconnect, Remove): the client is told why, then the
    socket closes (1000, or 1008 when removed); pages do not reconnect after it."""
    removed = farewell.reason == "removed"
    session.ctx.metrics.count_error("removed" if removed else "kicked")
    session.log.info("session_dismissed", reason=farewell.reason)
    session.send(farewell)
    session.request_close(
        CloseCode.POLICY_VIOLATION if removed else CloseCode.NORMAL, farewell.message
    )


def take_name(info: SessionInfo, name: object) -> None:
    """A name the client gives (a token's name, if any, comes first): cleaned, cut to 40,
    never one the server uses for people (core/people.given_name)."""
    if isinstance(name, str):
        info.given_name = given_name(name)
