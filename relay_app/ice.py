"""Which local addresses WebRTC gathers host candidates on (`webrtc.ice_addresses`).

aioice asks `aioice.ice.get_host_addresses` for every interface address and always skips
127.0.0.1, and neither aioice nor aiortc takes a list of addresses. This module is the one place
that hooks it: the hook is process-wide, which matches the setting (one server process, one
list). With `["127.0.0.1"]` every candidate, and so every media packet, stays on loopback.
Written against aioice 0.13 (pinned through aiortc==1.16.0); tests/test_ice.py fails loudly if
an upgrade renames the hook.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import random
from collections.abc import Callable, Sequence

import aioice
import aioice.ice

from .config import WebRTCSettings

HostAddresses = Callable[[bool, bool], list[str]]
_original: HostAddresses = aioice.ice.get_host_addresses


def use_host_addresses(addresses: Sequence[str] | None) -> None:
    """Gather on exactly these addresses; None restores aioice's own choice."""
    if addresses is None:
        aioice.ice.get_host_addresses = _original  # type: ignore[assignment]
        return
    chosen = [ipaddress.ip_address(a) for a in addresses]

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [
            str(a) for a in chosen if (a.version == 4 and use_ipv4) or (a.version == 6 and use_ipv6)
        ]

    aioice.ice.get_host_addresses = get_host_addresses


def configure_ice(settings: WebRTCSettings) -> None:
    """Apply webrtc.ice_addresses and webrtc.udp_port_range to this process."""
    use_host_addresses(settings.ice_addresses)
    use_port_range(settings.udp_port_range)


class NoFreeMediaPort(OSError):
    """Every UDP port of webrtc.udp_port_range is taken by other peer connections."""


_original_gather = aioice.ice.Connection.get_component_candidates


def use_port_range(port_range: tuple[int, int] | None) -> None:
    """Bind host candidates only to UDP ports in [low, high]; None restores aioice's choice.

    aioice binds each host candidate to port 0 (any port), so firewalls and `docker run -p`
    cannot be told which ports media uses. This replaces its host-candidate gathering with
    one that tries the ports of the range (from a random start, so that concurrent peers do
    not all probe the same port first). Each peer connection needs one port per address.
    STUN/TURN candidates are not gathered with a range (config refuses the combination).
    """
    if port_range is None:
        aioice.ice.Connection.get_component_candidates = _original_gather  # type: ignore[method-assign]
        return
    low, high = port_range

    async def get_component_candidates(
        self: aioice.ice.Connection, component: int, addresses: list[str], timeout: int = 5
    ) -> list[aioice.Candidate]:
        candidates = []
        for address in addresses:
            protocol = await _bind_in_range(self, address, low, high)
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


async def _bind_in_range(
    connection: aioice.ice.Connection, address: str, low: int, high: int
) -> aioice.ice.StunProtocol:
    loop = asyncio.get_running_loop()
    size = high - low + 1
    start = random.randrange(size)
    for offset in range(size):
        port = low + (start + offset) % size
        try:
            _, protocol = await loop.create_datagram_endpoint(
                lambda: aioice.ice.StunProtocol(connection), local_addr=(address, port)
            )
        except OSError as error:
            if error.errno in (errno.EADDRINUSE, errno.EACCES):
                continue
            raise
        return protocol
    raise NoFreeMediaPort(
        errno.EADDRINUSE,
        f"no free UDP port for media on {address} in {low}-{high} (webrtc.udp_port_range): "
        f"all {size} are in use",
    )
