"""Encoded Opus packets as they arrive: a tap on a receiver, before aiortc's own handling.

aiortc has no public hook for received RTP: a receiver depacketizes into its jitter buffer
(which holds ~4 packets before releasing any) and decodes in a thread. A forwarding relay
wants the Opus payload the moment it arrives, without decoding it per receiver. So the tap
wraps one receiver *instance*'s packet handler (through the room of internals:
internals/of_aiortc.py) and hands each packet to a callback first. aiortc's own handling
(jitter buffer, decode) runs after it only where PCM is needed (`then_aiortc`: transcode
mode); a forward-mode sender's packets stop at the tap, which then keeps aiortc's per-source
loss statistics itself: aiortc's RTCP receiver reports read them, and a browser's Opus
encoder turns its in-band FEC on only when those report loss.
"""

from __future__ import annotations

import fractions
import time
from collections.abc import Callable
from typing import Any

from aiortc import RTCPeerConnection, RTCRtpCodecParameters, RTCRtpReceiver
from aiortc.rtcrtpreceiver import StreamStatistics
from aiortc.rtp import RtpPacket
from aiortc.sdp import SessionDescription
from av.packet import Packet

from ..core.errors import NegotiationError
from ..internals import of_aiortc

OPUS_CLOCK_RATE = 48000  # RFC 7587: Opus RTP always uses a 48 kHz clock
OPUS_FRAME_SAMPLES = 960  # one 20 ms packet on that clock
_OPUS_TIME_BASE = fractions.Fraction(1, OPUS_CLOCK_RATE)


def negotiated_opus_payload_type(pc: RTCPeerConnection) -> int:
    """The Opus payload type of the (first) audio section of the local description."""
    description = SessionDescription.parse(pc.localDescription.sdp)
    for media in description.media:
        if media.kind != "audio":
            continue
        for codec in media.rtp.codecs:
            if codec.mimeType.lower() == "audio/opus" and codec.payloadType is not None:
                return codec.payloadType
    raise NegotiationError("only Opus audio is relayed: the offer has no Opus codec")


class OpusPacketizer:
    """Turns arriving RTP packets into `av.Packet`s that aiortc's senders forward as they are.

    The pts is the sender's RTP timestamp, unwrapped past 2**32 and counted from the first
    packet (at `base`); each receiver's RTCRtpSender adds its own random origin and numbers its own
    sequence, so receivers joining mid-stream see a valid, continuous RTP stream.
    """

    def __init__(self, base: int = 0) -> None:
        self._first: int | None = None
        self._last = 0
        self._extended = base  # the first packet's pts (a channel's timeline goes on)

    def advance(self, rtp: RtpPacket) -> int:
        """The packet's pts: its timestamp unwrapped, from the first packet seen."""
        if self._first is None:
            self._first = self._last = rtp.timestamp
        delta = (rtp.timestamp - self._last) & 0xFFFFFFFF
        if delta >= 0x80000000:
            delta -= 0x100000000  # reordered: a little behind, not 2**32 ahead
        self._last = rtp.timestamp
        self._extended += delta
        return self._extended

    def packet(self, rtp: RtpPacket, pts: int | None = None) -> Packet:
        packet = Packet(rtp.payload)
        packet.pts = self.advance(rtp) if pts is None else pts
        packet.time_base = _OPUS_TIME_BASE
        return packet


RtpCallback = Callable[[RtpPacket, float], None]
"""Called with each RTP packet routed to the receiver and its arrival time (monotonic)."""


def tap_receiver(
    receiver: RTCRtpReceiver,
    on_packet: RtpCallback,
    *,
    then_aiortc: bool = True,
    repair: Callable[[RtpPacket], list[RtpPacket]] | None = None,
) -> None:
    """Call `on_packet` for every RTP packet `receiver` gets, before aiortc handles it.

    `repair` (red.Repair) turns each arriving packet into the Opus packets it carries: those
    are what `on_packet` and, with `then_aiortc`, aiortc's jitter buffer and decoder get.
    `then_aiortc=False` skips aiortc's handling (jitter buffer, decode): forward mode.
    """
    statistics = of_aiortc.receiver_loss_statistics(receiver)

    def wrap(original: of_aiortc.RtpHandler) -> of_aiortc.RtpHandler:
        async def tapped(packet: RtpPacket, arrival_time_ms: int) -> None:
            arrival = time.monotonic()
            if not then_aiortc:  # (with aiortc's handling, aiortc counts what it is given)
                source = statistics.get(packet.ssrc)
                if source is None:
                    source = statistics[packet.ssrc] = StreamStatistics(OPUS_CLOCK_RATE)
                source.add(packet)
            for opus in repair(packet) if repair is not None else (packet,):
                on_packet(opus, arrival)
                if then_aiortc:
                    await original(opus, arrival_time_ms)

        return tapped

    of_aiortc.wrap_rtp_handler(receiver, wrap)


def receive_red(pc: RTCPeerConnection, payload_type: int) -> None:
    """Let RED packets (red.py) under `payload_type` reach the audio receiver's tap.

    aiortc routes a packet to a receiver only under a payload type in the transceiver's
    negotiated codecs, and RED is not one it knows. Listed here, after the answer is made
    (aiortc's own SDP is untouched) and before the connection starts receiving.
    """
    red = RTCRtpCodecParameters(
        mimeType="audio/red", clockRate=OPUS_CLOCK_RATE, channels=2, payloadType=payload_type
    )
    of_aiortc.route_payload_type(pc, red)


def audio_receiver(pc: RTCPeerConnection, track: Any) -> RTCRtpReceiver:
    for transceiver in pc.getTransceivers():
        if transceiver.receiver.track is track:
            return transceiver.receiver
    raise LookupError("no receiver for this track")
