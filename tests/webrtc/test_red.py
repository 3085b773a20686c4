"""RED (RFC 2198) at the relay: what a speaker's lost packets become, and what listeners get.

Packet logic first, then a real listener that takes RED; the Wi-Fi scenarios with real
browsers and real loss are in tests/browser/test_wifi_loss.py.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from aiortc.rtp import RtpPacket

from relay_app.client import RelayClient, ToneTrack, dominant_frequency
from relay_app.core.metrics import Metrics
from relay_app.tools.testing import ServerProcess
from relay_app.webrtc.red import (
    MAX_DISTANCE,
    MAX_RED_PAYLOAD,
    WINDOW,
    Redundancy,
    Repair,
    build,
    distance_for,
    red_key,
    split,
)

OPUS, RED = 111, 63


def opus(n: int) -> bytes:
    return bytes([0xFC, n & 0xFF]) * 20  # a 40-byte "Opus packet" numbered n


def red_packet(sequence: int, distance: int = 1) -> RtpPacket:
    """What a browser sends: packet `sequence` with the `distance` packets before it (offsets
    past RED's 14 bits, from the 18th packet back, as far as they go)."""
    older = [(min(960 * back, 0x3FFF), opus(sequence - back)) for back in range(distance, 0, -1)]
    return RtpPacket(
        payload_type=RED,
        sequence_number=sequence & 0xFFFF,
        timestamp=(960 * sequence) & 0xFFFFFFFF,
        payload=build(OPUS, opus(sequence), older),
    )


def test_red_payloads_split_back_into_their_blocks() -> None:
    payload = build(OPUS, b"primary", [(1920, b"two back"), (960, b"one back")])
    blocks = split(payload)
    assert blocks is not None
    assert [(b.payload_type, b.offset, b.payload) for b in blocks] == [
        (OPUS, 1920, b"two back"),
        (OPUS, 960, b"one back"),
        (OPUS, 0, b"primary"),
    ]
    assert split(payload[:6]) is None  # a block longer than what is left: malformed
    assert split(b"") is None


def test_a_speakers_lost_packet_is_rebuilt_from_the_next_and_counted() -> None:
    metrics = Metrics()
    repair = Repair(metrics, OPUS, RED)
    out = [p for n in (1, 2, 4, 5) for p in repair(red_packet(n))]  # 3 was lost on the Wi-Fi
    assert [p.sequence_number for p in out] == [1, 2, 3, 4, 5]
    assert [p.payload for p in out] == [opus(n) for n in (1, 2, 3, 4, 5)]
    assert all(p.payload_type == OPUS for p in out)
    assert out[2].timestamp == 960 * 3
    assert (repair.lost, repair.repaired) == (1, 1)
    assert (metrics.ingress_lost, metrics.ingress_repaired) == (1, 1)
    assert repair(red_packet(3)) == []  # the original, late: already passed on


def test_a_loss_redundancy_cannot_cover_stays_a_gap_and_counts_once_given_up() -> None:
    metrics = Metrics()
    repair = Repair(metrics, OPUS, RED)
    out = [p for n in (1, 4, 5) for p in repair(red_packet(n))]  # 2 and 3 lost: 3 rebuilt
    assert [p.sequence_number for p in out] == [1, 3, 4, 5]
    assert (repair.lost, repair.repaired) == (1, 1)  # 3 so far; 2 is not given up yet
    for n in range(6, 6 + WINDOW):
        repair(red_packet(n))
    assert (repair.lost, repair.repaired) == (2, 1)


def test_plain_opus_keeps_its_numbers_across_wraparound_and_drops_duplicates() -> None:
    repair = Repair(Metrics(), OPUS)
    numbers = [0xFFFE, 0xFFFF, 0x0001, 0x0001, 0x0000]  # 0 comes late, 1 twice
    out = [
        p.sequence_number
        for n in numbers
        for p in repair(RtpPacket(payload_type=OPUS, sequence_number=n, payload=b"x"))
    ]
    assert out == [0xFFFE, 0xFFFF, 0x0001, 0x0000]
    assert repair.lost == 0
    assert repair(RtpPacket(payload_type=RED, sequence_number=2, payload=b"x")) == []


def test_a_red_packet_rebuilds_at_most_the_two_before_it_whatever_it_carries() -> None:
    """A packet 64 ahead carrying 63 "older" blocks: only the two right before it (what a
    browser sends, and all RED really reaches) can be rebuilt; one packet in, three out."""
    metrics = Metrics()
    repair = Repair(metrics, OPUS, RED)
    repair(red_packet(1))
    out = repair(red_packet(65, distance=63))
    assert [p.sequence_number for p in out] == [63, 64, 65]
    assert [p.payload for p in out] == [opus(63), opus(64), opus(65)]
    assert (repair.repaired, metrics.ingress_repaired) == (2, 2)
    assert len(out) <= 1 + MAX_DISTANCE


def test_blocks_that_are_not_the_packets_before_it_rebuild_nothing() -> None:
    repair = Repair(Metrics(), OPUS, RED)
    repair(red_packet(1))
    # A block claiming to be the packet before, but 341 ms away (or not before at all).
    for offset in (0x3FFF, 0):
        sequence = 3 if offset else 5
        packet = RtpPacket(
            payload_type=RED,
            sequence_number=sequence,
            timestamp=960 * sequence,
            payload=build(OPUS, opus(sequence), [(offset, opus(sequence - 1))]),
        )
        assert [p.sequence_number for p in repair(packet)] == [sequence]
    assert repair.repaired == 0


def test_a_packet_that_starts_a_new_run_brings_only_its_own_audio() -> None:
    """After a restart (rebase.py numbered it on from the newest), its RED blocks are of
    packets from before the restart: not this stream's, never 'repairs'."""
    repair = Repair(Metrics(), OPUS, RED)
    repair(red_packet(1))
    repair(red_packet(4))  # 2 and 3 are missing (3 rebuilt)
    out = repair(red_packet(5, distance=2), fresh=True)
    assert [p.sequence_number for p in out] == [5]
    assert repair.repaired == 1


def test_listeners_get_the_packet_before_each_or_two_as_their_own_loss_asks() -> None:
    redundancy = Redundancy()
    sent = [redundancy.next(n, 960 * n, opus(n)) for n in range(1, 4)]
    assert sent[0].older == []  # nothing before the first
    assert sent[2].older == [(1920, opus(1)), (960, opus(2))]  # what either distance takes
    one, two = red_key(OPUS, 1), red_key(OPUS, 2)
    blocks = split(sent[2].red(one))
    assert blocks is not None and [b.payload for b in blocks] == [opus(2), opus(3)]
    blocks = split(sent[2].red(two))
    assert blocks is not None and [b.payload for b in blocks] == [opus(1), opus(2), opus(3)]
    # Each listener's distance follows its own reports (fraction lost /256), with hysteresis.
    assert distance_for(26, 1) == 2  # 10 % lost
    assert distance_for(8, 2) == 2 and distance_for(8, 1) == 1  # between the thresholds
    assert distance_for(0, 2) == 1
    # After a gap there is nothing right before it to repeat.
    redundancy.next(4, 960 * 4, opus(4))
    assert redundancy.next(7, 960 * 7, opus(7)).older == []
    # Never past the packet size bound.
    big = bytes(MAX_RED_PAYLOAD - 100)
    redundancy.next(8, 960 * 8, big)
    assert redundancy.next(9, 960 * 9, big).older == []


def test_red_is_built_once_per_opus_payload_type_and_distance_for_the_whole_fanout() -> None:
    redundancy = Redundancy()
    redundancy.next(1, 960, opus(1))
    packet = redundancy.next(2, 1920, opus(2))
    first = packet.red(red_key(OPUS, 1))
    assert packet.red(red_key(OPUS, 1)) is first  # the second listener gets the same bytes
    other = packet.red(red_key(96, 1))  # a listener whose Opus is 96 (aiortc's offers)
    assert other[0] == 0x80 | 96 and first[0] == 0x80 | OPUS


@pytest.mark.anyio
async def test_a_listener_that_takes_red_gets_each_packet_twice_and_hears_the_tone(
    make_forward_server: Callable[..., ServerProcess],
) -> None:
    server = make_forward_server()
    async with RelayClient.connect(server.ws_url) as sender:
        await sender.start_sending(ToneTrack(440))
        async with RelayClient.connect(server.ws_url) as listener:
            listener.red = True
            await listener.start_receiving()
            await listener.wait_audio(1.5)
            audio = listener.recorder.audio(1.0)
            assert abs(dominant_frequency(audio, listener.recorder.sample_rate) - 440) <= 10
            relay = server.metrics()["relay"]
    # What went out per packet carries the packet before it: about twice what came in.
    ratio = (relay["bytes_out"] / relay["packets_out"]) / (relay["bytes_in"] / relay["packets_in"])
    assert 1.5 < ratio < 2.3, relay  # (packets_in counts from before the listener joined)
