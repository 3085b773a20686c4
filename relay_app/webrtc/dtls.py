"""One DTLS certificate and one OpenSSL context per process, as Janus does.

aiortc makes a fresh ECDSA key, a self-signed X.509 certificate and, per DTLS transport, a new
`SSL_CTX` for every RTCPeerConnection: about 30 KB of native memory and a key generation per
join, allocated and freed on every connect and leave. Under churn that is what leaves glibc's
heap fragmented (bench/soak.py: free-but-held heap grew with every session). Nothing about a
peer needs its own: the certificate is only checked against the fingerprint in our own SDP, so
one certificate (renewed a day before it expires) and one context per SRTP profile list serve
every peer, and per-connection state stays in each `SSL.Connection`.

Where aiortc looks its certificate up, and how it makes a context, are its own business: the
room of internals (internals/of_aiortc.py: `SharedCertificate`, `replace_certificate_class`)
does the replacing; this module says when a certificate is renewed.
"""

from __future__ import annotations

import datetime
from typing import Any

from aiortc.rtcdtlstransport import RTCCertificate

from ..internals.of_aiortc import SharedCertificate, replace_certificate_class

RENEW_BEFORE = datetime.timedelta(days=1)


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
    replace_certificate_class(target)
