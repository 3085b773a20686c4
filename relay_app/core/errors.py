"""The RelayError family: what the client is told, and whether the session survives.

Raise these anywhere; only `PeerSession.refuse` turns them into `error` frames and close codes
(one mapping, like Starlette's exception handlers): counted, logged once, delivered or closed.
Any other exception is a bug: it is logged with its traceback and the session is closed with
1011.
"""

from __future__ import annotations

from enum import IntEnum
from http import HTTPStatus
from typing import Any


def http_error_body(code: int, message: str, name: str | None = None) -> dict[str, Any]:
    """The JSON body of every HTTP error response: `{"error", "status", "message"}`."""
    return {"error": name or HTTPStatus(code).phrase, "status": code, "message": message}


class CloseCode(IntEnum):
    """WebSocket close codes this server uses (RFC 6455 section 7.4.1)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    POLICY_VIOLATION = 1008
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013


class RelayError(Exception):
    """A client-visible failure. `close_code` None means the session stays usable."""

    kind = "relay_error"
    close_code: CloseCode | None = None
    # The close frame's reason when close_code is set; None: the message (cut to fit).
    close_reason: str | None = None
    # The HTTP status where the same failure answers an HTTP request (WHIP/WHEP).
    http_status = 400

    def __init__(
        self, message: str, http_status: int | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if http_status is not None:
            self.http_status = http_status
        # Headers the HTTP answer carries besides the guard's own (`Allow` with a 405).
        self.http_headers = headers or {}


class ProtocolError(RelayError):
    """The client sent something that is not a valid message."""

    kind = "protocol"


class MessageTooBig(RelayError):
    kind = "message_too_big"


class SessionStateError(RelayError):
    """A valid message that does not fit this session's state (e.g. a second start_sending)."""

    kind = "session_state"


class NoStreamError(RelayError):
    kind = "no_stream"
    http_status = 404


class ChannelError(RelayError):
    """A channel that may not be sent to now: busy (another sender), or not configured."""

    kind = "channel"
    http_status = 409


class ChannelBusy(ChannelError):
    """Another sender is live on the channel. Each door says how its clients take it over."""

    def with_hint(self, hint: str) -> ChannelBusy:
        return ChannelBusy(f"{self.message} ({hint})", self.http_status)


class NegotiationError(RelayError):
    """The SDP could not be used to set up media."""

    kind = "negotiation"


class MediaUnavailable(RelayError):
    """No media can be set up right now (e.g. every port of webrtc.udp_port_range is taken)."""

    kind = "media_unavailable"
    http_status = 503


class MediaFailed(RelayError):
    """An established media connection failed (ICE, DTLS); the session stays, media ends."""

    kind = "media"


class IdleTimeout(RelayError):
    """Neither the WebSocket nor the media said anything for webrtc.connection_timeout."""

    kind = "idle_timeout"
    close_code = CloseCode.NORMAL
    close_reason = "idle timeout"


class NotReading(RelayError):
    """The client stopped reading its messages: the outbox is full, so the session closes."""

    kind = "not_reading"
    close_code = CloseCode.POLICY_VIOLATION


class AuthError(RelayError):
    """No, or a bad, access token, or a token that does not allow this."""

    kind = "auth"
    http_status = 403
    close_code = CloseCode.POLICY_VIOLATION


class LimitError(RelayError):
    """A configured limit was reached; the message names the config key."""

    kind = "limit"
    http_status = 503


class FloodError(RelayError):
    kind = "flood"
    close_code = CloseCode.POLICY_VIOLATION


class CapacityError(RelayError):
    kind = "capacity"
    http_status = 503
    close_code = CloseCode.TRY_AGAIN_LATER


class Kicked(RelayError):
    """An operator closed the session (POST /admin/sessions/<id>/kick)."""

    kind = "kicked"
    close_code = CloseCode.POLICY_VIOLATION

    def __init__(self, reason: str = "") -> None:
        super().__init__("closed by an operator" + (f": {reason}" if reason else ""))


def sole_error(error: BaseException) -> BaseException:
    """`error` with task-group exception groups of one exception unwrapped."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error
