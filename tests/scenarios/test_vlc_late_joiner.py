"""Players joining an Ogg stream long after it started: VLC, GStreamer and FFmpeg 40 s in.

A stream's granule positions count from its sender's first packet; a listener 40 s late whose
first page said so was, to VLC, a stream already 40 s in: `--run-time 8` (and `--stop-time`,
and the position VLC shows) is play time by the stream's timestamps, so VLC stopped after one
page (0.08 s decoded, `http_listener_ended ... client left` after 10 KB). Each listener's own
logical stream now starts at granule 0, as a file does, whenever it joins.

Slow by nature (it waits 40 s, once, for every player at the same time); it measures no time,
so it may share the machine with other tests. VLC (`cvlc`, as nobody: it refuses root) and
GStreamer come from Debian's packages; under CI=true a missing one fails the test.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import tempfile
from pathlib import Path

import anyio
import av
import httpx
import numpy as np
import pytest

from relay_app.client import RelayClient, ToneTrack, dominant_frequency
from relay_app.tools.testing import ServerProcess

from ..helpers import need
from .test_interop import gstreamer_to_wav, vlc_to_wav, wav_tone

pytestmark = [pytest.mark.anyio, pytest.mark.mode_independent]

LATE = 40.0  # seconds into the stream when the players join
PLAYED = 8  # VLC's --run-time: seconds of the stream's own time


async def capture(url: str, seconds: float) -> bytes:
    """What a plain HTTP client (here for FFmpeg) receives in `seconds`."""
    data = bytearray()
    async with (
        httpx.AsyncClient(timeout=10) as client,
        client.stream("GET", url) as response,
    ):
        assert response.status_code == 200, await response.aread()
        with anyio.move_on_after(seconds):
            async for chunk in response.aiter_bytes():
                data += chunk
    return bytes(data)


def ffmpeg_decodes(ogg: bytes) -> tuple[float, float, int]:
    """Seconds, dominant frequency and start time (in samples) as FFmpeg (PyAV) reads it."""
    with av.open(io.BytesIO(ogg), format="ogg") as container:
        stream = container.streams.audio[0]
        mono = np.concatenate([f.to_ndarray()[0] for f in container.decode(stream)])
        start = stream.start_time
    mono = mono.astype(np.float32)
    return len(mono) / 48000, dominant_frequency(mono[12000:], 48000), start


async def test_vlc_gstreamer_and_ffmpeg_joining_40_s_in_hear_the_tone_from_their_own_start(
    server: ServerProcess,
) -> None:
    need("cvlc", "vlc-bin vlc-plugin-base")
    need("gst-launch-1.0", "gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good")
    # Somewhere nobody (VLC's user) can reach: pytest's own folders are the owner's only.
    shared = Path(tempfile.mkdtemp(prefix="relay-vlc-late-"))
    shared.chmod(0o777)
    env = {"HOME": str(shared), "PATH": os.environ["PATH"]}
    heard: dict[str, tuple[float, float]] = {}  # seconds decoded, dominant frequency
    starts: list[int] = []
    try:
        async with (
            RelayClient.connect(server.ws_url) as one,
            RelayClient.connect(server.ws_url) as other,
        ):
            # A stream of its own (own_page) and a channel (one stream across senders).
            stream_id = await one.start_sending(ToneTrack(440))
            await other.start_sending(ToneTrack(660), channel="late")
            await anyio.sleep(LATE)
            urls = {
                "stream": f"{server.status_url}/stream/{stream_id}.ogg",
                "channel": f"{server.status_url}/stream/late.ogg",
            }

            async def vlc(name: str) -> None:
                out = shared / f"vlc-{name}.wav"
                done = await anyio.run_process(
                    vlc_to_wav(urls[name], out, PLAYED), check=False, env=env
                )
                assert done.returncode == 0, done.stderr[-500:]
                heard[f"VLC {name}"] = wav_tone(out)

            async def ffmpeg() -> None:
                seconds, hz, start = ffmpeg_decodes(await capture(urls["stream"], PLAYED))
                heard["FFmpeg stream"] = (seconds, hz)
                starts.append(start)

            gst_wav = shared / "gst.wav"
            gst = await anyio.open_process(gstreamer_to_wav(urls["channel"], gst_wav))
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(vlc, "stream")
                    tg.start_soon(vlc, "channel")
                    tg.start_soon(ffmpeg)
                gst.send_signal(signal.SIGINT)  # -e: end of stream, the WAV header written
                with anyio.fail_after(15):
                    await gst.wait()
            finally:
                if gst.returncode is None:  # (a live stream: it never ends by itself)
                    gst.kill()
                with anyio.CancelScope(shield=True):
                    await gst.aclose()
            heard["GStreamer channel"] = wav_tone(gst_wav)
        expected = {"stream": 440, "channel": 660}
        assert len(heard) == 4, heard
        for name, (seconds, hz) in heard.items():
            want = expected[name.split()[-1]]
            assert seconds >= 5 and abs(hz - want) <= 10, f"{name}: {heard}"
        assert starts == [0], f"FFmpeg's start time: {starts} samples, not 0"
    finally:
        shutil.rmtree(shared, ignore_errors=True)
