"""One pass per packet over all receivers (`relay.fast_path`, forward mode).

In the standard forward path each arriving Opus packet is queued to every receiver's relay
track and each receiver's aiortc `RTCRtpSender` task wakes up to pull it, packetize it, protect
it and send it: N task wake-ups and N trips through aiortc's per-packet path per packet. Here
the packet path (plane/path.py) calls every receiver's `DirectSender` in turn, in
the same call: build the receiver's RTP header, SRTP-protect with the receiver's own session
(libsrtp, C) and `sendto` on the socket of the receiver's nominated ICE pair. aiortc still
does ICE, DTLS, the receiver's RTCP reports (their loss and round trip are read back from
it) and the receiver's lifetime; its own RTP task gets a `Placeholder` track that never
yields, and its sender-report loop is replaced by one report every ~5 s sent from here.

What a copy costs is what runs per receiver, so only the receiver's own work runs there
(header, SRTP, sendto, its counters as plain attributes, a due report); the clock, the
relay's counters and the latency histogram are read once per packet by the fan-out
(plane/path.py).

Each receiver gets the stream's sequence numbers plus its own offset, never a renumbering:
a packet the speaker's leg lost for good stays a gap the receiver can see (red.py). The
stream's numbers are the speaker's rebased once per packet as they arrive (rebase.py): what a
speaker does with its numbers, a jump, a wrap, timestamps racing ahead, never reaches a
receiver's numbers, which libsrtp (the relay's own, then the receiver's) would refuse as
"index too old" after a jump of 32,768 or more. Where a receiver's numbers go on from another
run (its first packet, a channel's handover: `follow`), rebase.continuing gives its offset.
A receiver that negotiated RED gets the packet with its redundancy, built once per packet
for all of them (red.Outgoing), one or two packets back as its own loss reports ask.

What it needs of aiortc, aioice, pylibsrtp and asyncio that they keep private (the sender's
SSRC and report bookkeeping, the nominated pair, the SRTP session, the socket) it gets from
the room of internals (internals/); on a loop other than asyncio's selector loop (uvloop)
the copy goes out through the transport's public `sendto` instead of the socket's.
"""

from __future__ import annotations

import random
import struct
from typing import Any

import anyio
import pylibsrtp
from aiortc import RTCPeerConnection
from aiortc import clock as aiortc_clock
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import (
    RtcpByePacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSourceInfo,
    RtcpSrPacket,
    RtpPacket,
)

from ..core.metrics import Metrics
from ..internals import of_aioice, of_aiortc, of_asyncio
from ..internals.of_pylibsrtp import InPlaceSrtp
from .peer import Peer
from .rebase import continuing
from .red import Outgoing, distance_for, red_key
from .rtp_tap import negotiated_opus_payload_type

_SEQUENCE_AND_TIMESTAMP = struct.Struct("!HI")  # RTP header bytes 2-7
_UNRESOLVED = object()
REPORT_INTERVAL = 5.0  # seconds between sender reports (browsers' for audio), x 0.5-1.5


