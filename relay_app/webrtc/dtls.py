"""One DTLS certificate and one OpenSSL context per process, as Janus does.

aiortc makes a fresh ECDSA key, a self-signed X.509 certificate and, per DTLS transport, a new
`SSL_CTX` for every RTCPeerConnection: about 30 KB of native memory and a key generation per
join, allocated and freed on every connect and leave. Under churn that is what leaves glibc's
heap fragmented (bench/soak.py: free-but-held heap grew with every session). Nothing about a
peer needs its own: the certificate is only checked against the fingerprint in our own SDP, so
one certificate (renewed a day before it expires) and one context per SRTP profile list serve
every peer, and per-connection state stays in each `SSL.Connection`.

aiortc reads `RTCCertificate` from its `rtcpeerconnection` module when it builds a peer
connection; this module is the one place that replaces it. Written against aiortc 1.16.0
(pinned); tests/webrtc/test_dtls.py fails loudly if an upgrade moves the hook.
"""

from __future__ import annotations

import datetime
from typing import Any

import aiortc.rtcpeerconnection
from aiortc.rtcdtlstransport import RTCCertificate, SRTPProtectionProfile
from OpenSSL import SSL

RENEW_BEFORE = datetime.timedelta(days=1)


class SharedCertificate(RTCCertificate):
    """An RTCCertificate whose OpenSSL contexts are made once per SRTP profile list."""

    def __init__(self, key: Any, cert: Any) -> None:
        super().__init__(key, cert)
        self._contexts: dict[tuple[bytes, ...], SSL.Context] = {}

    def _create_ssl_context(self, srtp_profiles: list[SRTPProtectionProfile]) -> SSL.Context:
        profiles = tuple(profile.openssl_profile for profile in srtp_profiles)
        context = self._contexts.get(profiles)
        if context is None:
            context = self._contexts[profiles] = super()._create_ssl_context(srtp_profiles)
        return context


class _ProcessCertificate:
    """Stands in for `RTCCertificate` where aiortc's RTCPeerConnection looks it up."""

    current: SharedCertificate | None = None

    @classmethod
    def generateCertificate(cls) -> SharedCertificate:
        now = datetime.datetime.now(datetime.UTC)
        if cls.current is None or cls.current.expires - RENEW_BEFORE <= now:
            cls.current = SharedCertificate.generateCertificate()
        return cls.current


def use_shared_certificate(enabled: bool = True) -> None:
    """Give every RTCPeerConnection made from now on the process's certificate."""
    target: Any = _ProcessCertificate if enabled else RTCCertificate
    setattr(aiortc.rtcpeerconnection, "RTCCertificate", target)  # noqa: B010 (mypy: a type)
