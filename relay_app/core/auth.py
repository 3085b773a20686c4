"""Access tokens: signed JWTs (HS256) carrying a role, an optional stream scope and an expiry.

Off by default (a trusted LAN); on when `auth.secret` is set. A client presents its token in
the WebSocket URL (`/ws?token=...`, what the web client does with its own `?token=`) or as its
first message, `{"type": "auth", "token": "..."}`. Mint one with

    python -m relay_app token --role send --ttl 1h
    python -m relay_app token --role receive --stream stream_ab12cd34-ef56 --ttl 8h
    python -m relay_app token --role send --stream english --ttl 8h   # may take over english
    python -m relay_app token --role admin --ttl 1h                   # /admin/...
    python -m relay_app token --role send --stream english --name Marie  # named on the console

Every token carries a random id (`jti`), so that an operator can withdraw it (the console's
Remove: `Revocations`) for the rest of its lifetime; tokens made before ids were added are
known by a hash of the token itself. An invite (`inv`: a link or QR code many people use) is
exchanged by each page that opens it for a personal token of its own (`personal_pass`: same
role, channel and expiry, its `par` the invite's id), so Remove withdraws one device's pass,
or, when the operator asks, the invite and every pass made from it. A connection that cannot
keep a token (a WHEP player, an Ogg player) holds a pass for itself alone instead
(`connection_pass`: no token is made of it), so Remove still ends only that connection.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

import anyio
import jwt

from . import protocol as p
from .config import Settings
from .errors import AuthError, RelayError
from .limits import check_frame
from .metrics import Metrics
from .people import MAX_NAME, clean_name

# `node`: another relay node of the cluster opening an upstream (cluster.py); minted by the
# nodes themselves from the shared auth.secret.
Role = Literal["send", "receive", "both", "metrics", "admin", "node"]
ROLES: tuple[Role, ...] = ("send", "receive", "both", "metrics", "admin", "node")
HTTP_ONLY_ROLES = ("metrics", "admin")  # tokens for HTTP endpoints, not for /ws
ALGORITHM = "HS256"
AUDIENCE = "relay_app"


@dataclass(frozen=True)
class Grant:
    """What a verified token allows."""

    role: Role
    # Only this stream: the one a receiver may play, the channel a sender may send on (and
    # take over).
    stream: str | None = None
    subject: str | None = None
    expires_at: float | None = None  # the token's `exp` (Unix time)
    # A node token's addressee: the one node it may open an upstream on (its `to` claim).
    to: str | None = None
    # Who it is for (`name`: `token --name`, an invite's name), shown on the console.
    name: str | None = None
    # What an operator withdraws: the token's `jti`, or a hash of an older token without one.
    token_id: str | None = None
    # An invite (`inv`): a link or code shared by many, exchanged for a personal pass.
    invite: bool = False
    # A personal pass's invite (`par`: the invite's id): withdrawing the invite withdraws it.
    parent: str | None = None
    # A pass for one connection alone (`connection_pass`): no token was made of it, so its
    # holder cannot keep it, and coming back with the invite gets a new one.
    connection_only: bool = False

    @property
    def revocation_ids(self) -> tuple[str, ...]:
        """The ids whose withdrawal ends this grant: its own, and its invite's."""
        return tuple(i for i in (self.token_id, self.parent) if i is not None)

    def check_unexpired(self) -> None:
        """Tokens are checked when used, not only at connect: a session outlives its token."""
        if self.expires_at is not None and time.time() >= self.expires_at:
            raise AuthError("access token expired; send auth with a new token")

    def allows_sending(self) -> bool:
        return self.role in ("send", "both")

    def allows_receiving(self, stream_id: str | None) -> bool:
        if self.role not in ("receive", "both", "node"):
            return False
        return self.stream is None or stream_id == self.stream

    def allows_metrics(self) -> bool:
        return self.role == "metrics"

    def check_sending(self, channel: str | None, takeover: bool = False) -> None:
        """A scoped token sends on its channel only; taking a channel over needs one."""
        self.check_unexpired()
        if not self.allows_sending():
            raise AuthError(f"this access token may not send (role {self.role!r})")
        if self.stream is not None and channel != self.stream:
            raise AuthError(f"this access token may only send on channel {self.stream!r}")
        if takeover and self.stream is None:
            raise AuthError(
                "takeover needs a send token scoped to the channel "
                f"(python -m relay_app token --role send --stream {channel})"
            )

    def check_receiving(
        self, stream_id: str | None, upstream: bool = False, node_id: str | None = None
    ) -> str | None:
        """The stream to receive (a scoped token names it when the client does not); only a
        node token opens an `upstream` (another node relaying this node's stream), and a node
        token opens nothing else, on no node but the one (`node_id`) it was made for."""
        self.check_unexpired()
        if upstream and self.role != "node":
            raise AuthError(
                f"only a node token opens an upstream (role {self.role!r}); receive with "
                "start_receiving without upstream"
            )
        if self.role == "node" and not upstream:
            raise AuthError("a node token only opens upstreams between cluster nodes")
        if self.role == "node" and (self.to is None or self.to != node_id):
            raise AuthError(f"this node token was made for node {self.to!r}, not this one")
        stream_id = stream_id or self.stream
        if not self.allows_receiving(stream_id):
            raise AuthError(
                f"this access token may not receive {stream_id or 'streams'} "
                f"(role {self.role!r}, stream {self.stream!r})"
            )
        return stream_id


