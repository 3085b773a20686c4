"""One pass per packet over all receivers (`relay.fast_path`, forward mode).

In the standard forward path each arriving Opus packet is queued to every receiver's relay
track and each receiver's aiortc `RTCRtpSender` task wakes up to pull it, packetize it, protect
it and send it: N task wake-ups and N trips through aiortc's per-packet path per packet. Here
the sender's packet handler (sender.py) calls every receiver's `DirectSender` in turn, in
the same call: build the receiver's RTP header, SRTP-protect with the receiver's own session
(libsrtp, C) and `sendto` on the socket of the receiver's nominated ICE pair. aiortc still
does ICE, DTLS, the receiver's RTCP reports (their loss and round trip are read back from
it) and the receiver's lifetime; its own RTP task gets a `Placeholder` track that never
yields, and its sender-report loop is replaced by one report every ~5 s sent from here.

What a copy costs is what runs per receiver, so only the receiver's own work runs there
(header, SRTP, sendto, its counters as plain attributes, a due report); the clock, the
relay's counters and the latency histogram are read once per packet by the fan-out
(ingest.py).

Each receiver gets the stream's sequence numbers plus its own offset, never a renumbering:
a packet the speaker's leg lost for good stays a gap the receiver can see (red.py). The
stream's numbers are the speaker's rebased once per packet as they arrive (rebase.py): what a
speaker does with its numbers, a jump, a wrap, timestamps racing ahead, never reaches a
receiver's numbers, which libsrtp (the relay's own, then the receiver's) would refuse as
"index too old" after a jump of 32,768 or more. Where a receiver's numbers go on from another
run (its first packet, a channel's handover: `follow`), rebase.continuing gives its offset.
A receiver that negotiated RED gets the packet with its redundancy, built once per packet
for all of them (red.Outgoing), one or two packets back as its own loss reports ask.

Like rtp_tap.py this reaches into aiortc 1.16.0 / aioice 0.13.0 internals (pinned);
`tests/webrtc/test_fast_path.py` fails loudly if an upgrade moves what it uses.
"""

from __future__ import annotations

import random
import struct
import time
from typing import Any

import anyio
import pylibsrtp
from aiortc import RTCPeerConnection
from aiortc import clock as aiortc_clock
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtp import (
    RtcpByePacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSourceInfo,
    RtcpSrPacket,
    RtpPacket,
)
from pylibsrtp._binding import ffi as _ffi  # type: ignore[import-not-found]
from pylibsrtp._binding import lib as _lib

from ..core.metrics import Metrics
from .peer import Peer
from .rebase import continuing
from .red import Outgoing, distance_for, red_key
from .rtp_tap import negotiated_opus_payload_type

_SEQUENCE_AND_TIMESTAMP = struct.Struct("!HI")  # RTP header bytes 2-7
_UNRESOLVED = object()
_SRTP_MAX_TRAILER = pylibsrtp.SRTP_MAX_TRAILER_LEN

# RTCRtpSender's name-mangled private attributes (its report loop's, its statistics').
_SENDER = "_RTCRtpSender__"
REPORT_INTERVAL = 5.0  # seconds between sender reports (browsers' for audio), x 0.5-1.5


