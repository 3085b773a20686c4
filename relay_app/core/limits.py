"""The configured limits a session enforces: pure checks that raise a RelayError naming the key.

Nothing here awaits or touches a socket, so the session decides what a refusal does (an
`error` frame, or a close for a flood) in its one error mapping.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import anyio

from .errors import FloodError, LimitError, MessageTooBig, ProtocolError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
FLOOD_WINDOW = 10.0  # seconds over which refusals are counted


class _Bucket:
    """Tokens refilled at `rate` a second up to `capacity`: the arithmetic the three
    limiters below share. The clock is read on first use, so one can be made where no event
    loop runs yet (create_app)."""

    def __init__(self, rate: float, capacity: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.updated: float | None = None

    def _refill(self) -> float:
        """Add what has dripped in since the last call; return the seconds elapsed."""
        now = anyio.current_time()
        elapsed = 0.0 if self.updated is None else now - self.updated
        self.updated = now
        self.tokens = min(self.capacity, self.tokens + elapsed * self.rate)
        return elapsed


class TokenBucket(_Bucket):
    """At most `rate` messages a second on average, bursts of 2x; a flood closes the session.

    Every frame takes a token, whatever it holds. Refusals draw on a second budget of 2x rate
    that refills over FLOOD_WINDOW: an occasional burst over the limit costs a few refused
    messages, a sustained rate above it (even one accepted message in between, which used to
    reset a count of consecutive refusals) empties the budget and closes the session.
    """

    def __init__(self, rate: float) -> None:
        super().__init__(rate, 2 * rate)
        self.refusals_left = self.capacity

    def take(self) -> None:
        elapsed = self._refill()
        refill = elapsed * self.capacity / FLOOD_WINDOW
        self.refusals_left = min(self.capacity, self.refusals_left + refill)
        if self.tokens >= 1:
            self.tokens -= 1
            return
        self.refusals_left -= 1
        message = f"too many messages: limit {self.rate:g}/s (server.max_messages_per_second)"
        if self.refusals_left < 0:
            raise FloodError(message + "; closing")
        raise LimitError(message + "; this message was ignored")


class Pace(_Bucket):
    """Lets callers through at `rate` a second on average (bursts of `rate`), making the
    rest wait their turn: shared, it bounds the work many tasks can ask for together."""

    def __init__(self, rate: float) -> None:
        super().__init__(rate, rate)

    async def wait(self) -> None:
        self._refill()
        self.tokens -= 1  # taken now; a debt is paid off by sleeping
        if self.tokens < 0:
            await anyio.sleep(-self.tokens / self.rate)


class Allowance(_Bucket):
    """At most `rate` units (bytes) a second on average, bursts of 2x: `take` says whether
    `amount` more fits."""

    def __init__(self, rate: float) -> None:
        super().__init__(rate, 2 * rate)

    def take(self, amount: float) -> bool:
        self._refill()
        if self.tokens < amount:
            return False
        self.tokens -= amount
        return True


class Throttle(_Bucket):
    """Lets through about `rate` events a second (bursts of 2x) and counts the rest."""

    def __init__(self, rate: float) -> None:
        super().__init__(rate, 2 * rate)
        self.suppressed = 0

    def allow(self) -> int | None:
        """None: leave this one out. Otherwise how many were left out since the last one."""
        self._refill()
        if self.tokens < 1:
            self.suppressed += 1
            return None
        self.tokens -= 1
        suppressed, self.suppressed = self.suppressed, 0
        return suppressed


def check_frame(data: str | bytes | None, limit: int) -> str:
    """The text of a WebSocket frame the protocol can parse, or why it cannot be used.

    Quart hands over an empty binary frame as None (`bytes or text`), found by
    tests/endpoints/test_fuzz.py: anything not text is a binary frame.
    """
    if not isinstance(data, str):
        raise ProtocolError("binary frames are not supported; send JSON text frames")
    if len(data) > limit or len(data.encode()) > limit:
        raise MessageTooBig(
            f"message too large: {len(data.encode())} bytes "
            f"(limit {limit}, server.max_message_bytes)"
        )
    return data


def filter_candidates(sdp: str, limit: int, local: Sequence[str] | None) -> tuple[str, int]:
    """The SDP with at most `limit` remote ICE candidates the server could use; and how many
    were dropped.

    A candidate is dropped when it is not UDP (aiortc has no ICE-TCP), when its address is
    unspecified, multicast or broadcast, or, when `webrtc.ice_addresses` pins the server to
    known addresses (`local`), of an address family or scope (loopback) none of them has.
    mDNS names (`*.local`, what browsers send) are kept. The rest beyond `limit` are
    dropped, so one offer cannot make the server probe hundreds of addresses.
    """
    local_ips = [ipaddress.ip_address(a) for a in local] if local else None
    kept: list[str] = []
    candidates = dropped = 0
    for line in sdp.splitlines():
        if not line.startswith("a=candidate:"):
            kept.append(line)
        elif candidates < limit and _usable_candidate(line, local_ips):
            kept.append(line)
            candidates += 1
        else:
            dropped += 1
    if not dropped:
        return sdp, 0
    return "\r\n".join(kept) + "\r\n", dropped


def _usable_candidate(line: str, local: list[IPAddress] | None) -> bool:
    fields = line.split()
    if len(fields) < 8 or fields[2].lower() != "udp":
        return False
    host = fields[4]
    if host.lower().endswith(".local"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if address.is_unspecified or address.is_multicast or str(address) == "255.255.255.255":
        return False
    if local is None:
        return True
    return any(a.version == address.version and a.is_loopback == address.is_loopback for a in local)


def check_sdp_size(sdp: str, limit: int) -> None:
    if len(sdp) > limit:
        raise LimitError(
            f"SDP too large: {len(sdp)} bytes (limit {limit}, webrtc.max_sdp_bytes)",
            http_status=413,
        )


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
