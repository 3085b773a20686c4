"""Ogg/Opus pages from Opus packets as they arrive (RFC 3533 framing, RFC 7845 mapping).

No I/O and no re-encode: `OggOpusMuxer` turns a sender's Opus packets into pages, which the
HTTP listeners of a stream share (http_audio.py) and recordings write to disk.

Page boundaries: a page holds `packets_per_page` packets (5 = 100 ms of 20 ms packets), so a
listener gets audio every 100 ms at 28 bytes of page header per page; `flush()` closes a short
page, `end()` the last one (end-of-stream flag). The muxer's granule positions count 48 kHz
samples from the stream's first packet, summed from each packet's TOC, so they match the audio
exactly (a recording's file starts at its first packet).

Every listener's logical stream starts as a file would: the two header pages are 0 and 1
(`headers()`), and a listener joining late has the shared audio pages renumbered from 2 and
their granule positions moved back so that its own first audio page holds just that page's
samples (`renumber`, `page_samples`, http_audio.own_page). Players take a stream's
timestamps at their word: libogg-based ones such as VLC find no stream in one that starts at
page 386, and VLC counts its play time (`--run-time`, `--stop-time`, the position it shows)
from granule 0, so a listener 40 s late whose first page said 40 s was "over" at once.
"""

from __future__ import annotations

import struct
import zlib

OPUS_RATE = 48000
VENDOR = b"relay_app"


# Ogg's CRC is zlib's CRC-32 unreflected, without its initial value and final xor: zlib's run
# over the bytes bit-reversed, its all-ones start taken out (a CRC is linear: its effect is the
# CRC of as many zero bytes), the result bit-reversed. C speed: every late listener's pages are
# checksummed again (~1.5 us for a 700-byte page; a table in Python took ~70).
_REVERSED = bytes(int(f"{byte:08b}"[::-1], 2) for byte in range(256))


def ogg_crc(data: bytes) -> int:
    """Ogg's CRC-32 (polynomial 0x04c11db7, not reflected, no initial value, no final xor)."""
    raw = zlib.crc32(data.translate(_REVERSED)) ^ zlib.crc32(bytes(len(data)))
    return int(f"{raw:032b}"[::-1], 2)


# Frame length in 48 kHz samples by the TOC's configuration number (RFC 6716 section 3.1).
_FRAME_SAMPLES = (
    [480, 960, 1920, 2880] * 3  # SILK-only: 10, 20, 40, 60 ms
    + [480, 960] * 2  # hybrid: 10, 20 ms
    + [120, 240, 480, 960] * 4  # CELT-only: 2.5, 5, 10, 20 ms
)


def opus_samples(packet: bytes) -> int:
    """Samples (at 48 kHz) an Opus packet decodes to; 0 for an empty or malformed one."""
    if not packet:
        return 0
    toc = packet[0]
    code = toc & 0x03
    if code == 0:
        frames = 1
    elif code in (1, 2):
        frames = 2
    elif len(packet) >= 2:
        frames = packet[1] & 0x3F
    else:
        return 0
    return frames * _FRAME_SAMPLES[toc >> 3]


def page(
    payload_packets: list[bytes],
    granule: int,
    serial: int,
    sequence: int,
    *,
    first: bool = False,
    last: bool = False,
) -> bytes:
    """One Ogg page holding whole packets (each under 255 * 255 bytes, as Opus packets are)."""
    lacing = bytearray()
    for packet in payload_packets:
        lacing += b"\xff" * (len(packet) // 255) + bytes([len(packet) % 255])
    flags = (0x02 if first else 0) | (0x04 if last else 0)
    header = struct.pack("<4sBBqIIIB", b"OggS", 0, flags, granule, serial, sequence, 0, len(lacing))
    data = bytearray(header + lacing + b"".join(payload_packets))
    struct.pack_into("<I", data, 22, ogg_crc(bytes(data)))
    return bytes(data)


def renumber(
    data: bytes, sequence: int, granule_offset: int = 0, serial: int | None = None
) -> bytes:
    """The same page with another page sequence number, its granule position moved by
    `granule_offset` (and so another CRC); for a channel listener's one logical stream across
    senders also another serial number and no end-of-stream flag (the next sender goes on in
    the same stream)."""
    copy = bytearray(data)
    granule = struct.unpack_from("<q", copy, 6)[0]
    if granule != -1:  # (-1: no packet ends on this page; never so for whole packets)
        struct.pack_into("<q", copy, 6, granule + granule_offset)
    if serial is not None:
        copy[5] &= ~0x04 & 0xFF
        struct.pack_into("<I", copy, 14, serial)
    struct.pack_into("<II", copy, 18, sequence, 0)
    struct.pack_into("<I", copy, 22, ogg_crc(bytes(copy)))
    return bytes(copy)


def page_samples(data: bytes) -> int:
    """Samples (at 48 kHz) of the whole Opus packets on a page: how far its granule position
    is past the one before it."""
    segments = data[26]
    offset, size, total = 27 + segments, 0, 0
    for lacing in data[27 : 27 + segments]:
        size += lacing
        if lacing < 255:  # a packet ends here
            total += opus_samples(data[offset : offset + size])
            offset, size = offset + size, 0
    return total


def page_granule(data: bytes) -> int:
    return int(struct.unpack_from("<q", data, 6)[0])


def page_sequence(data: bytes) -> int:
    return int(struct.unpack_from("<I", data, 18)[0])


def opus_head(channels: int, pre_skip: int = 0) -> bytes:
    return struct.pack("<8sBBHIhB", b"OpusHead", 1, channels, pre_skip, OPUS_RATE, 0, 0)


def opus_tags() -> bytes:
    return b"OpusTags" + struct.pack("<I", len(VENDOR)) + VENDOR + struct.pack("<I", 0)


class OggOpusMuxer:
    """Pages for one stream: the headers for whoever joins, and audio pages as packets come."""

    def __init__(self, serial: int, channels: int = 2, packets_per_page: int = 5) -> None:
        self.serial = serial
        self.channels = channels
        self.packets_per_page = packets_per_page
        self.granule = 0  # samples in every packet handed to add() so far
        self._pending: list[bytes] = []
        self._sequence = 2  # 0 and 1 are the header pages of a listener there from the start

    def headers(self) -> bytes:
        """OpusHead and OpusTags pages: pages 0 and 1 of every listener's logical stream
        (players built on libogg, VLC among them, find no stream in one that starts later;
        a late listener's pages are renumbered from 2 and its granules start again from 0:
        `renumber`)."""
        head = page([opus_head(self.channels)], 0, self.serial, 0, first=True)
        return head + page([opus_tags()], 0, self.serial, 1)

    @property
    def next_sequence(self) -> int:
        """The sequence number the next audio page gets."""
        return self._sequence

    def add(self, packet: bytes) -> bytes | None:
        """Take one packet; return a page when one is full."""
        self.granule += opus_samples(packet)
        self._pending.append(packet)
        if len(self._pending) >= self.packets_per_page:
            return self.flush()
        return None

    def skip(self, packet: bytes) -> None:
        """A packet nobody listens to: its samples count, no page is built."""
        self.granule += opus_samples(packet)
        self._pending = []

    def flush(self, last: bool = False) -> bytes | None:
        if not self._pending and not last:
            return None
        data = page(self._pending, self.granule, self.serial, self._sequence, last=last)
        self._pending = []
        self._sequence += 1
        return data

    def end(self) -> bytes:
        """The last page (end-of-stream flag), holding whatever packets were pending."""
        data = self.flush(last=True)
        assert data is not None
        return data
