"""Recording: a channel's audio on disk as Ogg/Opus, without re-encoding.

Mode-independent (the packets come from the RTP tap in both relay modes): run once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import av
import numpy as np
import pytest
import structlog
from av.frame import Frame

from relay_app.audio.recording import RECORDING_NAME, Recording
from relay_app.client import RelayClient, ToneTrack, dominant_frequency
from relay_app.core.metrics import Metrics
from relay_app.tools.testing import ServerProcess

from ..helpers import finish_server, server_event, serving

pytestmark = pytest.mark.anyio

OPUS_20MS = bytes([0xFC, 0xFF, 0xFE])  # TOC: CELT-only fullband 20 ms, one frame


class FiniteTone(ToneTrack):
    """A tone that stops after `seconds` of audio (the sender stays connected)."""

    def __init__(self, frequency: float, seconds: float) -> None:
        super().__init__(frequency)
        self.limit = int(seconds * 48000)

    async def recv(self) -> Frame:
        if self._sent >= self.limit:
            self.pause()
        return await super().recv()


def decode(path: Path) -> tuple[float, float]:
    """(seconds, dominant Hz) of an Ogg/Opus file, decoded by FFmpeg (PyAV)."""
    with av.open(str(path)) as container:
        chunks = [frame.to_ndarray().mean(axis=0) for frame in container.decode(audio=0)]
    audio = np.concatenate(chunks).astype(np.float32)
    return len(audio) / 48000, dominant_frequency(audio[-48000:], 48000)


def recording_config(directory: Path, **extra: Any) -> dict[str, Any]:
    """Recording on; a channel's file closes 1 s after its speaker stops (unless `extra` says
    otherwise), so that a test need not wait recording.continue_within's 10 s for its end."""
    return {
        "recording": {
            "enabled": True,
            "directory": str(directory),
            "continue_within": 1.0,
            **extra,
        },
        "channels": {"english": {"label": "English"}, "french": {"label": "FR", "record": False}},
    }


async def test_a_five_second_tone_is_recorded_and_decodes_to_the_tone(tmp_path: Path) -> None:
    directory = tmp_path / "recordings"
    for server in serving(tmp_path, recording_config(directory)):
        async with RelayClient.connect(server.ws_url) as sender:
            await sender.start_sending(FiniteTone(440, 5.0), channel="english")
            async with RelayClient.connect(server.ws_url) as receiver:  # it is relayed, too
                await receiver.start_receiving("english")
                await receiver.wait_audio(1.0)
            started = await server_event(server, "recording_started", stream_id="english")
            await anyio.sleep(5.0)  # the tone stops after 5 s; the sender stays connected
            assert not server.find("recording_ended")
        ended = server.wait_event("recording_ended", stream_id="english")
        path = Path(ended["path"])
        assert path == Path(started["path"]) and path.parent == directory
        assert RECORDING_NAME.match(path.name) and path.name.startswith("english-")
        seconds, hz = decode(path)
        assert abs(seconds - 5.0) <= 0.2, seconds
        assert abs(hz - 440) <= 10, hz
        assert ended["seconds"] == pytest.approx(5.0, abs=0.2)
        # A channel marked `record: false` is not recorded.
        async with RelayClient.connect(server.ws_url) as sender:
            await sender.start_sending(ToneTrack(660), channel="french")
        assert [p.name for p in directory.iterdir()] == [path.name]


