"""Redundant audio (RFC 2198 "RED") for Opus, and the speaker's sequence numbers kept honest.

On Wi-Fi a few percent of packets simply vanish, and every lost 20 ms packet is a click the
listener's decoder must paper over. RED carries the previous one or two Opus packets again
inside each packet, so a lost packet is rebuilt from the next one that arrives. Two halves:

- `Repair`, per speaker: its packets in (RED or plain Opus), plain Opus packets out, in order
  of arrival, with lost primaries rebuilt from the redundancy *before* the fan-out, so every
  consumer (aiortc clients, Ogg listeners, recordings, transcode, other nodes) hears the
  repaired stream; duplicates are dropped and what stays lost is counted.
- `Redundancy`, per stream: RED for the listeners that negotiated it, built from the relay's
  own short history once per packet (and per distance listeners use) for the whole fan-out,
  whatever the speaker sent. Each listener gets the distance its own loss reports ask for.

Sequence numbers are the stream's, the speaker's rebased (rebase.py: a jump is a restart, not
loss), and each listener adds its own offset: a packet that is lost and cannot be rebuilt
stays a gap, so a listener's jitter buffer knows it is missing (and can use the Opus in-band
FEC of the next packet) and its loss statistics see it.

Redundancy is taken for what it can be, not for what a packet says: a browser sends the one
or two packets before each (distance 1-2), so only the MAX_DISTANCE blocks right before the
primary can rebuild anything, and only packets that really never came. One packet in is at
most 1 + MAX_DISTANCE out, whatever it carries.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from aiortc.rtp import RtpPacket

from ..core.metrics import Metrics
from .rebase import MAX_FRAME

MAX_OFFSET = 0x3FFF  # a redundant block's timestamp offset: 14 bits (RFC 2198)
MAX_BLOCK = 0x3FF  # a redundant block's length: 10 bits
MAX_RED_PAYLOAD = 1000  # bytes: RED never grows a packet past what fits one datagram easily
WINDOW = 64  # sequence numbers remembered (~1.3 s of 20 ms packets) to spot duplicates and loss
RESTART = 3000  # a jump this far is a new sequence, not loss (where nothing rebased it first)
MAX_DISTANCE = 2  # packets back a RED block can rebuild, and listeners get (browsers send 1-2)
HIGH_LOSS = 13  # /256, ~5 %: a listener reporting more gets two packets of redundancy
LOW_LOSS = 5  # /256, ~2 %: back to one below this (hysteresis, reports are noisy)


@dataclass(frozen=True, slots=True)
class Block:
    payload_type: int
    offset: int  # RTP timestamp units before the packet's own (0: the primary)
    payload: bytes


def split(payload: bytes) -> list[Block] | None:
    """The blocks of a RED payload, oldest first and the primary last; None if malformed."""
    headers: list[tuple[int, int, int]] = []
    at, size = 0, len(payload)
    while True:
        if at >= size:
            return None
        first = payload[at]
        if not first & 0x80:  # the last header: the primary's payload type only
            at += 1
            break
        if at + 4 > size:
            return None
        offset = (payload[at + 1] << 6) | (payload[at + 2] >> 2)
        length = ((payload[at + 2] & 0x03) << 8) | payload[at + 3]
        headers.append((first & 0x7F, offset, length))
        at += 4
    blocks = []
    for payload_type, offset, length in headers:
        if at + length > size:
            return None
        blocks.append(Block(payload_type, offset, payload[at : at + length]))
        at += length
    blocks.append(Block(first & 0x7F, 0, payload[at:]))
    return blocks


def build(payload_type: int, primary: bytes, older: list[tuple[int, bytes]]) -> bytes:
    """A RED payload: `older` (timestamp offset, Opus payload), oldest first, then `primary`."""
    header, data = bytearray(), bytearray()
    for offset, block in older:
        length = len(block)
        header += bytes(
            (
                0x80 | payload_type,
                offset >> 6,
                ((offset & 0x3F) << 2) | (length >> 8),
                length & 0xFF,
            )
        )
        data += block
    header.append(payload_type)
    return bytes(header + data) + primary


class Repair:
    """A speaker's RTP packets in, its Opus packets out: RED unwrapped, lost packets rebuilt
    from the redundancy of the next, duplicates (a rebuilt packet arriving late) dropped.

    `lost` counts the speaker's packets that never arrived; `repaired` those of them rebuilt.
    A packet is given up as lost when it leaves the window (~1.3 s) without having come.
    Only the MAX_DISTANCE blocks before a packet's own can rebuild one, each only where its
    timestamp offset fits that distance: a packet is never more than 1 + MAX_DISTANCE out.
    """

    def __init__(self, metrics: Metrics, opus: int, red: int | None = None) -> None:
        self._metrics = metrics
        self._opus = opus
        self._red = red
        self._highest: int | None = None  # the newest sequence number passed on
        self._seen = 0  # bit k: `_highest - k` was passed on
        self.lost = 0
        self.repaired = 0

    def __call__(self, rtp: RtpPacket, fresh: bool = False) -> list[RtpPacket]:
        """The Opus packets `rtp` brings: its own, after those of the packets right before it
        that never came, rebuilt from its RED blocks. `fresh`: it starts a new run of numbers
        (rebase.py), so what its blocks carry is not this stream's."""
        if rtp.payload_type == self._opus:
            return [rtp] if self._passes(rtp.sequence_number) else []
        if rtp.payload_type != self._red or self._red is None:
            self._metrics.count_drop("not_opus")
            return []
        blocks = split(rtp.payload)
        if blocks is None:
            self._metrics.count_drop("malformed_red")
            return []
        # What came before the first packet (or a restart) is not ours; further back than
        # MAX_DISTANCE nothing is really within RED's reach.
        reach = 0 if self._highest is None or fresh else MAX_DISTANCE
        out = []
        for back in range(min(reach, len(blocks) - 1), -1, -1):
            block = blocks[-1 - back]
            if block.payload_type != self._opus or not block.payload:
                continue
            if back and not 0 < block.offset <= back * MAX_FRAME:
                continue  # not the packet `back` before this one
            sequence = (rtp.sequence_number - back) & 0xFFFF
            if not self._passes(sequence):
                continue
            if back:
                self.repaired += 1
                self.lost += 1
                self._metrics.ingress_repaired += 1
                self._metrics.ingress_lost += 1
            out.append(
                RtpPacket(
                    payload_type=self._opus,
                    marker=0 if back else rtp.marker,
                    sequence_number=sequence,
                    timestamp=(rtp.timestamp - block.offset) & 0xFFFFFFFF,
                    ssrc=rtp.ssrc,
                    payload=block.payload,
                )
            )
        return out

    def _passes(self, sequence: int) -> bool:
        """Whether `sequence` is new (and remember it); counts what falls out of the window."""
        highest = self._highest
        if highest is None:
            self._highest, self._seen = sequence, (1 << WINDOW) - 1  # nothing missing before
            return True
        ahead = (sequence - highest) & 0xFFFF
        if ahead == 0:
            return False
        if ahead < 0x8000:  # newer
            if ahead > RESTART:
                self._highest, self._seen = sequence, (1 << WINDOW) - 1
                return True
            if ahead >= WINDOW:
                gone = WINDOW - self._seen.bit_count() + ahead - WINDOW
                self._seen = 1
            else:
                gone = ahead - (self._seen >> (WINDOW - ahead)).bit_count()
                self._seen = ((self._seen << ahead) | 1) & ((1 << WINDOW) - 1)
            self._highest = sequence
            if gone:
                self.lost += gone
                self._metrics.ingress_lost += gone
            return True
        behind = 0x10000 - ahead
        if behind > RESTART:
            self._highest, self._seen = sequence, (1 << WINDOW) - 1
            return True
        if behind >= WINDOW or self._seen >> behind & 1:
            return False  # too late to matter, or already passed on
        self._seen |= 1 << behind
        return True


