"""ice.py hooks aioice so that media uses only the configured addresses; these fail loudly if
an aioice upgrade moves the hook."""

from __future__ import annotations

import re

import aioice.ice
import pytest
from aiortc import RTCPeerConnection

from relay_app.ice import use_host_addresses

pytestmark = pytest.mark.anyio


def test_ice_addresses_hook_replaces_aioice_host_addresses() -> None:
    try:
        use_host_addresses(["127.0.0.1", "::1"])
        assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False) == ["127.0.0.1"]
        assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True) == ["127.0.0.1", "::1"]
    finally:
        use_host_addresses(["127.0.0.1"])  # what the rest of the suite uses


async def test_a_peer_connection_gathers_candidates_only_on_the_configured_address() -> None:
    """aioice skips 127.0.0.1 by itself: a candidate there proves the hook is in force, and no
    other address proves nothing else is gathered."""
    pc = RTCPeerConnection()
    try:
        pc.addTransceiver("audio", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        candidates = re.findall(
            r"a=candidate:\S+ \d+ udp \d+ (\S+) \d+ typ (\w+)", pc.localDescription.sdp
        )
    finally:
        await pc.close()
    assert candidates, pc.localDescription.sdp
    assert {address for address, _ in candidates} == {"127.0.0.1"}
    assert {kind for _, kind in candidates} == {"host"}
