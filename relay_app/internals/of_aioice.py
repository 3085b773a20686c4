"""aioice 0.13.0: the ICE connection's pairs and sockets, and its host-candidate gathering.

aioice's `Connection` is public, but what a relay needs of it is not: which pair ICE
nominated (the fast path sends on its socket), which sockets the connection owns and which
addresses its pairs name (batched reads sort a flooded socket's datagrams by them), and its
consent task (which a close that races a connect leaves running). Nor does it take a list of
local addresses or a port range: gathering is replaced process-wide, which matches the
settings (one server process, one list, one range).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aioice
import aioice.ice

HostAddresses = Callable[[bool, bool], list[str]]
Bind = Callable[[aioice.ice.Connection, str], Awaitable[aioice.ice.StunProtocol | None]]
"""Opens the host socket of one local address for a connection (a StunProtocol on it), or
gives the connection its share of a socket already open (webrtc.udp_port); None: no host
candidate on that address."""

_aioice_host_addresses: HostAddresses = aioice.ice.get_host_addresses
_aioice_gathering = aioice.ice.Connection.get_component_candidates


def nominated_pairs(connection: aioice.ice.Connection) -> dict[int, aioice.ice.CandidatePair]:
    """ICE's nominated pair per component: aioice's own dict, so it shows a later
    nomination too (the fast path compares the pair it resolved with it per packet)."""
    return connection._nominated


def socket_protocols(connection: aioice.ice.Connection) -> list[aioice.ice.StunProtocol]:
    """The protocols (one per local socket: host, or a TURN client's) the connection owns."""
    return list(connection._protocols)


def paired_addresses(connection: aioice.ice.Connection) -> frozenset[tuple[str, int]]:
    """The remote addresses the connection's check list pairs with: the peer's, as far as
    ICE knows it."""
    return frozenset(pair.remote_addr for pair in connection._check_list)


def cancel_consent_check(connection: aioice.ice.Connection) -> None:
    """Cancel the consent-freshness task a `connect()` that finished after `close()` started
    (webrtc/peer.py: `_stop_late_starters`). Read with a default: a connection that never
    connected has none (tests/internals/test_internals.py checks that aioice still names it)."""
    task = getattr(connection, "_query_consent_task", None)
    if task is not None and not task.done():
        task.cancel()


def set_consent_timeout(seconds: float) -> None:
    """Consent freshness (RFC 7675) gives up after `seconds` without an answer: aioice sends a
    check every CONSENT_INTERVAL (randomised 0.8-1.2x) and closes after CONSENT_FAILURES
    unanswered in a row, both module constants it reads at each check (process-wide, as the
    settings are)."""
    aioice.ice.CONSENT_INTERVAL = seconds / aioice.ice.CONSENT_FAILURES  # type: ignore[assignment]


def consent_timeout() -> float:
    """What set_consent_timeout set (aioice's own: 6 checks 5 s apart, 30 s)."""
    return float(aioice.ice.CONSENT_INTERVAL * aioice.ice.CONSENT_FAILURES)


def replace_host_addresses(addresses: HostAddresses | None) -> None:
    """Have aioice gather host candidates on the addresses `addresses(use_ipv4, use_ipv6)`
    names (it asks `aioice.ice.get_host_addresses` at each gathering, and always skips
    127.0.0.1); None restores aioice's own."""
    aioice.ice.get_host_addresses = addresses or _aioice_host_addresses  # type: ignore[assignment]


def replace_host_gathering(bind: Bind | None) -> None:
    """Have aioice open each host candidate's socket with `bind` (a port of a range, or the
    one shared port) instead of on any port; None restores aioice's own gathering. STUN and
    TURN candidates are not gathered by the replacement (config refuses the combination)."""
    if bind is None:
        aioice.ice.Connection.get_component_candidates = _aioice_gathering  # type: ignore[method-assign]
        return

    async def get_component_candidates(
        self: aioice.ice.Connection, component: int, addresses: list[str], timeout: int = 5
    ) -> list[aioice.Candidate]:
        candidates = []
        for address in addresses:
            protocol = await bind(self, address)
            if protocol is None:
                continue
            host, port = protocol.transport.get_extra_info("sockname")[:2]
            protocol.local_candidate = aioice.Candidate(
                foundation=aioice.ice.candidate_foundation("host", "udp", host),
                component=component,
                transport="udp",
                priority=aioice.ice.candidate_priority(component, "host"),
                host=host,
                port=port,
                type="host",
            )
            self._protocols.append(protocol)
            candidates.append(protocol.local_candidate)
        return candidates

    aioice.ice.Connection.get_component_candidates = get_component_candidates  # type: ignore[method-assign]
