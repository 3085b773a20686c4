"""The configured limits a session enforces: pure checks that raise a RelayError naming the key.

Nothing here awaits or touches a socket, so the session decides what a refusal does (an
`error` frame, or a close for a flood) in its one error mapping.
"""

from __future__ import annotations

import anyio

from .errors import FloodError, LimitError, MessageTooBig, ProtocolError


class TokenBucket:
    """At most `rate` messages a second on average, bursts of 2x; a flood closes the session."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = 2 * rate
        self.tokens = self.capacity
        self.updated = anyio.current_time()
        self.refused = 0

    def take(self) -> None:
        now = anyio.current_time()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            self.refused = 0
            return
        self.refused += 1
        message = f"too many messages: limit {self.rate:g}/s (server.max_messages_per_second)"
        if self.refused > self.capacity:
            raise FloodError(message + "; closing")
        raise LimitError(message + "; this message was ignored")


def check_frame(data: str | bytes | None, limit: int) -> str:
    """The text of a WebSocket frame the protocol can parse, or why it cannot be used.

    Quart hands over an empty binary frame as None (`bytes or text`), found by
    tests/test_fuzz.py: anything not text is a binary frame.
    """
    if not isinstance(data, str):
        raise ProtocolError("binary frames are not supported; send JSON text frames")
    if len(data) > limit or len(data.encode()) > limit:
        raise MessageTooBig(
            f"message too large: {len(data.encode())} bytes "
            f"(limit {limit}, server.max_message_bytes)"
        )
    return data


def check_sdp_size(sdp: str, limit: int) -> None:
    if len(sdp) > limit:
        raise LimitError(f"SDP too large: {len(sdp)} bytes (limit {limit}, webrtc.max_sdp_bytes)")


def check_stream_limit(senders: int, limit: int) -> None:
    if senders >= limit:
        raise LimitError(
            f"the server already has {senders} senders (limit {limit}, streams.max_streams)"
        )


def check_receiver_limit(stream_id: str, receivers: int, limit: int) -> None:
    if receivers >= limit:
        raise LimitError(
            f"{stream_id} already has {receivers} receivers (limit {limit}, streams.max_receivers)"
        )
