"""A speaker's packet, from the socket to every output, top to bottom.

    aiortc's RTP routing -> rtp_tap (counted for our reports to the speaker)
      1. validate      an empty payload is dropped and counted; a stream that ended takes none
      2. rebase        the speaker's sequence numbers and timestamps onto one line of ours
                       (webrtc/rebase.py: a listener's numbers never jump, whatever theirs do)
      3. repair        RED unwrapped, a lost packet rebuilt from the next one's redundancy
                       within its reach, loss counted (webrtc/red.py)
      4. timeline      its pts on the channel's one timeline (timeline.ChannelClock: the
                       first packet continues the channel after the real pause) and the
                       stream's liveness (last_audio_at, the session's watchdog)
      5. outputs       each feed built once, only when some output takes it (outputs.py):
                       red -> every fast-path listener, in this call; packet -> aiortc tracks;
                       payload -> Ogg pages and the recording; frame (one decode in N) -> the
                       meter

A sender (media/sender.py) and an upstream from another node (cluster/upstream.py) both tap
their receiver here. In transcode mode aiortc also decodes every packet, and its frames come
in by `frame_path` (the session drains the decoded track): the tracks' and the meter's feed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import anyio
from aiortc import RTCRtpReceiver
from aiortc.rtp import RtpPacket
from av import AudioFrame

from ..audio.levels import EveryNth
from ..core.metrics import Metrics
from ..webrtc.fanout import Media
from ..webrtc.peer import Peer
from ..webrtc.rebase import Rebase
from ..webrtc.red import Redundancy, Repair
from ..webrtc.rtp_tap import OpusPacketizer, RtpCallback, tap_receiver
from .factory import Strategy
from .outputs import Outputs
from .sparse import SparseDecoder
from .timeline import ChannelClock

ADAPT_EVERY = 50  # packets (~1 s) between looks at the listeners' reported loss


class Fed(Protocol):
    """What the path needs of a stream (streams/stream.Stream is one)."""

    outputs: Outputs
    strategy: Strategy
    ended: anyio.Event
    last_audio_at: float
    audio_bytes: int
    clock: ChannelClock
    pts_base: int
    repair: Repair | None

    @property
    def replaces(self) -> object | None:
        """The stream it takes the channel over from, until it is audible."""

    def take_over(self) -> None: ...


def tap_stream(
    receiver: RTCRtpReceiver,
    metrics: Metrics,
    stream: Fed,
    opus: int,
    red: int | None = None,
    peer: Peer | None = None,
    meter_every: int | None = None,
) -> None:
    """Feed `stream` from `receiver`'s packets (steps 1-5). `peer`, when given, hears each
    packet too (the session's watchdog); `meter_every`: levels are wanted, one packet in N.

    Forward mode needs no PCM but the meter's: aiortc's jitter buffer and per-packet decode
    are skipped, and a SparseDecoder decodes one packet in N.
    """
    strategy = stream.strategy
    stream.repair = repair = Repair(metrics, opus, red)
    rebase = Rebase()

    def rebased_and_repaired(rtp: RtpPacket) -> list[RtpPacket]:
        # (after the tap has counted it for our reports to the sender, in its own numbers)
        return repair(rtp, rebase(rtp, time.monotonic()))

    handler = packet_path(metrics, stream, peer, strategy.sparse(meter_every))
    tap_receiver(
        receiver, handler, then_aiortc=strategy.aiortc_decodes, repair=rebased_and_repaired
    )


def fast_path_fan_out(
    metrics: Metrics, outputs: Outputs
) -> Callable[[RtpPacket, int, float], None]:
    """The fast path's one pass: each packet (with RED built once) to every DirectSender."""
    redundancy = Redundancy()
    adapt = EveryNth(ADAPT_EVERY)

    def fan_out(rtp: RtpPacket, pts: int, arrival: float) -> None:
        outgoing = redundancy.next(rtp.sequence_number, pts, rtp.payload, arrival)
        copies = sent = 0
        for send in outputs.red:  # sync: nobody joins or leaves meanwhile
            if size := send(outgoing):
                copies += 1
                sent += size
        # Once per packet: the last copy's latency is the fan-out's spread.
        metrics.packets_out += copies
        metrics.bytes_out += sent
        metrics.relay_latency.observe(time.monotonic() - arrival)
        if adapt():  # each RED listener's redundancy from its own loss reports
            for send in outputs.red:
                if send.red:
                    send.adapt_redundancy()

    return fan_out


def packet_path(
    metrics: Metrics, stream: Fed, peer: Peer | None, sparse: SparseDecoder | None = None
) -> RtpCallback:
    """Per packet from the speaker, once rebased and repaired: steps 1, 4 and 5."""
    outputs = stream.outputs
    fan_out = fast_path_fan_out(metrics, outputs)
    clock = stream.clock  # a channel's timeline, continued from its previous sender
    audible_at_first_packet = stream.strategy.audible_at_first_packet
    packetizer: OpusPacketizer | None = None

    def first_packet(arrival: float) -> OpusPacketizer:
        """The stream becomes audible: it takes its place on the channel's timeline, and (in
        forward mode; transcode at its first decoded frame, `frame_path`) the sender it took
        the channel from stops only now (make before break)."""
        stream.pts_base = clock.continued(arrival)
        if audible_at_first_packet:
            stream.take_over()
        return OpusPacketizer(stream.pts_base)

    def on_packet(rtp: RtpPacket, arrival: float) -> None:
        nonlocal packetizer
        if not rtp.payload:
            metrics.count_drop("empty_packet")
            return
        if stream.ended.is_set():
            return  # (a taken-over sender's last packets: its listeners have moved on)
        # `arrival` is time.monotonic(), the clock anyio.current_time() reads on asyncio.
        stream.last_audio_at = arrival
        if peer is not None:
            peer.last_heard = arrival
        metrics.record_ingress(len(rtp.payload))
        stream.audio_bytes += len(rtp.payload)
        if packetizer is None:
            packetizer = first_packet(arrival)
        pts = clock.pts = packetizer.advance(rtp)
        clock.at = arrival
        if outputs.red:
            fan_out(rtp, pts, arrival)
        if outputs.packet:
            packet = packetizer.packet(rtp, pts)
            for push in outputs.packet:
                push(packet, arrival)
        if stream.replaces is None:  # (audible: transcode takes over at its first frame)
            for feed in outputs.payload:
                feed(rtp.payload, pts, arrival)
        if sparse is not None and outputs.frame:
            for frame in sparse(rtp.payload):
                metrics.audio_frames += 1
                for push in outputs.frame:
                    push(frame, arrival)

    return on_packet


def frame_path(metrics: Metrics, stream: Fed) -> Callable[[Media], None]:
    """Per frame aiortc decoded (transcode mode; in forward mode none come): onto the
    channel's timeline, then to the frame feed (the tracks, the meter)."""
    audible_at_first_frame = not stream.strategy.audible_at_first_packet
    outputs = stream.outputs

    def on_frame(frame: Media) -> None:
        metrics.audio_frames += 1
        if isinstance(frame, AudioFrame) and frame.pts is not None:
            frame.pts += stream.pts_base
        if audible_at_first_frame:
            stream.take_over()
        arrival = time.monotonic()
        for push in outputs.frame:
            push(frame, arrival)

    return on_frame
