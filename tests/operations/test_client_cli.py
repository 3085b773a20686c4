"""`python -m relay_app.client send|listen`: the guide's test_ws.py, as a real CLI."""

from __future__ import annotations

import json
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from relay_app.client import dominant_frequency
from relay_app.tools.testing import ServerProcess, start_client


@pytest.fixture(scope="module")
def relay_mode() -> str:
    """These scenarios are about the WebSocket, tokens and limits, which the relay mode does
    not touch: forward mode only (each run costs suite time; conftest runs both otherwise)."""
    return "forward"


def _client(server: ServerProcess, *args: str) -> subprocess.Popen[str]:
    return start_client(server.ws_url, *args)


def test_cli_listen_waits_for_sender_then_records_its_wav(
    server: ServerProcess, tmp_path: Path
) -> None:
    source = tmp_path / "tone.wav"
    rate = 16000
    t = np.arange(rate * 2) / rate
    with wave.open(str(source), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes((0.4 * 32767 * np.sin(2 * np.pi * 660 * t)).astype(np.int16).tobytes())
    heard = tmp_path / "heard.wav"
    listener = _client(server, "listen", "--out", str(heard), "--duration", "3")
    # The listener asks before anyone sends: it is told there is no stream, and waits.
    server.wait_event("no_stream_for_receiver", timeout=20)
    sender = _client(server, "send", "--wav", str(source), "--duration", "5")
    out, err = listener.communicate(timeout=40)
    sender.communicate(timeout=30)
    assert listener.returncode == 0, err
    assert sender.returncode == 0
    events = [json.loads(line) for line in out.splitlines()]
    names = [e["event"] for e in events]
    assert names[0] == "waiting" and "No audio stream available" in events[0]["reason"]
    assert names[-2:] == ["receiving", "recorded"] and set(names[:-2]) == {"waiting"}
    recorded = events[-1]
    assert recorded["seconds"] > 1.5
    assert abs(recorded["dominant_hz"] - 660) <= 10
    with wave.open(str(heard), "rb") as wav:
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
        assert abs(dominant_frequency(samples / 32768, wav.getframerate()) - 660) <= 10


def test_cli_listen_no_wait_reports_no_stream(server: ServerProcess) -> None:
    listener = _client(server, "listen", "--no-wait")
    _, err = listener.communicate(timeout=30)
    assert listener.returncode == 1
    assert "No audio stream available" in err
