"""ogg.py: pages FFmpeg decodes, granules that match the audio, headers for late joiners and
their pages renumbered to start as a file does."""

from __future__ import annotations

import fractions
import io
import os
import struct

import av
import numpy as np

from relay_app.audio.ogg import (
    OggOpusMuxer,
    ogg_crc,
    opus_samples,
    page,
    page_granule,
    page_samples,
    page_sequence,
    renumber,
)
from relay_app.client import dominant_frequency


def opus_tone(hz: float, packets: int) -> list[bytes]:
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate, encoder.layout, encoder.format = 48000, "mono", "s16"
    encoder.time_base = fractions.Fraction(1, 48000)
    out: list[bytes] = []
    for index in range(packets):
        t = np.arange(960) + index * 960
        samples = (np.sin(2 * np.pi * hz * t / 48000) * 10000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 48000, index * 960
        out += [bytes(packet) for packet in encoder.encode(frame)]
    return out


def bitwise_ogg_crc(data: bytes) -> int:
    """RFC 3533's CRC as its text defines it, one bit at a time."""
    crc = 0
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7 if crc & 0x80000000 else crc << 1) & 0xFFFFFFFF
    return crc


def test_ogg_crc_is_the_ogg_polynomial_not_zlibs() -> None:
    assert ogg_crc(b"") == 0
    assert ogg_crc(b"OggS") == 0x5FB0A94F
    for size in (1, 3, 27, 255, 732, 4096):
        data = os.urandom(size)
        assert ogg_crc(data) == bitwise_ogg_crc(data), size


def test_opus_samples_reads_the_toc() -> None:
    assert opus_samples(bytes([0xFC, 0x00])) == 960  # CELT 20 ms, one frame
    assert opus_samples(bytes([9 << 3 | 1])) == 2 * 960  # SILK wideband 20 ms, two frames
    assert opus_samples(bytes([(16 << 3) | 3, 4])) == 4 * 120  # CELT 2.5 ms x 4
    assert opus_samples(b"") == 0


def test_a_late_joiner_decodes_from_its_first_page_at_the_right_time() -> None:
    packets = opus_tone(440, 150)
    muxer = OggOpusMuxer(serial=7)
    for packet in packets[:50]:  # before the listener arrives
        muxer.skip(packet)
    ogg = bytearray(muxer.headers())
    for packet in packets[50:]:
        ogg += muxer.add(packet) or b""
    ogg += muxer.end()
    with av.open(io.BytesIO(bytes(ogg)), format="ogg") as container:
        stream = container.streams.audio[0]
        audio = np.concatenate([f.to_ndarray()[0] for f in container.decode(stream)])
        assert stream.start_time == 50 * 960  # it starts one second into the stream
    assert abs(len(audio) / 48000 - 2.0) < 0.03
    assert abs(dominant_frequency(audio.astype(np.float32), 48000) - 440) <= 5


def test_page_samples_counts_each_whole_packet_on_a_page() -> None:
    celt_20ms, silk_40ms_x2 = bytes([0xFC]) + bytes(300), bytes([(2 << 3) | 1, 0, 0])
    assert page_samples(page([celt_20ms, silk_40ms_x2, celt_20ms], 0, 1, 2)) == 960 + 3840 + 960
    assert page_samples(page([], 0, 1, 2)) == 0


def test_a_late_listeners_pages_renumbered_start_at_page_2_and_granule_0() -> None:
    """What http_audio.own_page does for a listener 40 s late: FFmpeg then reads a stream that
    starts at 0, not 40 s in (players count their play time from there: VLC's --run-time)."""
    packets = opus_tone(440, 2100)
    muxer = OggOpusMuxer(serial=7)
    for packet in packets[:2000]:  # before the listener arrives
        muxer.skip(packet)
    ogg, offset = bytearray(muxer.headers()), None
    for packet in packets[2000:]:
        data = muxer.add(packet)
        if data is not None:
            assert page_granule(data) >= 2000 * 960  # the stream's own count
            if offset is None:
                offset, first = page_samples(data) - page_granule(data), page_sequence(data)
            copy = renumber(data, page_sequence(data) - first + 2, offset)
            crc = struct.unpack_from("<I", copy, 22)[0]
            assert ogg_crc(copy[:22] + bytes(4) + copy[26:]) == crc
            if page_sequence(copy) == 2:
                assert page_granule(copy) == 5 * 960  # its own 5 packets, from 0
            ogg += copy
    with av.open(io.BytesIO(bytes(ogg)), format="ogg") as container:
        stream = container.streams.audio[0]
        audio = np.concatenate([f.to_ndarray()[0] for f in container.decode(stream)])
        assert stream.start_time == 0
    assert abs(len(audio) / 48000 - 2.0) < 0.03
    assert abs(dominant_frequency(audio.astype(np.float32), 48000) - 440) <= 5