class Placeholder(MediaStreamTrack):
    """The track a fast-path receiver's transceiver carries: aiortc's own RTP task waits on
    it and never sends (the DirectSender does); it ends when the track is stopped."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._stopped = anyio.Event()

    async def recv(self) -> Any:
        await self._stopped.wait()
        raise MediaStreamError

    def stop(self) -> None:
        super().stop()
        self._stopped.set()


class InPlaceSrtp:
    """SRTP protection written into the session's own C buffer, sent from there.

    pylibsrtp's `protect` takes one bytes object, and per call allocates a length, copies the
    packet in and copies the result out: ~0.6 us of a copy's ~13. Here the header and the
    payload are written straight into the buffer libsrtp protects in place, and the socket
    sends a view of it (sendto reads it before anything else can write there: one thread).
    Written for pylibsrtp 1.0.0 (pinned); tests/webrtc/test_fast_path.py checks its parts.
    """

    def __init__(self, session: pylibsrtp.Session) -> None:
        self._srtp = session._srtp[0]
        self._cdata = session._cdata
        buffer = session._buffer
        self._buffer = buffer
        self._view = memoryview(buffer)
        self._room = len(buffer) - _SRTP_MAX_TRAILER
        self._length = _ffi.new("int *")

    def protect(self, header: bytearray, payload: bytes) -> memoryview:
        """The protected packet of `header` + `payload`: a view valid until the next call."""
        start = len(header)
        size = start + len(payload)
        if size > self._room:
            raise ValueError(f"packet is too long for SRTP ({size} bytes)")
        buffer, length = self._buffer, self._length
        buffer[0:start] = header
        buffer[start:size] = payload
        length[0] = size
        if code := _lib.srtp_protect(self._srtp, self._cdata, length):
            raise pylibsrtp.Error(f"srtp_protect failed ({code})")
        return self._view[: length[0]]


class DirectSender:
    """Sends one receiver's copy of each packet, synchronously, once its transport is up."""

    def __init__(self, peer: Peer, metrics: Metrics) -> None:
        self._peer = peer
        self._pc: RTCPeerConnection = peer.pc
        self._metrics = metrics
        self._sender: Any = None  # resolved on the first packet after DTLS is connected
        self._nominated: dict[int, Any] = {}  # ICE's nominated pair per component, and ours:
        self._pair: Any = _UNRESOLVED  # resolved again if the remote peer nominates another
        self._offset = random.getrandbits(16)  # added to the speaker's sequence numbers
        self._sent = (self._offset - 1) & 0xFFFF  # the newest sequence number sent
        self._follow = False
        self._origin = random.getrandbits(32)
        self._opus = 0
        self.red = False  # whether this receiver negotiated RED (known once connected)
        self._distance = 1  # packets of redundancy it gets (red.distance_for), and what
        self._red_key = 0  # it asks each packet for: red.red_key(Opus payload type, that)
        self._packets = 0  # sent, and payload bytes sent: what its sender reports say
        self._octets = 0
        # When (time.monotonic(), a packet's arrival) its next sender report is due: by the
        # clock, so timestamps a speaker races ahead cannot make one due per packet.
        self._report_due = 0.0

    def take_reports(self) -> None:
        """This receiver's sender reports come from here, not from aiortc's loop.

        aiortc's RTCRtpSender wakes every 0.5-1.5 s per receiver to send a report; with the
        counts now here, the DirectSender sends one right after a packet every ~5 s (the
        interval browsers use for audio), with no timer and no wake-up of its own. Called
        once the track is added and before the connection starts (which starts aiortc's
        loop): aiortc's loop then only waits to be stopped and says goodbye (RTCP BYE).
        """
        sender: Any = self._transceiver().sender

        async def run_rtcp() -> None:
            getattr(sender, _SENDER + "rtcp_started").set()
            try:
                await anyio.sleep_forever()
            finally:  # (stop() cancels it, then waits for rtcp_exited)
                self._send_rtcp(bytes(RtcpByePacket(sources=[sender._ssrc])))
                getattr(sender, _SENDER + "rtcp_exited").set()

        sender._run_rtcp = run_rtcp

    def _transceiver(self) -> Any:
        """The audio transceiver it sends on, whatever the section order: a player that offers
        video first (answered inactive) must not get Opus under the video's MID/SSRC."""
        return next(t for t in self._pc.getTransceivers() if t.kind == "audio")

    def _resolve(self) -> bool:
        """The receiver's sender, payload type, SSRC, header extensions and socket, once
        connected."""
        transceiver = self._transceiver()
        sender = transceiver.sender
        dtls = sender.transport
        if dtls is None or dtls._state != DtlsState.CONNECTED:
            return False
        self._nominated = dtls.transport._connection._nominated
        pair = self._nominated.get(1)
        if pair is None or pair.protocol.transport is None:
            return False
        # The header is the same for every packet but for sequence number and timestamp: made
        # once by aiortc's own serializer (with the MID extension), patched per packet.
        self._opus = negotiated_opus_payload_type(self._pc)
        self._red_key = red_key(self._opus, self._distance)
        red = self._peer.red_payload_type
        self.red = red is not None
        template = RtpPacket(
            payload_type=self._opus if red is None else red, marker=1, ssrc=sender._ssrc
        )
        template.extensions.mid = transceiver.mid
        self._header = bytearray(
            template.serialize(getattr(sender, _SENDER + "rtp_header_extensions_map"))
        )
        self._dtls = dtls
        self._srtp = InPlaceSrtp(dtls._tx_srtp)
        # The nominated pair's socket itself: asyncio's transport would only add checks and,
        # when the kernel's buffer is full, a queue; late audio is no better than lost. Once
        # the socket is closed its sendto raises, and the DTLS state is checked first anyway.
        transport: Any = pair.protocol.transport
        self._sendto = transport._sock.sendto
        self._address = pair.remote_addr
        self._pair = pair
        self._sender = sender
        return True

    def follow(self) -> None:
        """The next packet is another sender's (a channel's handover): number on from the
        last one sent, so the receiver sees one stream with a pause (the channel's timeline,
        ingest.py, moves the timestamps on by the real gap)."""
        self._follow = True

    def adapt_redundancy(self) -> None:
        """Its RED distance from its own newest loss report (a listener on a bad link gets
        two packets back; the stream's other listeners keep what their own links need)."""
        distance = distance_for(self.reported_loss, self._distance)
        if distance != self._distance:
            self._distance = distance
            self._red_key = red_key(self._opus, distance)

    @property
    def reported_loss(self) -> int:
        """The fraction of our packets the receiver last reported lost (RTCP, /256)."""
        stats = self._remote_inbound()
        return int(stats.fractionLost) if stats is not None else 0

    def _remote_inbound(self) -> Any:
        """aiortc's record of the receiver's newest report about our stream, if any."""
        if self._sender is None:
            return None
        return getattr(self._sender, _SENDER + "stats").get(
            f"remote-inbound-rtp_{id(self._sender)}"
        )

    def __call__(self, packet: Outgoing) -> int:
        """Send this receiver's copy; the payload bytes sent (0: not sent)."""
        if self._nominated.get(1) is not self._pair and not self._resolve():
            return 0  # not connected yet: nothing to send to (the standard path waits too)
        if self._dtls._state is not DtlsState.CONNECTED:
            self._metrics.count_drop("receiver_not_connected")
            return 0
        if self._follow:
            self._follow = False
            self._offset = continuing(self._sent, packet.sequence)
        header = self._header
        self._sent = sequence = (packet.sequence + self._offset) & 0xFFFF
        _SEQUENCE_AND_TIMESTAMP.pack_into(
            header, 2, sequence, (self._origin + packet.pts) & 0xFFFFFFFF
        )
        payload = packet.red(self._red_key) if self.red else packet.payload
        try:
            self._sendto(self._srtp.protect(header, payload), self._address)
        except OSError:  # closed under us, or the kernel's buffer is full: this copy is lost
            self._metrics.count_drop("receiver_send_failed")
            return 0
        except (pylibsrtp.Error, ValueError):  # (longer than libsrtp's buffer: not audio)
            self._metrics.count_drop("receiver_srtp_failed")
            return 0
        self._octets += len(payload)
        self._packets += 1
        if packet.arrival >= self._report_due:
            self._report(packet)
        return len(payload)

    def _report(self, packet: Outgoing) -> None:
        """A sender report (and our CNAME) right after `packet` went out (the first packet,
        then every ~5 s): its RTP timestamp with the wall clock it goes with (now), and the
        counts so far."""
        interval = REPORT_INTERVAL * (0.5 + random.random())  # (RFC 3550)
        self._report_due = packet.arrival + interval
        pts = packet.pts
        sender = self._sender
        ntp = aiortc_clock.current_ntp_time()
        info = RtcpSenderInfo(
            ntp_timestamp=ntp,
            rtp_timestamp=(self._origin + pts) & 0xFFFFFFFF,
            packet_count=self._packets & 0xFFFFFFFF,
            octet_count=self._octets & 0xFFFFFFFF,
        )
        report = bytes(RtcpSrPacket(ssrc=sender._ssrc, sender_info=info))
        cname = getattr(sender, _SENDER + "cname")
        if cname is not None:
            chunk = RtcpSourceInfo(ssrc=sender._ssrc, items=[(1, cname.encode("utf8"))])
            report += bytes(RtcpSdesPacket(chunks=[chunk]))
        self._send_rtcp(report)
        # What aiortc reads back: its round-trip time from the receiver's next report, and
        # its own statistics (getStats).
        setattr(sender, _SENDER + "lsr", (ntp >> 16) & 0xFFFFFFFF)
        setattr(sender, _SENDER + "lsr_time", time.time())
        setattr(sender, _SENDER + "packet_count", self._packets)
        setattr(sender, _SENDER + "octet_count", self._octets)

    def _send_rtcp(self, payload: bytes) -> None:
        if self._sender is None or self._dtls._state is not DtlsState.CONNECTED:
            return
        try:
            self._sendto(self._dtls._tx_srtp.protect_rtcp(payload), self._address)
        except OSError:
            self._metrics.count_drop("receiver_send_failed")
