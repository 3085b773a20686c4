"""Clients we did not write, or that behave like them: VLC and GStreamer joining an Ogg stream
late, WHEP players that offer video first or a sendrecv audio section, and the CLI's WAV.

VLC (`cvlc`, run as an unprivileged user: it refuses root) and GStreamer come from Debian's
packages (.ci/run installs them); under CI=true a missing one fails the test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import wave
from pathlib import Path

import anyio
import numpy as np
import pytest

from relay_app.client import RelayClient, ToneTrack, dominant_frequency
from relay_app.client.whip import whep_play
from relay_app.tools.testing import ServerProcess, start_client

from ..helpers import need

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def relay_mode() -> str:
    return "forward"  # the fast path is what a player's section order could trip


def wav_tone(path: Path) -> tuple[float, float]:
    """Seconds and dominant frequency of a 16-bit WAV file."""
    with wave.open(str(path), "rb") as wav:
        rate, channels = wav.getframerate(), wav.getnchannels()
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
    mono = samples.reshape(-1, channels).mean(axis=1) / 32768
    return len(mono) / rate, dominant_frequency(mono[rate // 4 :], rate)


def gstreamer_to_wav(url: str, out: Path) -> list[str]:
    pipeline = f"souphttpsrc location={url} ! oggdemux ! opusdec ! audioconvert ! wavenc"
    return ["gst-launch-1.0", "-q", "-e", *pipeline.split(), "!", "filesink", f"location={out}"]


def vlc_to_wav(url: str, out: Path, seconds: int) -> list[str]:
    """cvlc as nobody (VLC refuses root), transcoding what it plays into a WAV file."""
    pcm = "#transcode{acodec=s16l,channels=1,samplerate=48000}"
    sout = f"{pcm}:std{{access=file,mux=wav,dst={out}}}"
    nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]
    vlc = ["cvlc", "-q", "--no-video", "--play-and-exit", f"--run-time={seconds}"]
    return [*nobody, *vlc, url, f"--sout={sout}"]


async def test_vlc_and_gstreamer_join_an_ogg_stream_late_and_hear_the_tone(
    server: ServerProcess,
) -> None:
    need("cvlc", "vlc-bin vlc-plugin-base")
    need("gst-launch-1.0", "gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good")
    # Somewhere nobody (VLC's user) can reach: pytest's own folders are the owner's only.
    shared = Path(tempfile.mkdtemp(prefix="relay-vlc-"))
    shared.chmod(0o777)
    try:
        async with RelayClient.connect(server.ws_url) as sender:
            stream_id = await sender.start_sending(ToneTrack(440))
            await anyio.sleep(3)  # both join a stream whose pages are well past number 2
            url = f"{server.status_url}/stream/{stream_id}.ogg"
            vlc_wav, gst_wav = shared / "vlc.wav", shared / "gst.wav"
            async with await anyio.open_process(gstreamer_to_wav(url, gst_wav)) as gst:
                env = {"HOME": str(shared), "PATH": os.environ["PATH"]}
                done = await anyio.run_process(vlc_to_wav(url, vlc_wav, 5), check=False, env=env)
                gst.send_signal(signal.SIGINT)  # -e: end of stream, the WAV header written
                with anyio.fail_after(15):
                    await gst.wait()
        assert done.returncode == 0, done.stderr[-500:]
        for name, path in (("VLC", vlc_wav), ("GStreamer", gst_wav)):
            seconds, hz = wav_tone(path)
            assert seconds >= 0.8 and abs(hz - 440) <= 10, (name, seconds, hz)
    finally:
        shutil.rmtree(shared, ignore_errors=True)


async def test_whep_players_that_offer_video_first_or_sendrecv_hear_the_tone_in_opus_only(
    server: ServerProcess,
) -> None:
    """Eyevinn's player offers video and audio (video first); whip-whep's README example
    makes a sendrecv audio section. Both hear the tone on the fast path; answers list Opus
    only, and never take media from a player."""
    async with RelayClient.connect(server.ws_url) as sender:
        await sender.start_sending(ToneTrack(440), channel="stage")
        for sections in ((("video", "recvonly"), ("audio", "recvonly")), (("audio", "sendrecv"),)):
            async with whep_play(f"{server.base_url}/whep/stage", sections=sections) as player:
                answer = player.pc.remoteDescription.sdp
                audio = answer.split("m=audio")[1]
                assert "a=sendonly" in audio, audio
                codecs = [line for line in audio.splitlines() if line.startswith("a=rtpmap:")]
                assert len(codecs) == 1 and "opus/48000" in codecs[0].lower(), codecs
                if "m=video" in answer:
                    assert "a=inactive" in answer.split("m=video")[1].split("m=audio")[0]
                with anyio.fail_after(15):
                    await player.recorder.wait_seconds(1.5)
                heard = dominant_frequency(player.recorder.audio(1.0), player.recorder.sample_rate)
                assert abs(heard - 440) <= 10, (sections, heard)


def test_client_listen_writes_the_whole_recording_every_time(
    server: ServerProcess, tmp_path: Path
) -> None:
    """Ten listeners at once, ten whole WAV files: the recorder is finished after the media
    closed, so a late frame can no longer start a file over."""
    sender = start_client(
        server.ws_url, "send", "--tone", "440", "--channel", "wav", "--duration", "30"
    )
    try:
        server.wait_event("stream_stored", timeout=20, stream_id="wav")
        outs = [tmp_path / f"heard{n}.wav" for n in range(10)]
        listeners = [
            start_client(
                server.ws_url, "listen", "--stream-id", "wav", "--duration", "3", "--out", str(out)
            )
            for out in outs
        ]
        for listener, out in zip(listeners, outs, strict=True):
            stdout, stderr = listener.communicate(timeout=60)
            assert listener.returncode == 0, stderr
            recorded = json.loads(stdout.splitlines()[-1])
            seconds, hz = wav_tone(out)
            assert seconds >= 1.5 and abs(seconds - recorded["seconds"]) < 0.1, (out, seconds)
            assert abs(hz - 440) <= 10
    finally:
        sender.kill()
        sender.wait()
