"""ogg.py: pages FFmpeg decodes, granules that match the audio, headers for late joiners."""

from __future__ import annotations

import fractions
import io

import av
import numpy as np

from relay_app.audio.ogg import OggOpusMuxer, ogg_crc, opus_samples
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


def test_ogg_crc_is_the_ogg_polynomial_not_zlibs() -> None:
    assert ogg_crc(b"") == 0
    assert ogg_crc(b"OggS") == 0x5FB0A94F  # bit by bit, as RFC 3533 defines it


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