def mint(
    secret: str,
    role: Role,
    ttl_seconds: float,
    stream: str | None = None,
    subject: str | None = None,
    to: str | None = None,
    name: str | None = None,
    invite: bool = False,
    parent: str | None = None,
    expires_at: float | None = None,
) -> str:
    """A signed token; `expires_at` (Unix time) instead of now + `ttl_seconds` when given."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "aud": AUDIENCE,
        "role": role,
        "iat": now,
        "exp": int(expires_at) if expires_at is not None else now + int(ttl_seconds),
        "jti": secrets.token_urlsafe(12),
    }
    if name is not None and (name := clean_name(name)[:MAX_NAME]):
        claims["name"] = name
    if invite:
        claims["inv"] = True
    if parent is not None:
        claims["par"] = parent
    if stream is not None:
        claims["stream"] = stream
    if subject is not None:
        claims["sub"] = subject
    if to is not None:
        claims["to"] = to
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify(secret: str, token: str) -> Grant:
    """The token's grant, or AuthError saying what is wrong with it."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            options={"require": ["exp", "role"]},
        )
    except jwt.ExpiredSignatureError:
        raise AuthError("access token expired") from None
    except jwt.InvalidSignatureError:
        raise AuthError("access token has a wrong signature") from None
    except jwt.MissingRequiredClaimError as error:
        raise AuthError(f"access token lacks the {error.claim!r} claim") from None
    except jwt.InvalidTokenError as error:
        raise AuthError(f"invalid access token: {error}") from None
    role = claims.get("role")
    if role not in ROLES:
        raise AuthError(f"access token has an unknown role {role!r}")
    stream = claims.get("stream")
    if stream is not None and not isinstance(stream, str):
        raise AuthError("access token's stream must be a string")
    to = claims.get("to")
    if to is not None and not isinstance(to, str):
        raise AuthError("access token's `to` must be a string")
    subject = claims.get("sub")
    name = claims.get("name")
    name = clean_name(name)[:MAX_NAME] or None if isinstance(name, str) else None
    jti, parent = claims.get("jti"), claims.get("par")
    if not isinstance(jti, str | None) or not isinstance(parent, str | None):
        raise AuthError("access token's `jti` and `par` must be strings")
    return Grant(
        role=role,
        stream=stream,
        subject=subject,
        expires_at=claims["exp"],
        to=to,
        name=name,
        token_id=jti or "sha256:" + hashlib.sha256(token.encode()).hexdigest()[:32],
        invite=claims.get("inv") is True,
        parent=parent,
    )


WITHDRAWN = "This invitation was withdrawn by the operator"
MAX_REVOCATIONS = 100_000  # withdrawn ids remembered at once (each only until its expiry)


