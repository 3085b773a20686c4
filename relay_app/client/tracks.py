"""Audio the Python client sends and keeps: generated tracks paced in real time, and a
bounded recorder of what it hears (with the FFT check the tests and the CLI use)."""

from __future__ import annotations

import asyncio
import fractions
import math
import time
import wave
from collections import deque
from pathlib import Path

import anyio
import numpy as np
import numpy.typing as npt
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame
from av.frame import Frame
from av.packet import Packet

from ..webrtc.rtp_tap import OPUS_CLOCK_RATE, OPUS_FRAME_SAMPLES

SAMPLE_RATE = OPUS_CLOCK_RATE
FRAME_SAMPLES = OPUS_FRAME_SAMPLES  # 20 ms


class PacedTrack(MediaStreamTrack):
    """Base for generated audio: 20 ms s16 mono frames at 48 kHz, paced in real time.

    `pause()` stops producing frames without ending the track: the server then sees a sender
    whose media stopped while its WebSocket stays open (a stale stream).
    """

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._start: float | None = None
        self._sent = 0
        self._running = asyncio.Event()
        self._running.set()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._start = None
        self._running.set()

    def samples(self, offset: int, count: int) -> npt.NDArray[np.int16]:
        raise NotImplementedError

    async def recv(self) -> Frame:
        if self.readyState != "live":
            raise MediaStreamError
        await self._running.wait()
        now = time.monotonic()
        if self._start is None:
            self._start = now - self._sent / SAMPLE_RATE
        wait = self._start + self._sent / SAMPLE_RATE - now
        if wait > 0:
            await asyncio.sleep(wait)
        data = self.samples(self._sent, FRAME_SAMPLES)
        frame = AudioFrame.from_ndarray(data.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._sent
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        self._sent += FRAME_SAMPLES
        return frame


class ToneTrack(PacedTrack):
    def __init__(self, frequency: float, amplitude: float = 0.5) -> None:
        super().__init__()
        self.frequency = frequency
        self.amplitude = amplitude

    def samples(self, offset: int, count: int) -> npt.NDArray[np.int16]:
        t = (np.arange(offset, offset + count) / SAMPLE_RATE).astype(np.float64)
        wave_ = self.amplitude * np.sin(2 * math.pi * self.frequency * t)
        return (wave_ * 32767).astype(np.int16)


def read_wav(path: Path) -> npt.NDArray[np.int16]:
    """A 16-bit PCM WAV file's samples, mixed to mono and resampled to 48 kHz."""
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV is supported")
        rate, channels = wav.getframerate(), wav.getnchannels()
        raw = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
    mono = raw.reshape(-1, channels).mean(axis=1)
    if rate != SAMPLE_RATE:
        positions = np.arange(0, len(mono), rate / SAMPLE_RATE)
        mono = np.interp(positions, np.arange(len(mono)), mono)
    if len(mono) == 0:
        raise ValueError(f"{path}: no audio")
    return mono.astype(np.int16)


class WavTrack(PacedTrack):
    """A 16-bit PCM WAV file, mixed to mono, resampled to 48 kHz, looped."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._pcm = read_wav(path)

    def samples(self, offset: int, count: int) -> npt.NDArray[np.int16]:
        index = np.arange(offset, offset + count) % len(self._pcm)
        return self._pcm[index]


class Recorder:
    """A received track's audio: the newest `keep_seconds` as mono float samples for checks,
    and, with `wav`, everything written to that file as it arrives (16-bit mono).

    Memory stays bounded however long a listener runs (an hour of kept float samples would be
    ~700 MB).
    """

    def __init__(self, keep_seconds: float = 60.0, wav: Path | None = None) -> None:
        self.keep_seconds = keep_seconds
        self.chunks: deque[npt.NDArray[np.float32]] = deque()
        self._kept = 0  # samples in chunks
        self.sample_rate = SAMPLE_RATE
        self.frames = 0
        self.total_samples = 0
        self._wav_path = wav
        self._wav: wave.Wave_write | None = None
        self._finished = False  # closed: a late frame must not start the file over
        self._progress = anyio.Event()

    def add(self, frame: Frame | Packet) -> None:
        if not isinstance(frame, AudioFrame):
            raise TypeError(f"expected decoded audio, got {type(frame).__name__}")
        data = frame.to_ndarray().astype(np.float32) / 32768.0
        channels = len(frame.layout.channels)
        if frame.format.is_planar:
            mono = data.mean(axis=0)
        else:
            mono = data.reshape(-1, channels).mean(axis=1)
        self.sample_rate = frame.sample_rate
        self._keep(mono)
        self._write(mono)
        self.frames += 1
        self.total_samples += len(mono)
        self._progress.set()
        self._progress = anyio.Event()

    def _keep(self, mono: npt.NDArray[np.float32]) -> None:
        self.chunks.append(mono)
        self._kept += len(mono)
        limit = self.keep_seconds * self.sample_rate
        while self.chunks and self._kept - len(self.chunks[0]) >= limit:
            self._kept -= len(self.chunks.popleft())

    def _write(self, mono: npt.NDArray[np.float32]) -> None:
        if self._wav_path is None or self._finished:
            return
        if self._wav is None:
            self._wav = wave.open(str(self._wav_path), "wb")  # noqa: SIM115 (closed in close())
            self._wav.setnchannels(1)
            self._wav.setsampwidth(2)
            self._wav.setframerate(self.sample_rate)
        self._wav.writeframes((np.clip(mono, -1, 1) * 32767).astype(np.int16).tobytes())

    def close(self) -> None:
        """Finish the WAV file, if any (its header needs the final length); later frames are
        not written (reopening the file would start it over)."""
        self._finished = True
        if self._wav is not None:
            self._wav.close()
            self._wav = None

    async def wait_seconds(self, seconds: float) -> None:
        while self.seconds < seconds:
            await self._progress.wait()

    @property
    def seconds(self) -> float:
        """All audio received so far, kept or not."""
        return self.total_samples / self.sample_rate

    def audio(self, last_seconds: float | None = None) -> npt.NDArray[np.float32]:
        """The kept audio (at most keep_seconds), or its last `last_seconds`."""
        if not self.chunks:
            return np.zeros(0, dtype=np.float32)
        samples = np.concatenate(self.chunks)
        if last_seconds is not None:
            samples = samples[-int(last_seconds * self.sample_rate) :]
        return samples


def dominant_frequency(samples: npt.NDArray[np.float32], sample_rate: int) -> float:
    """The strongest frequency (Hz) in the samples, by FFT with a Hann window."""
    if len(samples) < 2:
        return 0.0
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    spectrum[0] = 0
    return float(np.fft.rfftfreq(len(samples), 1 / sample_rate)[int(np.argmax(spectrum))])


async def record_track(track: MediaStreamTrack, recorder: Recorder) -> None:
    """Feed a received track into `recorder` until the track ends."""
    try:
        while True:
            recorder.add(await track.recv())
    except MediaStreamError:
        pass
