"""One pass per packet over all receivers (`relay.fast_path`, forward mode).

In the standard forward path each arriving Opus packet is queued to every receiver's relay
track and each receiver's aiortc `RTCRtpSender` task wakes up to pull it, packetize it, protect
it and send it: N task wake-ups and N trips through aiortc's per-packet path per packet. Here
the sender's packet handler (sender.py) calls every receiver's `DirectSender` in turn, in
the same call: build the receiver's RTP header, SRTP-protect with the receiver's own session
(libsrtp, C) and `sendto` on the receiver's nominated ICE pair. aiortc still does ICE, DTLS,
RTCP (its sender reports are fed the counts this sends; the receiver's reports of loss are
read back from it) and the receiver's lifetime; its own RTP task gets a `Placeholder` track
that never yields.

What a copy costs is what runs per receiver, so only the receiver's own work runs there
(header, SRTP, sendto, its counters as plain attributes); the clock, the relay's counters and
the latency histogram are read once per packet by the fan-out (ingest.py), and aiortc's
name-mangled sender-report counters are brought up to date every SYNC_EVERY packets.

Each receiver gets the speaker's sequence numbers plus its own offset, never a renumbering:
a packet the speaker's leg lost for good stays a gap the receiver can see (red.py). A
receiver that negotiated RED gets the packet with its redundancy, built once per packet
for all of them (red.Outgoing).

Like rtp_tap.py this reaches into aiortc 1.16.0 / aioice 0.13.0 internals (pinned);
`tests/webrtc/test_fast_path.py` fails loudly if an upgrade moves what it uses.
"""

from __future__ import annotations

import random
import struct
from typing import Any

import anyio
from aiortc import RTCPeerConnection
from aiortc import clock as aiortc_clock
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtp import RtpPacket

from ..core.metrics import Metrics
from .peer import Peer
from .red import Outgoing
from .rtp_tap import negotiated_opus_payload_type

_SEQUENCE_AND_TIMESTAMP = struct.Struct("!HI")  # RTP header bytes 2-7

# Name-mangled private counters of RTCRtpSender that its RTCP sender reports read.
_SENDER = "_RTCRtpSender__"
SYNC_EVERY = 25  # packets (0.5 s) between updates of them: reports go out about once a second


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


class DirectSender:
    """Sends one receiver's copy of each packet, synchronously, once its transport is up."""

    def __init__(self, peer: Peer, metrics: Metrics) -> None:
        self._peer = peer
        self._pc: RTCPeerConnection = peer.pc
        self._metrics = metrics
        self._sender: Any = None  # resolved on the first packet after DTLS is connected
        self._offset = random.getrandbits(16)  # added to the speaker's sequence numbers
        self._sent = (self._offset - 1) & 0xFFFF  # the newest sequence number sent
        self._follow = False
        self._origin = random.getrandbits(32)
        self._opus = 0
        self.red = False  # whether this receiver negotiated RED (known once connected)
        self._packets = 0  # sent, and payload bytes sent: what its sender reports say
        self._octets = 0
        self._timestamp = 0

    def _resolve(self) -> bool:
        """The receiver's sender, payload type, SSRC and header extensions, once connected."""
        # The audio transceiver it sends on, whatever the section order: a player that
        # offers video first (answered inactive) must not get Opus under the video's MID/SSRC.
        transceiver = next(t for t in self._pc.getTransceivers() if t.kind == "audio")
        sender = transceiver.sender
        dtls = sender.transport
        if dtls is None or dtls._state != DtlsState.CONNECTED:
            return False
        # The header is the same for every packet but for sequence number and timestamp: made
        # once by aiortc's own serializer (with the MID extension), patched per packet.
        self._opus = negotiated_opus_payload_type(self._pc)
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
        self._sender = sender
        return True

    def follow(self) -> None:
        """The next packet is another sender's (a channel's handover): number on from the
        last one sent, so the receiver sees one stream with a pause (the channel's timeline,
        ingest.py, moves the timestamps on by the real gap)."""
        self._follow = True

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
        """Send this receiver's copy; the payload bytes sent (0: not connected)."""
        if self._sender is None and not self._resolve():
            return 0  # not connected yet: nothing to send to (the standard path waits too)
        dtls = self._dtls
        pair = dtls.transport._connection._nominated.get(1)
        if dtls._state != DtlsState.CONNECTED or pair is None or pair.protocol.transport is None:
            self._metrics.count_drop("receiver_not_connected")
            return 0
        if self._follow:
            self._follow = False
            self._offset = (self._sent + 1 - packet.sequence) & 0xFFFF
        self._timestamp = timestamp = (self._origin + packet.pts) & 0xFFFFFFFF
        header = self._header
        self._sent = sequence = (packet.sequence + self._offset) & 0xFFFF
        _SEQUENCE_AND_TIMESTAMP.pack_into(header, 2, sequence, timestamp)
        payload = packet.red(self._opus) if self.red else packet.payload
        pair.protocol.transport.sendto(
            dtls._tx_srtp.protect(bytes(header) + payload), pair.remote_addr
        )
        self._octets += len(payload)
        self._packets += 1
        if self._packets % SYNC_EVERY == 1:
            self.sync_reports()
        return len(payload)

    def sync_reports(self) -> None:
        """aiortc's sender reports read these: the counts so far, and the newest packet's RTP
        timestamp with the wall clock it goes with (now, as it has just been sent)."""
        sender = self._sender
        setattr(sender, _SENDER + "octet_count", self._octets)
        setattr(sender, _SENDER + "packet_count", self._packets)
        setattr(sender, _SENDER + "rtp_timestamp", self._timestamp)
        setattr(sender, _SENDER + "ntp_timestamp", aiortc_clock.current_ntp_time())