class Revocations:
    """Token ids an operator withdrew (POST /admin/sessions/<id>/remove), each until the
    token it names would have expired: then it is forgotten, since the token is refused
    anyway. Sync and never awaits (the guard asks at every door).

    In cluster mode the directory (cluster/directory.py) writes this node's withdrawals to
    Redis and adds the other nodes' (`origin` "cluster"); `listeners` hear every new id,
    whatever its origin: the guard ends the connections that hold one, the directory
    writes the local ones.
    """

    def __init__(self, limit: int = MAX_REVOCATIONS) -> None:
        self.limit = limit
        self._until: dict[str, float] = {}  # id -> when its token expires (oldest first)
        self.listeners: list[Callable[[dict[str, float], str], None]] = []

    def __len__(self) -> int:
        return len(self._until)

    def revoke(self, ids: Iterable[str], until: float, origin: str = "local") -> set[str]:
        """Withdraw `ids` until `until` (Unix time); the ids that were not withdrawn yet."""
        now = time.time()
        self._forget_expired(now)
        new = {i: until for i in ids if until > now and self._until.get(i, 0.0) < until}
        if not new:
            return set()
        for token_id, expiry in new.items():
            self._until.pop(token_id, None)
            self._until[token_id] = expiry
        while len(self._until) > self.limit:  # the soonest to expire go first
            del self._until[min(self._until, key=self._until.__getitem__)]
        for listener in self.listeners:
            listener(new, origin)
        return set(new)

    def withdrawn(self, grant: Grant | None) -> bool:
        """Whether an operator withdrew this grant's token, or the invite it came from."""
        if grant is None:
            return False
        now = time.time()
        return any(self._until.get(i, 0.0) > now for i in grant.revocation_ids)

    def check(self, grant: Grant | None) -> None:
        """AuthError (403) in plain words for a withdrawn grant."""
        if self.withdrawn(grant):
            raise AuthError(f"{WITHDRAWN}.", http_status=403)

    def items(self) -> dict[str, float]:
        """Every id withdrawn now, with its expiry."""
        self._forget_expired(time.time())
        return dict(self._until)

    def _forget_expired(self, now: float) -> None:
        expired = [i for i, until in self._until.items() if until <= now]
        for token_id in expired:
            del self._until[token_id]


def personal_pass(secret: str, grant: Grant) -> tuple[str, Grant] | None:
    """For an invite's grant: a token for this device alone (same role, channel, name and
    expiry; its `par` the invite's id) and its grant. None for any other token."""
    if not grant.invite or grant.expires_at is None:
        return None
    token = mint(
        secret,
        grant.role,
        0,
        stream=grant.stream,
        subject=grant.subject,
        name=grant.name,
        parent=grant.token_id,
        expires_at=grant.expires_at,
    )
    return token, verify(secret, token)


def connection_pass(grant: Grant) -> Grant:
    """For an invite's grant: a pass for one connection alone, for doors whose clients
    cannot keep a token of their own (a WHEP player, an Ogg player) and for a /ws session
    that switches to an invite mid-session. Same role, channel, name and expiry as the
    invite; a fresh id that no token carries (so withdrawing it ends this connection only,
    and nobody can present it again), its parent the invite's id (so withdrawing the invite
    still ends it). Any other grant is returned as it is."""
    if not grant.invite:
        return grant
    own = "conn:" + secrets.token_urlsafe(12)
    return replace(grant, token_id=own, parent=grant.token_id, invite=False, connection_only=True)


_TTL = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")


MAX_TTL = 366 * 86400  # a year and a day: longer is no event's, and overflows expiries


def parse_ttl(text: str) -> float:
    """'90' or '90s', '15m', '1h', '7d' -> seconds (at most MAX_TTL)."""
    match = _TTL.match(text.strip()[:32])
    if match is None:
        raise ValueError(f"bad duration {text[:32]!r}: use e.g. 90s, 15m, 1h, 7d")
    value, unit = float(match[1]), match[2] or "s"
    seconds = value * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    if not seconds <= MAX_TTL:
        raise ValueError(f"duration {text[:32]!r} is longer than a year (366d at most)")
    return seconds


