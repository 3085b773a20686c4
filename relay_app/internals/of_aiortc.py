"""aiortc 1.16.0: received RTP as it arrives, senders' reports, DTLS's SRTP and ICE, and the
certificate a peer connection is made with.

aiortc is written for endpoints, not for a relay: it has no public hook for a received RTP
packet, no way to send RTP but through a track it encodes from, and one certificate and
OpenSSL context per peer connection. What the relay does instead (webrtc/rtp_tap.py,
webrtc/fast_path.py, webrtc/dtls.py) needs the names below; each function says what for.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiortc.rtcpeerconnection
import anyio
import pylibsrtp
from aiortc import RTCPeerConnection, RTCRtpCodecParameters, RTCRtpReceiver, RTCRtpSender
from aiortc.rtcdtlstransport import RTCCertificate, RTCDtlsTransport, SRTPProtectionProfile
from aiortc.rtcrtpreceiver import StreamStatistics
from aiortc.rtp import HeaderExtensionsMap, RtpPacket
from OpenSSL import SSL

RtpHandler = Callable[[RtpPacket, int], Awaitable[None]]
"""What a receiver does with each decrypted RTP packet: (packet, arrival_time_ms)."""

_SENDER = "_RTCRtpSender__"  # RTCRtpSender's name-mangled private attributes
_REMOTE_STREAMS = "_RTCRtpReceiver__remote_streams"  # ssrc -> StreamStatistics (RTCP RR)


# Receivers --------------------------------------------------------------------------------
def wrap_rtp_handler(receiver: RTCRtpReceiver, wrap: Callable[[RtpHandler], RtpHandler]) -> None:
    """Replace the receiver *instance*'s `_handle_rtp_packet` with `wrap(original)`.

    `RTCDtlsTransport` awaits it, looked up on the receiver, for every decrypted RTP packet
    routed to that receiver: the only place a packet can be had as it arrives, before the
    jitter buffer (which holds ~4 packets) and the decoder thread."""
    original: RtpHandler = receiver._handle_rtp_packet
    receiver._handle_rtp_packet = wrap(original)  # type: ignore[method-assign,assignment]


def receiver_loss_statistics(receiver: RTCRtpReceiver) -> dict[int, StreamStatistics]:
    """The receiver's per-source statistics, which its RTCP receiver reports send: a tap
    that skips aiortc's handling keeps them itself (a browser turns its Opus FEC on only
    when those reports show loss)."""
    statistics: dict[int, StreamStatistics] = getattr(receiver, _REMOTE_STREAMS)
    return statistics


def route_payload_type(pc: RTCPeerConnection, codec: RTCRtpCodecParameters) -> None:
    """Let packets under `codec`'s payload type reach the audio receivers: aiortc routes a
    packet only under a payload type among the transceiver's negotiated codecs
    (`_codecs`), and RED is not one it knows."""
    for transceiver in pc.getTransceivers():
        if transceiver.kind == "audio":
            transceiver._codecs.append(codec)


# Senders ----------------------------------------------------------------------------------
def sender_ssrc(sender: RTCRtpSender) -> int:
    """The SSRC the sender's packets and reports carry (aiortc draws it, says it nowhere)."""
    ssrc: int = sender._ssrc
    return ssrc


def sender_cname(sender: RTCRtpSender) -> str | None:
    """The CNAME its reports carry (from the negotiated parameters, once sending)."""
    cname: str | None = getattr(sender, _SENDER + "cname")
    return cname


def header_extensions(sender: RTCRtpSender) -> HeaderExtensionsMap:
    """The negotiated RTP header extensions (the MID), as aiortc's serializer takes them."""
    extensions: HeaderExtensionsMap = getattr(sender, _SENDER + "rtp_header_extensions_map")
    return extensions


def take_over_sender_reports(sender: RTCRtpSender, goodbye: Callable[[], None]) -> None:
    """Replace the sender's report loop (looked up on the instance when sending starts) by
    one that only waits to be stopped, then calls `goodbye` (the RTCP BYE): the fast path
    sends the reports itself. `stop()` waits for the events set here."""

    async def run_rtcp() -> None:
        getattr(sender, _SENDER + "rtcp_started").set()
        try:
            await anyio.sleep_forever()
        finally:  # (stop() cancels it, then waits for rtcp_exited)
            goodbye()
            getattr(sender, _SENDER + "rtcp_exited").set()

    sender._run_rtcp = run_rtcp  # type: ignore[method-assign]


def note_sender_report(sender: RTCRtpSender, ntp: int, packets: int, octets: int) -> None:
    """Record a sender report sent for `sender` where aiortc reads it back: the round trip
    from the receiver's next report (its LSR), and getStats' counts."""
    setattr(sender, _SENDER + "lsr", (ntp >> 16) & 0xFFFFFFFF)
    setattr(sender, _SENDER + "lsr_time", time.time())
    setattr(sender, _SENDER + "packet_count", packets)
    setattr(sender, _SENDER + "octet_count", octets)


def remote_inbound_stats(sender: RTCRtpSender) -> Any:
    """aiortc's record of the receiver's newest report about `sender`'s stream, or None:
    what `getStats()` returns, without its await and the transport's statistics."""
    return getattr(sender, _SENDER + "stats").get(f"remote-inbound-rtp_{id(sender)}")


# DTLS and ICE -----------------------------------------------------------------------------
def ice_connection(dtls: RTCDtlsTransport) -> Any:
    """aioice's Connection under a DTLS transport (RTCIceTransport keeps it private)."""
    return dtls.transport._connection


def outbound_srtp(dtls: RTCDtlsTransport) -> pylibsrtp.Session:
    """The DTLS transport's outbound SRTP session (made when the handshake completes)."""
    session: pylibsrtp.Session = dtls._tx_srtp
    return session


# Certificates -----------------------------------------------------------------------------
class SharedCertificate(RTCCertificate):
    """An RTCCertificate whose OpenSSL contexts are made once per SRTP profile list (aiortc
    makes one per DTLS transport, in `_create_ssl_context`)."""

    def __init__(self, key: Any, cert: Any) -> None:
        super().__init__(key, cert)
        self._contexts: dict[tuple[bytes, ...], SSL.Context] = {}

    def _create_ssl_context(self, srtp_profiles: list[SRTPProtectionProfile]) -> SSL.Context:
        profiles = tuple(profile.openssl_profile for profile in srtp_profiles)
        context = self._contexts.get(profiles)
        if context is None:
            context = self._contexts[profiles] = super()._create_ssl_context(srtp_profiles)
        return context


def replace_certificate_class(target: Any) -> None:
    """Have every RTCPeerConnection made from now on take its certificate from
    `target.generateCertificate()`: aiortc looks `RTCCertificate` up in its
    `rtcpeerconnection` module when it builds one. `RTCCertificate` restores aiortc's own."""
    setattr(aiortc.rtcpeerconnection, "RTCCertificate", target)  # noqa: B010 (mypy: a type)