class Placeholder(MediaStreamTrack):
    """The track a fast-path receiver's transceiver carries: aiortc's own RTP task waits on
    it and never sends (the DirectSender does); it ends when the track is stopped."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.halted = anyio.Event()  # (not a name of aiortc's track: one of ours)

    async def recv(self) -> Any:
        await self.halted.wait()
        raise MediaStreamError

    def stop(self) -> None:
        super().stop()
        self.halted.set()


class DirectSender:
    """Sends one receiver's copy of each packet, synchronously, once its transport is up."""

    def __init__(self, peer: Peer, metrics: Metrics) -> None:
        self._peer = peer
        self._pc: RTCPeerConnection = peer.pc
        self._metrics = metrics
        self._sender: Any = None  # resolved on the first packet after DTLS is connected
        self._nominated: dict[int, Any] = {}  # ICE's nominated pair per component, and ours:
        self._pair: Any = _UNRESOLVED  # resolved again if the remote peer nominates another
        self._dtls: Any = None  # its DTLS transport, and whether that is connected (kept by
        self._connected = False  # the transport's statechange event: no lookup per copy)
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
        sender = self._transceiver().sender

        def goodbye() -> None:
            self._send_rtcp(bytes(RtcpByePacket(sources=[of_aiortc.sender_ssrc(sender)])))

        of_aiortc.take_over_sender_reports(sender, goodbye)

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
        if dtls is None or dtls.state != "connected":
            return False
        self._nominated = of_aioice.nominated_pairs(of_aiortc.ice_connection(dtls))
        pair = self._nominated.get(1)
        if pair is None or pair.protocol.transport is None:
            return False
        # The header is the same for every packet but for sequence number and timestamp: made
        # once by aiortc's own serializer (with the MID extension), patched per packet.
        self._opus = negotiated_opus_payload_type(self._pc)
        self._red_key = red_key(self._opus, self._distance)
        red = self._peer.red_payload_type
        self.red = red is not None
        self._ssrc = of_aiortc.sender_ssrc(sender)
        template = RtpPacket(
            payload_type=self._opus if red is None else red, marker=1, ssrc=self._ssrc
        )
        template.extensions.mid = transceiver.mid
        self._header = bytearray(template.serialize(of_aiortc.header_extensions(sender)))
        if dtls is not self._dtls:
            self._watch(dtls)
        self._srtp_session = of_aiortc.outbound_srtp(dtls)
        self._srtp = InPlaceSrtp(self._srtp_session)
        # The nominated pair's socket itself (of_asyncio.datagram_sendto: one direct call
        # per copy on asyncio's loop). Once the socket is closed its sendto raises, and the
        # DTLS state is checked first anyway.
        self._sendto = of_asyncio.datagram_sendto(pair.protocol.transport)
        self._address = pair.remote_addr
        self._pair = pair
        self._sender = sender
        return True

    def _watch(self, dtls: Any) -> None:
        """Keep `_connected` as the DTLS transport's state says (it only records the fact)."""
        self._dtls = dtls
        self._connected = True

        def state_changed() -> None:
            self._connected = dtls.state == "connected"

        dtls.on("statechange", state_changed)

    def follow(self) -> None:
        """The next packet is another sender's (a channel's handover): number on from the
        last one sent, so the receiver sees one stream with a pause (the channel's timeline,
        plane/timeline.py, moves the timestamps on by the real gap)."""
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
        if self._sender is None:
            return 0
        stats = of_aiortc.remote_inbound_stats(self._sender)
        return int(stats.fractionLost) if stats is not None else 0

    def __call__(self, packet: Outgoing) -> int:
        """Send this receiver's copy; the payload bytes sent (0: not sent)."""
        if self._nominated.get(1) is not self._pair and not self._resolve():
            return 0  # not connected yet: nothing to send to (the standard path waits too)
        if not self._connected:
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
        ntp = aiortc_clock.current_ntp_time()
        info = RtcpSenderInfo(
            ntp_timestamp=ntp,
            rtp_timestamp=(self._origin + pts) & 0xFFFFFFFF,
            packet_count=self._packets & 0xFFFFFFFF,
            octet_count=self._octets & 0xFFFFFFFF,
        )
        report = bytes(RtcpSrPacket(ssrc=self._ssrc, sender_info=info))
        cname = of_aiortc.sender_cname(self._sender)
        if cname is not None:
            chunk = RtcpSourceInfo(ssrc=self._ssrc, items=[(1, cname.encode("utf8"))])
            report += bytes(RtcpSdesPacket(chunks=[chunk]))
        self._send_rtcp(report)
        # What aiortc reads back: its round-trip time from the receiver's next report, and
        # its own statistics (getStats).
        of_aiortc.note_sender_report(self._sender, ntp, self._packets, self._octets)

    def _send_rtcp(self, payload: bytes) -> None:
        if self._sender is None or not self._connected:
            return
        try:
            self._sendto(self._srtp_session.protect_rtcp(payload), self._address)
        except OSError:
            self._metrics.count_drop("receiver_send_failed")
