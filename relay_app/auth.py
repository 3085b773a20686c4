"""Access tokens: signed JWTs (HS256) carrying a role, an optional stream scope and an expiry.

Off by default (a trusted LAN); on when `auth.secret` is set. A client presents its token in
the WebSocket URL (`/ws?token=...`, what the web client does with its own `?token=`) or as its
first message, `{"type": "auth", "token": "..."}`. Mint one with

    python -m relay_app token --role send --ttl 1h
    python -m relay_app token --role receive --stream stream_ab12cd34-ef56 --ttl 8h
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Literal

import jwt

from .errors import AuthError

Role = Literal["send", "receive", "both", "metrics"]
ROLES: tuple[Role, ...] = ("send", "receive", "both", "metrics")
ALGORITHM = "HS256"
AUDIENCE = "relay_app"


@dataclass(frozen=True)
class Grant:
    """What a verified token allows."""

    role: Role
    stream: str | None = None  # receivers: only this stream
    subject: str | None = None

    def allows_sending(self) -> bool:
        return self.role in ("send", "both")

    def allows_receiving(self, stream_id: str | None) -> bool:
        if self.role not in ("receive", "both"):
            return False
        return self.stream is None or stream_id == self.stream

    def allows_metrics(self) -> bool:
        return self.role == "metrics"

    def check_sending(self) -> None:
        if not self.allows_sending():
            raise AuthError(f"this access token may not send (role {self.role!r})")

    def check_receiving(self, stream_id: str | None) -> str | None:
        """The stream to receive (a scoped token names it when the client does not)."""
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
) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "aud": AUDIENCE,
        "role": role,
        "iat": now,
        "exp": now + int(ttl_seconds),
    }
    if stream is not None:
        claims["stream"] = stream
    if subject is not None:
        claims["sub"] = subject
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
    return Grant(role=role, stream=stream, subject=claims.get("sub"))


_TTL = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")


def parse_ttl(text: str) -> float:
    """'90' or '90s', '15m', '1h', '7d' -> seconds."""
    match = _TTL.match(text.strip())
    if match is None:
        raise ValueError(f"bad duration {text!r}: use e.g. 90s, 15m, 1h, 7d")
    value, unit = float(match[1]), match[2] or "s"
    return value * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
