"""A speaker's RTP numbers rebased onto one line of the relay's own before anything uses them.

Why: what a listener receives is numbered from the speaker's numbers (each listener adds its
own sequence offset and timestamp origin, fast_path.py), so whatever the speaker's numbers do,
every listener's do too. And a speaker chooses its numbers. One forward jump of 40,000 and
the relay's own SRTP refuses every copy for ~25,000 packets: libsrtp estimates a packet's
index from the nearest one, so past 32,768 a step of 40,000 looks like 25,536 back, "index
too old". Timestamps that run 2**31 per packet made a sender report due at every copy. An SFU
does not forward a sender's numbers on faith: Janus's RTP switching context numbers on from
its last packet when the source changes, timestamps moved on by the time that passed; LiveKit's
sequence munger keeps each down track's numbers its own. Here, likewise:

- A step forward of at most MAX_GAP sequence numbers is the speaker's: the packets between
  were lost, and stay a gap that listeners (their jitter buffers, their loss statistics) and
  red.Repair's loss count see. A step back of less than LATE is a late packet (red.Repair
  passes it on while its place is still free). Anything else, or a new SSRC, is a restart:
  the packet is numbered right after the newest, like the next speaker after a handover.
- A timestamp moves on with its sequence number: forward, by no more than the time that passed
  plus MAX_FRAME per sequence number (the longest Opus packet is 120 ms); a late packet's,
  back by no more than MAX_FRAME per sequence number. Any other (and one at a restart) is
  moved to a plausible one: the newest's plus the time that passed (at least a 20 ms frame per
  sequence number), or for a late packet the newest's minus its frames.

One `Rebase` per speaker (and per upstream from another node), called once per arriving packet
before its repair (plane/path.py): it rewrites the packet's sequence number and timestamp in
place, and everything after it uses those (red.Repair and its counts, the channel's timeline,
the fast path and its RED, the aiortc path). A few integer operations per packet per stream;
per listener copy only the listener's own offset is added, and `continuing` gives that offset
where a listener's numbers go on from another run (its first packet, a channel's handover).
"""

from __future__ import annotations

from aiortc.rtp import RtpPacket

from .rtp_tap import OPUS_CLOCK_RATE, OPUS_FRAME_SAMPLES

MAX_GAP = 50  # sequence numbers: a step forward up to this (1 s of 20 ms packets) is loss
LATE = 64  # a step back of less than this is a late packet (red.WINDOW: what Repair places)
MAX_FRAME = 6 * OPUS_FRAME_SAMPLES  # 120 ms: the most audio one Opus packet carries
_M16, _M32 = 0xFFFF, 0xFFFFFFFF


def continuing(last: int, first: int) -> int:
    """The offset (mod 2**16) that numbers a run whose first packet is `first` right after
    `last`: added to that run's sequence numbers, they go on by one from `last`."""
    return (last + 1 - first) & _M16


class Rebase:
    """A speaker's packets' sequence numbers and timestamps onto one plausible line (see the
    module's docstring): `__call__` rewrites each packet in place, once, as it arrives."""

    def __init__(self) -> None:
        self._ssrc: int | None = None
        self._sequence = 0  # the newest packet's sequence number and timestamp, as it came
        self._timestamp = 0
        self._at = 0.0  # and when it came (time.monotonic())
        self._sequence_offset = 0  # added to what comes (mod 2**16, 2**32)
        self._timestamp_offset = 0
        self.restarts = 0

    def __call__(self, rtp: RtpPacket, arrival: float) -> bool:
        """Rebase `rtp` (arrived at `arrival`); True when it starts a new run: what came
        before it in its RED blocks is not this stream's."""
        sequence, timestamp = rtp.sequence_number, rtp.timestamp
        newest = self._sequence
        ahead = (sequence - newest) & _M16
        if rtp.ssrc != self._ssrc:
            self._restart(sequence, timestamp, arrival, rtp.ssrc)
            fresh = True
        elif 0 < ahead <= MAX_GAP:  # newer: the packets between it and the newest were lost
            elapsed = (arrival - self._at) * OPUS_CLOCK_RATE
            if not 0 < (timestamp - self._timestamp) & _M32 <= elapsed + ahead * MAX_FRAME:
                moved = max(ahead * OPUS_FRAME_SAMPLES, round(elapsed))
                self._timestamp_offset = (
                    self._timestamp + self._timestamp_offset + moved - timestamp
                ) & _M32
            self._sequence, self._timestamp, self._at = sequence, timestamp, arrival
            fresh = False
        elif (behind := (newest - sequence) & _M16) < LATE:  # late (or a duplicate)
            rtp.sequence_number = (sequence + self._sequence_offset) & _M16
            if (self._timestamp - timestamp) & _M32 <= behind * MAX_FRAME:
                rtp.timestamp = (timestamp + self._timestamp_offset) & _M32
            else:
                newest = self._timestamp + self._timestamp_offset
                rtp.timestamp = (newest - behind * OPUS_FRAME_SAMPLES) & _M32
            return False
        else:
            self._restart(sequence, timestamp, arrival, rtp.ssrc)
            fresh = True
        rtp.sequence_number = (sequence + self._sequence_offset) & _M16
        rtp.timestamp = (timestamp + self._timestamp_offset) & _M32
        return fresh

    def _restart(self, sequence: int, timestamp: int, arrival: float, ssrc: int) -> None:
        """A new run from this packet on: numbered on by one from the newest, its timestamp
        on by the time that passed (the speaker's first packet keeps its own numbers)."""
        if self._ssrc is not None:
            newest = self._sequence + self._sequence_offset
            self._sequence_offset = continuing(newest, sequence)
            elapsed = round((arrival - self._at) * OPUS_CLOCK_RATE)
            moved = max(OPUS_FRAME_SAMPLES, elapsed)
            newest = self._timestamp + self._timestamp_offset
            self._timestamp_offset = (newest + moved - timestamp) & _M32
            self.restarts += 1
        self._ssrc = ssrc
        self._sequence, self._timestamp, self._at = sequence, timestamp, arrival