def red_key(opus: int, distance: int) -> int:
    """What a listener asks `Outgoing.red` for: RED whose blocks name Opus as `opus` (a
    payload type, 7 bits), with up to `distance` (1..MAX_DISTANCE) packets before each."""
    return distance << 7 | opus


def distance_for(loss: int, distance: int) -> int:
    """A listener's redundancy after it reported `loss` (RTCP fraction lost, /256): two
    packets above ~5 %, one below ~2 %, and between them what it had (reports are noisy)."""
    if loss > HIGH_LOSS:
        return 2
    if loss < LOW_LOSS:
        return 1
    return distance


@dataclass(slots=True)
class Outgoing:
    """One packet for the whole fan-out: its Opus payload, the packets right before it (up to
    MAX_DISTANCE, oldest first), and RED built once per kind its listeners take: per Opus
    payload type (a RED block names it) and per distance (each listener's own)."""

    sequence: int
    pts: int
    arrival: float  # when it reached the relay (time.monotonic())
    payload: bytes
    older: list[tuple[int, bytes]]
    _red: dict[int, bytes]

    def red(self, key: int) -> bytes:
        """The RED payload for `key` (`red_key(opus, distance)`)."""
        red = self._red.get(key)
        if red is None:
            older = self.older[-(key >> 7) :]
            red = self._red[key] = build(key & 0x7F, self.payload, older)
        return red


class Redundancy:
    """Each packet with the ones before it, for RED listeners: up to MAX_DISTANCE of them (a
    listener takes one, or two while it reports heavy loss: `distance_for`), only a run that
    ends right before it, and never past MAX_RED_PAYLOAD."""

    def __init__(self) -> None:
        self._history: deque[tuple[int, int, bytes]] = deque(maxlen=MAX_DISTANCE)

    def next(self, sequence: int, pts: int, payload: bytes, arrival: float = 0.0) -> Outgoing:
        older: list[tuple[int, bytes]] = []
        history = self._history
        if history and (sequence - history[-1][0]) & 0xFFFF == 1:
            budget = MAX_RED_PAYLOAD - len(payload) - 1
            for back in range(1, len(history) + 1):
                seq, past, block = history[-back]
                offset = pts - past
                if (sequence - seq) & 0xFFFF != back or not 0 < offset <= MAX_OFFSET:
                    break
                budget -= len(block) + 4
                if len(block) > MAX_BLOCK or budget < 0:
                    break
                older.insert(0, (offset, block))
            history.append((sequence, pts, payload))
        elif not history or 0 < (sequence - history[-1][0]) & 0xFFFF < 0x8000:
            history.append((sequence, pts, payload))  # after a gap: a new run starts
        return Outgoing(sequence, pts, arrival, payload, older, {})