async def test_a_channels_next_speakers_go_on_in_the_same_file_with_the_pause_kept(
    tmp_path: Path,
) -> None:
    """One speaker, a second of nobody, a second speaker, then a third who takes the channel
    over: one file, the pause written as silence, each tone where it was spoken."""
    directory = tmp_path / "recordings"
    for server in serving(tmp_path, recording_config(directory, continue_within=5.0)):
        async with RelayClient.connect(server.ws_url) as first:
            await first.start_sending(FiniteTone(440, 2.0), channel="english")
            started = await server_event(server, "recording_started", stream_id="english")
            await anyio.sleep(2.0)
        await anyio.sleep(1.0)
        async with (
            RelayClient.connect(server.ws_url) as second,
            RelayClient.connect(server.ws_url) as third,
        ):
            await second.start_sending(FiniteTone(660, 2.0), channel="english")
            await server_event(server, "recording_continued", stream_id="english")
            await anyio.sleep(2.0)
            await third.start_sending(FiniteTone(880, 1.0), channel="english", takeover=True)
            await anyio.sleep(1.5)
        ended = server.wait_event("recording_ended", stream_id="english")
        assert ended["path"] == started["path"] and len(list(directory.iterdir())) == 1
        with av.open(ended["path"]) as container:
            chunks = [frame.to_ndarray().mean(axis=0) for frame in container.decode(audio=0)]
        audio = np.concatenate(chunks).astype(np.float32)
        seconds = len(audio) / 48000
        print(f"one file of {seconds:.2f} s")

        def heard(start: float, length: float = 0.5, audio: Any = audio) -> float:
            """The tone heard there (0: silence; the decoder gives floats, full scale 1)."""
            piece = audio[int(start * 48000) : int((start + length) * 48000)]
            return dominant_frequency(piece, 48000) if np.abs(piece).max() > 0.01 else 0.0

        # 440 Hz for 2 s; the pause (>= 1 s, the first speaker leaving included); 660 Hz
        # for 2 s; 880 Hz: each where it was spoken, within the pause's slack.
        assert abs(heard(0.5) - 440) <= 10
        assert heard(2.3, 0.6) == 0.0  # silence while nobody spoke
        assert seconds >= 6.0, seconds
        assert abs(heard(seconds - 2.5) - 660) <= 10
        assert abs(heard(seconds - 0.7) - 880) <= 10


async def test_a_late_packet_is_not_written_twice_nor_makes_a_gap(tmp_path: Path) -> None:
    """On the channel's timeline a late packet's place is written already (as silence when
    the next packet came first): it is dropped, and the file keeps time."""
    recording = Recording(tmp_path / "x.ogg", Metrics(), structlog.get_logger())
    for pts in (0, 1920, 960, 2880, 3840):  # the third arrives after the fourth
        recording.feed(OPUS_20MS, pts)
    assert recording.seconds == pytest.approx(5 * 0.02)  # 0, silence, 1920, 2880, 3840


async def test_an_unwritable_directory_does_not_interrupt_the_stream(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the directory should be")
    for server in serving(tmp_path, recording_config(blocker / "recordings")):
        async with (
            RelayClient.connect(server.ws_url) as sender,
            RelayClient.connect(server.ws_url) as receiver,
        ):
            await sender.start_sending(ToneTrack(440), channel="english")
            await receiver.start_receiving("english")
            failed = await server_event(server, "recording_failed", stream_id="english")
            assert "cannot create" in failed["error"] and failed["level"] == "error"
            await receiver.wait_audio(2.0)
            recent = receiver.recorder.audio(1.0)
            assert abs(dominant_frequency(recent, receiver.recorder.sample_rate) - 440) <= 10
            metrics = server.metrics()
            assert metrics["relay"]["recording_failures"] == 1
            assert metrics["live"]["recordings"] == 0


async def test_sigterm_mid_recording_leaves_a_file_that_decodes(tmp_path: Path) -> None:
    directory = tmp_path / "recordings"
    server = ServerProcess(tmp_path, recording_config(directory)).start()
    try:
        async with RelayClient.connect(server.ws_url) as sender:
            await sender.start_sending(ToneTrack(440), channel="english")
            await server_event(server, "recording_started")
            async with RelayClient.connect(server.ws_url) as receiver:
                await receiver.start_receiving("english")
                await receiver.wait_audio(2.5)
            finish_server(server)  # SIGTERM while the sender is still sending
        ended = server.wait_event("recording_ended")
        seconds, hz = decode(Path(ended["path"]))
        assert seconds >= 2.0 and abs(hz - 440) <= 10, (seconds, hz)
    finally:
        server.stop()
