"""The one place that chooses how audio reaches an output: `Strategy`, made once from
relay.mode and relay.fast_path, makes every output (outputs.py) and tells the packet path
(path.py) what to build.

    forward, fast path   WebRTC listeners: FastPathOutput (DirectSender; RED where negotiated)
    forward              WebRTC listeners: TrackOutput of packets (aiortc sends them as they are)
    transcode            aiortc decodes the speaker; TrackOutput of frames (re-encoded per
                         listener), and the stream is audible at its first decoded frame
    always               OggOutput (plain-HTTP listeners), RecordingOutput (when recorded),
                         MeterOutput (levels, while visualization is on)

Nothing else in the package tests the relay mode: a stream carries its strategy, and what
its outputs need to know they were told when they were made.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..audio.http_audio import HttpAudio
from ..core.config import RelaySettings
from ..core.metrics import Metrics
from ..webrtc.fanout import ChannelTrack, RelayTrack
from ..webrtc.fast_path import DirectSender, Placeholder
from ..webrtc.peer import Peer
from .outputs import Feed, MeterOutput, OggOutput, Outputs, Sending
from .sparse import SparseDecoder


@dataclass(frozen=True)
class Strategy:
    """How a stream's audio reaches its outputs, chosen once from the relay settings."""

    # transcode: aiortc decodes every packet; tracks take frames, the stream is audible at
    # its first decoded frame. Forward: nothing is decoded but one packet in N for the meter.
    decode: bool
    # forward with relay.fast_path: WebRTC listeners are sent to from the path's own call.
    fast_path: bool
    red: bool  # relay.red: fast-path listeners that negotiate RED get it
    queue: int  # relay.queue_frames: a queued output's buffer

    @classmethod
    def of(cls, relay: RelaySettings) -> Strategy:
        decode = relay.mode == "transcode"
        return cls(decode, relay.fast_path and not decode, relay.red, relay.queue_frames)

    @property
    def aiortc_decodes(self) -> bool:
        """aiortc's own receive path runs too (jitter buffer, decoder): transcode."""
        return self.decode

    @property
    def audible_at_first_packet(self) -> bool:
        """Make before break: the sender a stream takes over from stops at the new one's
        first packet, or (transcode: listeners hear decoded frames) its first frame."""
        return not self.decode

    def sparse(self, every: int | None) -> SparseDecoder | None:
        """Forward mode's decode of one packet in `every` for the meter (None: no levels
        wanted, or transcode, where aiortc decodes them all)."""
        return SparseDecoder(every) if every and not self.decode else None

    def outputs(self, metrics: Metrics) -> Outputs:
        """A new stream's outputs: its Ogg pages, listened to or not (their granules count)."""
        outputs = Outputs(metrics)
        outputs.add(OggOutput(HttpAudio(metrics)))
        return outputs

    def sending(self, peer: Peer, metrics: Metrics) -> Sending:
        """What a WebRTC listener's peer connection sends, for all the streams it plays."""
        if self.fast_path:
            peer.red = self.red  # the DirectSender writes RED where the listener accepts it
            return Sending(Placeholder(), DirectSender(peer, metrics), self._queue(metrics), "red")
        feed: Feed = "frame" if self.decode else "packet"
        return Sending(ChannelTrack(), None, self._queue(metrics), feed)

    def meter(self, metrics: Metrics, downsample: int) -> MeterOutput:
        """The level meter: one frame in `downsample` measured (forward mode decodes only
        those, path.SparseDecoder; transcode decodes every one)."""
        return MeterOutput(self._queue(metrics)(), downsample if self.decode else 1)

    def _queue(self, metrics: Metrics) -> _Queue:
        return _Queue(self.queue, metrics)


@dataclass(frozen=True)
class _Queue:
    """Makes a queued output's RelayTrack (relay.queue_frames long)."""

    capacity: int
    metrics: Metrics

    def __call__(self) -> RelayTrack:
        return RelayTrack(self.capacity, self.metrics)
