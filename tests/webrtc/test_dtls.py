"""dtls.py: one certificate and one OpenSSL context for every peer connection of the process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from aiortc import RTCPeerConnection
from aiortc.rtcdtlstransport import SRTP_PROFILES

from relay_app.internals.of_aiortc import SharedCertificate
from relay_app.webrtc.dtls import use_shared_certificate

pytestmark = pytest.mark.anyio


@pytest.fixture
def shared() -> Iterator[None]:
    use_shared_certificate()
    try:
        yield
    finally:
        use_shared_certificate(False)


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
