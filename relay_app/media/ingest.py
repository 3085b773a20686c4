"""Ingest: what happens to a sender's packets as they arrive, before any receiver.

A sender (sender.py) and an upstream from another node (cluster/upstream.py) both feed a
`Stream` through `packet_handler`: liveness, counters, the forward fan-out, the plain-HTTP
pages, the recording and (forward mode) the level meter's one decode in N.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiortc import RTCRtpReceiver
from aiortc.rtp import RtpPacket
from av import AudioFrame, CodecContext
from av import Packet as AvPacket
from av.error import FFmpegError

from ..audio.http_audio import HttpAudio
from ..audio.levels import EveryNth
from ..core.config import RelaySettings
from ..core.metrics import Metrics
from ..streams.stream import Stream
from ..webrtc.fanout import Fanout
from ..webrtc.peer import Peer
from ..webrtc.rebase import Rebase
from ..webrtc.red import Repair
from ..webrtc.rtp_tap import (
    OPUS_CLOCK_RATE,
    OpusPacketizer,
    RtpCallback,
    tap_receiver,
)

ADAPT_EVERY = 50  # packets (~1 s) between looks at the listeners' reported loss


def new_stream(settings: RelaySettings, metrics: Metrics, **identity: Any) -> Stream:
    """A stream with the fan-outs its relay mode needs (a sender's, or an upstream's)."""
    forward = settings.mode == "forward"
    return Stream(
        frames=Fanout(settings.queue_frames, metrics),
        packets=Fanout(settings.queue_frames, metrics) if forward else None,
        http=HttpAudio(metrics),
        **identity,
    )


class SparseDecoder:
    """Forward mode's one decode per stream: one Opus packet in `every`, for the level meter.

    Skipping aiortc's receive path (jitter buffer, decoder thread, a queue hand-off per packet)
    took the idle stream's CPU from 6.4 to 3.5 % of a core. Opus decodes a packet
    after skipped ones from the state it has, as after a loss: close enough for a meter.
    """

    def __init__(self, every: int) -> None:
        self._codec = CodecContext.create("libopus", "r")
        self._codec.format = "s16"
        self._codec.layout = "stereo"
        self._codec.sample_rate = OPUS_CLOCK_RATE
        self._due = EveryNth(every)

    def __call__(self, payload: bytes) -> list[AudioFrame]:
        if not self._due():
            return []
        try:
            return list(self._codec.decode(AvPacket(payload)))
        except FFmpegError:  # a corrupt packet: no level this time
            return []


def tap_stream(
    receiver: RTCRtpReceiver,
    settings: RelaySettings,
    metrics: Metrics,
    stream: Stream,
    opus: int,
    red: int | None = None,
    peer: Peer | None = None,
    sparse: SparseDecoder | None = None,
) -> None:
    """Feed `stream` from `receiver`'s packets: rebased (rebase.Rebase: the sender's jumps
    never reach a listener's numbers), repaired (red.Repair), then `packet_handler`.

    Forward mode needs no PCM but the level meter's: aiortc's jitter buffer and per-packet
    decode are skipped, and `sparse` decodes one packet in N while levels are wanted.
    """
    forward = settings.mode == "forward"
    stream.repair = repair = Repair(metrics, opus, red)
    rebase = Rebase()

    def rebased_and_repaired(rtp: RtpPacket) -> list[RtpPacket]:
        # (after the tap has counted it for our reports to the sender, in its own numbers)
        return repair(rtp, rebase(rtp, time.monotonic()))

    handler = packet_handler(metrics, stream, peer, sparse if forward else None)
    tap_receiver(receiver, handler, then_aiortc=not forward, repair=rebased_and_repaired)


def direct_fan_out(metrics: Metrics, stream: Stream) -> Callable[[RtpPacket, int, float], None]:
    """The fast path's one pass: each packet (with RED built once) to every DirectSender."""
    direct, redundancy = stream.direct, stream.redundancy
    adapt = EveryNth(ADAPT_EVERY)

    def fan_out(rtp: RtpPacket, pts: int, arrival: float) -> None:
        outgoing = redundancy.next(rtp.sequence_number, pts, rtp.payload, arrival)
        copies = sent = 0
        for send in direct.values():  # sync: nobody joins or leaves meanwhile
            if size := send(outgoing):
                copies += 1
                sent += size
        # Once per packet: the last copy's latency is the fan-out's spread.
        metrics.packets_out += copies
        metrics.bytes_out += sent
        metrics.relay_latency.observe(time.monotonic() - arrival)
        if adapt():  # each RED listener's redundancy from its own loss reports
            for send in direct.values():
                if send.red:
                    send.adapt_redundancy()

    return fan_out


def packet_handler(
    metrics: Metrics,
    stream: Stream,
    peer: Peer | None,
    sparse: SparseDecoder | None = None,
) -> RtpCallback:
    """Per Opus packet from the sender (or an upstream, upstream.py), once repaired:
    liveness, counters, and (forward mode) the fan-out. `peer`, when given, hears it too
    (the session's watchdog); `sparse` decodes for the level meter while it listens."""
    frames = stream.frames
    packets, http, recording = stream.packets, stream.http, stream.recording
    direct = stream.direct  # relay.fast_path receivers (fast_path.py), filled as they join
    fan_out = direct_fan_out(metrics, stream)
    clock = stream.clock  # a channel's timeline, continued from its previous sender
    packetizer: OpusPacketizer | None = None

    def first_packet(arrival: float) -> OpusPacketizer:
        """The stream becomes audible: it takes its place on the channel's timeline, and (in
        forward mode; transcode at its first decoded frame, sender.py) the sender it took the
        channel from stops only now (make before break)."""
        stream.pts_base = clock.continued(arrival)
        if packets is not None:
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
        if packets is not None and packets.subscriber_count:
            packets.publish(packetizer.packet(rtp, pts), arrival)
        if direct:
            fan_out(rtp, pts, arrival)
        if http is not None:
            http.feed(rtp.payload, arrival)
        if recording is not None:
            recording.feed(rtp.payload)
        if sparse is not None and frames.subscriber_count:
            for frame in sparse(rtp.payload):
                metrics.audio_frames += 1
                frames.publish(frame, arrival)

    return on_packet
