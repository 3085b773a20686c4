"""ice.py hooks aioice so that media uses only the configured addresses; these fail loudly if
an aioice upgrade moves the hook."""

from __future__ import annotations

import re

import aioice.ice
import pytest
from aiortc import RTCPeerConnection

from relay_app.webrtc.ice import use_host_addresses

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


OFFER = "\r\n".join(
    [
        "v=0",
        "c=IN IP4 172.17.0.2",
        "a=candidate:1 1 udp 2130706431 172.17.0.2 40000 typ host",
        "a=candidate:2 1 udp 2130706431 fd00::2 40001 typ host",
        "a=candidate:3 1 udp 1694498815 203.0.113.7 40000 typ srflx raddr 172.17.0.2 rport 40000",
        "a=end-of-candidates",
        "",
    ]
)


def test_announced_address_replaces_host_candidates_of_its_family_only() -> None:
    from relay_app.webrtc.ice import announce

    sdp = announce(OFFER, "192.168.1.50")
    assert "c=IN IP4 192.168.1.50" in sdp
    assert "192.168.1.50 40000 typ host" in sdp and "fd00::2 40001 typ host" in sdp
    assert "203.0.113.7 40000 typ srflx" in sdp, "only host candidates are ours to rename"
    assert announce(OFFER, None) == OFFER


def test_hidden_addresses_look_like_chromiums_sdp() -> None:
    from relay_app.webrtc.ice import hide_addresses

    sdp = hide_addresses(OFFER)
    assert "172.17.0.2 40000" not in sdp and ".local 40000 typ host" in sdp
    assert "c=IN IP4 0.0.0.0" in sdp and "a=end-of-candidates" not in sdp
