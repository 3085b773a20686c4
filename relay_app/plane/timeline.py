"""A channel's one timeline: where each of its senders' audio sits, in 48 kHz samples.

Every output reads its timestamps from here: the fast path's and aiortc's RTP timestamps
(each listener adds its own origin), the pts of decoded frames, and the granule positions of
Ogg pages (audio/http_audio.ChannelPages). A listener that stays on across a handover sees a
pause that lasted as long as it really did, in one stream, whatever kind of listener it is;
before, Ogg pages measured the pause with a clock of their own when the next sender
registered, and the other outputs at its first packet.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..webrtc.rtp_tap import OPUS_CLOCK_RATE, OPUS_FRAME_SAMPLES


@dataclass
class ChannelClock:
    """A channel's timeline across its senders (`pts`: the newest packet's, `at`: when it
    arrived, time.monotonic()), so the next sender's audio continues it with the real gap.
    The registry keeps one per channel (registry.clock); an unnamed stream has its own."""

    pts: int = 0
    at: float | None = None

    def continued(self, arrival: float) -> int:
        """Where a new sender's first packet, arriving at `arrival`, sits on the timeline:
        after the newest packet by the time that passed (at least one frame)."""
        if self.at is None:
            return 0
        return self.pts + max(OPUS_FRAME_SAMPLES, round((arrival - self.at) * OPUS_CLOCK_RATE))
