"""dtls.py: one certificate and one OpenSSL context for every peer connection of the process."""

from __future__ import annotations

from collections.abc import Iterator

import aiortc.rtcpeerconnection
import pytest
from aiortc import RTCPeerConnection
from aiortc.rtcdtlstransport import SRTP_PROFILES, RTCCertificate

from relay_app.webrtc.dtls import SharedCertificate, use_shared_certificate

pytestmark = pytest.mark.anyio


@pytest.fixture
def shared() -> Iterator[None]:
    use_shared_certificate()
    try:
        yield
    finally:
        use_shared_certificate(False)


def test_aiortc_still_looks_up_its_certificate_where_we_replace_it() -> None:
    """Fails loudly on an aiortc upgrade that moves the hook (aiortc 1.16.0 is pinned)."""
    assert aiortc.rtcpeerconnection.RTCCertificate is RTCCertificate
    assert hasattr(RTCCertificate, "_create_ssl_context")


async def test_every_peer_connection_gets_the_one_certificate(shared: None) -> None:
    one, two = RTCPeerConnection(), RTCPeerConnection()
    try:
        first = one._RTCPeerConnection__certificates[0]  # type: ignore[attr-defined]
        second = two._RTCPeerConnection__certificates[0]  # type: ignore[attr-defined]
        assert isinstance(first, SharedCertificate) and first is second
        profiles = list(SRTP_PROFILES)
        assert first._create_ssl_context(profiles) is first._create_ssl_context(profiles)
    finally:
        await one.close()
        await two.close()