class FirstMessage(Protocol):
    """The part of a WebSocket that authentication reads."""

    async def receive(self) -> str | bytes | None: ...


async def authenticate(
    ws: FirstMessage, settings: Settings, log: Any, revoked: Revocations | None = None
) -> Grant:
    """The grant of a WebSocket's first message, `{"type": "auth", "token": ...}` (the guard
    has found no token in its URL or headers and auth.secret is set); AuthError for a token
    in `revoked`."""
    hint = 'send {"type": "auth", "token": "..."} first, or add ?token=... to the URL'
    token = None
    with anyio.move_on_after(settings.auth.timeout):
        data = await ws.receive()
        try:
            # Size first: nothing unchecked is parsed, even before authentication.
            text = check_frame(data, settings.server.max_message_bytes)
            message = p.parse_client_message(text)
        except RelayError:
            message = None
        if not isinstance(message, p.Auth):
            raise AuthError(f"authentication required: {hint}")
        token = message.token
    if token is None:
        raise AuthError(f"authentication timed out: {hint}")
    grant = session_grant(settings, token, revoked)
    log.info("client_authenticated", role=grant.role, stream=grant.stream, subject=grant.subject)
    return grant


def session_grant(settings: Settings, token: str, revoked: Revocations | None = None) -> Grant:
    """A token's grant for a /ws session: a `metrics` token only reads /metrics, a
    withdrawn one nothing."""
    assert settings.auth.secret is not None
    grant = verify(settings.auth.secret.get_secret_value(), token)
    if revoked is not None:
        revoked.check(grant)
    if grant.role in HTTP_ONLY_ROLES:
        article = "an" if grant.role[0] in "aeiou" else "a"
        raise AuthError(
            f"{article} {grant.role} token cannot open /ws; use a send, receive or both token"
        )
    return grant


EXPIRED = "access token expired"


async def watch_expiry(
    door: str,
    grant: Callable[[], Grant | None],
    end: Callable[[AuthError], None],
    metrics: Metrics,
    log: Callable[[], Any],
    hint: str = "connect again with a new token",
) -> None:
    """The one expiry rule of every long-lived door (/ws, WHIP/WHEP resources, Ogg
    responses): a connection lives no longer than the token it came in with.

    Run in the connection's own task group. At the `exp` of `grant()` (the grant it holds
    now: a /ws session's `auth` message replaces it, and the new one is watched instead),
    the expiry is counted (`errors.auth`), logged (`client_error`, kind `auth`, with the
    door) and `end` is called with the AuthError: it ends the connection without waiting.
    Returns at once without a grant (auth off) or for a token without `exp`."""
    while (current := grant()) is not None and (expires_at := current.expires_at) is not None:
        await anyio.sleep(max(0.0, expires_at - time.time()))
        if grant() is current:
            error = AuthError(f"{EXPIRED}; {hint}")
            metrics.count_error(error.kind)
            log().info("client_error", kind=error.kind, error=error.message, door=door)
            end(error)
            return


def reauthenticate(
    settings: Settings,
    token: str,
    revoked: Revocations | None = None,
    held: Grant | None = None,
) -> tuple[Grant | None, p.ServerMessage]:
    """`auth` mid-session: the refreshed grant (a new token before the old one expires).

    A session never holds an invite itself, or the operator's Remove could only withdraw it
    for everyone who scanned the same code. An invite sent mid-session therefore gives the
    session a pass: the one it `held` when that was made from this very invite (nothing
    changes: same pass, same number on the console, same expiry, as a page that sends its
    invite again expects), else a pass for this connection alone (`connection_pass`). The
    switch is not refused: a client re-sending the token it connected with must not be
    cut off, and it gains nothing by it."""
    if settings.auth.secret is None:
        return None, p.Authenticated(role="both")  # open server: anything goes
    grant = session_grant(settings, token, revoked)
    if grant.invite:
        same = held is not None and held.parent is not None and held.parent == grant.token_id
        grant = held if same and held is not None else connection_pass(grant)
    return grant, p.Authenticated(role=grant.role, stream=grant.stream)
