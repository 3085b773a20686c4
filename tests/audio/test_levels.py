"""levels.py: dBFS arithmetic and the every-Nth-frame tap."""

from __future__ import annotations

import numpy as np

from relay_app.audio.levels import SILENCE_DBFS, EveryNth, levels


def test_full_scale_square_is_zero_dbfs() -> None:
    samples = np.array([32767, -32768] * 480, dtype=np.int16)
    rms, peak = levels(samples)
    assert rms == 0.0 and peak == 0.0


def test_half_scale_sine_is_minus_9_rms_minus_6_peak() -> None:
    t = np.arange(48000) / 48000
    samples = (0.5 * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    rms, peak = levels(samples)
    assert abs(rms - -9.0) < 0.1 and abs(peak - -6.0) < 0.1


def test_silence_is_floored() -> None:
    assert levels(np.zeros(960, dtype=np.int16)) == (SILENCE_DBFS, SILENCE_DBFS)
    assert levels(np.zeros(0, dtype=np.int16)) == (SILENCE_DBFS, SILENCE_DBFS)


def test_every_nth_frame() -> None:
    tap = EveryNth(5)
    assert [tap() for _ in range(10)] == [False] * 4 + [True] + [False] * 4 + [True]
