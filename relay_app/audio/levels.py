"""Audio levels in dBFS, and the every-Nth-frame tap. Pure functions, no I/O."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

SILENCE_DBFS = -100.0


def dbfs(amplitude: float) -> float:
    """An amplitude (1.0 = full scale) in dBFS, floored at SILENCE_DBFS."""
    return max(SILENCE_DBFS, 20.0 * math.log10(amplitude)) if amplitude > 0 else SILENCE_DBFS


def rms_dbfs(samples: npt.NDArray[Any]) -> float:
    """The RMS level of float samples (1.0 = full scale) in dBFS."""
    if samples.size == 0:
        return SILENCE_DBFS
    scaled = samples.astype(np.float64)
    return dbfs(math.sqrt(float(np.mean(scaled * scaled))))


def levels(samples: npt.NDArray[Any]) -> tuple[float, float]:
    """(rms, peak) of signed 16-bit samples, in dBFS rounded to 0.1 dB."""
    if samples.size == 0:
        return SILENCE_DBFS, SILENCE_DBFS
    scaled = samples.astype(np.float64) / 32768.0
    peak = float(np.max(np.abs(scaled)))
    return round(rms_dbfs(scaled), 1), round(dbfs(peak), 1)


class EveryNth:
    """True once every `n` calls: visualization measures 1 frame in n to save CPU."""

    def __init__(self, n: int) -> None:
        self._n = n
        self._count = 0

    def __call__(self) -> bool:
        self._count += 1
        if self._count >= self._n:
            self._count = 0
            return True
        return False
