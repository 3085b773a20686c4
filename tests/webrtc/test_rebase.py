"""rebase.py: a speaker's sequence numbers and timestamps onto one plausible line.

The scenarios with real speakers and listeners are in
tests/scenarios/test_hardening_round4_media.py; here the rules, packet by packet.
"""

from __future__ import annotations

import random

import pylibsrtp
from aiortc.rtp import RtpPacket

from relay_app.webrtc.rebase import LATE, MAX_GAP, Rebase, continuing
from relay_app.webrtc.red import WINDOW

FRAME = 960
M16, M32 = 0xFFFF, 0xFFFFFFFF


class Speaker:
    """A speaker's packets, 20 ms apart, whose numbers the test moves at will."""

    def __init__(self, sequence: int = 1000, timestamp: int = 5000, ssrc: int = 1) -> None:
        self.sequence, self.timestamp, self.ssrc = sequence, timestamp, ssrc
        self.at = 100.0

    def next(self, sequence: int = 1, timestamp: int = FRAME) -> tuple[RtpPacket, float]:
        """The next packet: numbers moved on by these steps, 20 ms later."""
        self.sequence = (self.sequence + sequence) & M16
        self.timestamp = (self.timestamp + timestamp) & M32
        self.at += 0.02
        packet = RtpPacket(
            sequence_number=self.sequence, timestamp=self.timestamp, ssrc=self.ssrc, payload=b"x"
        )
        return packet, self.at


def numbers(rebase: Rebase, packet: RtpPacket, at: float) -> tuple[int, int, bool]:
    fresh = rebase(packet, at)
    return packet.sequence_number, packet.timestamp, fresh


def test_in_order_packets_keep_their_numbers_across_both_wraps() -> None:
    speaker, rebase = Speaker(sequence=M16 - 3, timestamp=M32 + 1 - 2 * FRAME), Rebase()
    first = speaker.next()
    assert numbers(rebase, *first) == (M16 - 2, M32 + 1 - FRAME, True)  # its own numbers
    out = [numbers(rebase, *speaker.next()) for _ in range(5)]
    assert [sequence for sequence, _, _ in out] == [M16 - 1, M16, 0, 1, 2]
    assert [timestamp for _, timestamp, _ in out] == [0, 960, 1920, 2880, 3840]
    assert not any(fresh for *_, fresh in out) and rebase.restarts == 0


def test_loss_stays_a_gap_and_a_late_packet_keeps_its_place() -> None:
    speaker, rebase = Speaker(), Rebase()
    rebase(*speaker.next())
    gap = speaker.next(sequence=MAX_GAP, timestamp=MAX_GAP * FRAME)  # a second lost
    assert numbers(rebase, *gap) == (speaker.sequence, speaker.timestamp, False)
    late = RtpPacket(
        sequence_number=speaker.sequence - 3,
        timestamp=speaker.timestamp - 3 * FRAME,
        ssrc=1,
    )
    assert numbers(rebase, late, speaker.at) == (speaker.sequence - 3, late.timestamp, False)
    assert rebase.restarts == 0


def test_a_jump_either_way_is_a_restart_numbered_on_by_one_after_the_time_that_passed() -> None:
    for jump in (40000, -40000, MAX_GAP + 1, -LATE, 0x8000):
        speaker, rebase = Speaker(), Rebase()
        for _ in range(3):
            newest = numbers(rebase, *speaker.next())
        packet, at = speaker.next(sequence=jump, timestamp=random.getrandbits(32))
        sequence, timestamp, fresh = numbers(rebase, packet, at)
        assert fresh, jump
        assert (sequence - newest[0]) & M16 == 1, jump
        assert (timestamp - newest[1]) & M32 == FRAME, jump  # 20 ms later
        # ... and the packets after it go on from there.
        assert numbers(rebase, *speaker.next())[:2] == (sequence + 1, timestamp + FRAME)
        assert rebase.restarts == 1


def test_a_restart_after_a_pause_moves_the_timestamp_on_by_the_pause() -> None:
    speaker, rebase = Speaker(), Rebase()
    _, newest, _ = numbers(rebase, *speaker.next())
    speaker.at += 5.0  # the speaker's client restarts, 5 s later, from new random numbers
    packet, at = speaker.next(sequence=20000, timestamp=123456789)
    assert numbers(rebase, packet, at)[1] == (newest + round(5.02 * 48000)) & M32


def test_a_new_ssrc_is_a_restart_even_where_its_numbers_would_fit() -> None:
    speaker, rebase = Speaker(), Rebase()
    newest = numbers(rebase, *speaker.next())
    speaker.ssrc = 2
    packet, at = speaker.next(sequence=-5)
    assert numbers(rebase, packet, at) == ((newest[0] + 1) & M16, newest[1] + FRAME, True)


def test_timestamps_that_race_or_go_back_are_moved_to_plausible_ones() -> None:
    speaker, rebase = Speaker(), Rebase()
    _, previous, _ = numbers(rebase, *speaker.next())
    # 2**31 - 1 further per packet (each would make a sender report due), then 2**30 back.
    for step in [2**31 - 1] * 5 + [-(2**30)]:
        _, timestamp, fresh = numbers(rebase, *speaker.next(timestamp=step))
        assert not fresh and (timestamp - previous) & M32 == FRAME
        previous = timestamp
    # A late packet whose timestamp is ahead of the newest: placed its frames behind it.
    ahead = (speaker.timestamp + 5 * FRAME) & M32
    late = RtpPacket(sequence_number=speaker.sequence - 2, timestamp=ahead, ssrc=1)
    assert numbers(rebase, late, speaker.at)[1] == (previous - 2 * FRAME) & M32
    # Plausible steps are kept as they come: a lost packet, a 400 ms pause (Opus DTX).
    for steps in ((2, 2 * FRAME), (1, 20 * FRAME)):
        packet, at = speaker.next(*steps)
        if steps[1] > FRAME:
            at = speaker.at = at + 0.38
        expected = (timestamp + steps[1]) & M32
        assert numbers(rebase, packet, at)[1] == expected
        timestamp = expected
    assert rebase.restarts == 0


def test_what_listeners_get_never_trips_their_srtp_whatever_the_speaker_does() -> None:
    """The relay's SRTP and a listener's (libsrtp both): every packet protects and unprotects,
    across jumps that, passed on as they came, made half the listeners refuse everything."""
    key = bytes(range(30))
    tx = pylibsrtp.Session(pylibsrtp.Policy(key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
    rx = pylibsrtp.Session(pylibsrtp.Policy(key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND))
    speaker, rebase = Speaker(sequence=100), Rebase()
    offset = 40000  # the listener's own (an index past 32,768: where +40,000 was refused)
    for jump in [1] * 10 + [40000] + [1] * 10 + [-40000] + [1] * 10 + [32000, 32000] + [1] * 30:
        packet, at = speaker.next(sequence=jump)
        rebase(packet, at)
        header = bytearray(b"\x80\x6f" + bytes(10))
        header[2:4] = ((packet.sequence_number + offset) & M16).to_bytes(2, "big")
        assert rx.unprotect(tx.protect(bytes(header) + b"audio")) == header + b"audio"
    assert rebase.restarts == 4


def test_a_listeners_numbers_go_on_from_its_last_one() -> None:
    assert continuing(M16, 5) == (M16 + 1 - 5) & M16
    assert (5 + continuing(41000, 5)) & M16 == 41001
    assert LATE == WINDOW  # late packets are those red.Repair can still place
