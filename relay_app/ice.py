"""Which local addresses WebRTC gathers host candidates on (`webrtc.ice_addresses`).

aioice asks `aioice.ice.get_host_addresses` for every interface address and always skips
127.0.0.1, and neither aioice nor aiortc takes a list of addresses. This module is the one place
that hooks it: the hook is process-wide, which matches the setting (one server process, one
list). With `["127.0.0.1"]` every candidate, and so every media packet, stays on loopback.
Written against aioice 0.13 (pinned through aiortc==1.16.0); tests/test_ice.py fails loudly if
an upgrade renames the hook.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence

import aioice.ice

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
