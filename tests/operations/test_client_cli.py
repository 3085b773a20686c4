"""`python -m relay_app.client send|listen`: the guide's test_ws.py, as a real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import wave
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

from relay_app.client import RelayClient, ToneTrack, dominant_frequency
from relay_app.tools.testing import REPO, ServerProcess, free_port, start_client

from ..helpers import server_event, write_wav

LOOPBACK = ("--ice-address", "127.0.0.1")


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
    write_wav(source, 0.4 * np.sin(2 * np.pi * 660 * t), rate)
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


def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 40) -> Any:
    command = [sys.executable, "-m", *args]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


def test_check_says_why_it_cannot_reach_a_server() -> None:
    port = free_port()  # nobody listens there
    result = _run("relay_app.check", "--url", f"ws://127.0.0.1:{port}/ws")
    assert result.returncode == 1
    reason = result.stderr.split(f"cannot reach ws://127.0.0.1:{port}/ws:")[1].strip()
    assert reason, result.stderr  # never an empty reason


@pytest.mark.anyio
async def test_check_and_listen_say_no_audio_arrived_and_fail(server: ServerProcess) -> None:
    silent = ToneTrack(440)
    silent.pause()  # connected and negotiated, but it sends nothing
    async with RelayClient.connect(server.ws_url) as sender:
        await sender.start_sending(silent)
        check = await anyio.to_thread.run_sync(
            lambda: _run("relay_app.check", "--url", server.ws_url, "--listen", "1", *LOOPBACK)
        )
        assert check.returncode == 1
        assert "check failed: no audio arrived within" in check.stderr, check.stderr
        listen = await anyio.to_thread.run_sync(
            lambda: _run(
                "relay_app.client", "--url", server.ws_url, *LOOPBACK, "listen", "--duration", "2"
            )
        )
        assert listen.returncode == 1
        assert "no audio arrived" in listen.stderr, listen.stderr


@pytest.mark.anyio
async def test_send_says_why_an_operator_ended_it_and_fails(server: ServerProcess) -> None:
    sender = _client(server, "send", "--tone", "440", "--channel", "stage", "--duration", "60")
    try:
        await server_event(server, "stream_stored", timeout=20, stream_id="stage")
        assert server.post("/admin/streams/stage/stop").status_code == 200
        _, err = await anyio.to_thread.run_sync(lambda: sender.communicate(timeout=30))
    finally:
        sender.kill()
    assert sender.returncode == 1
    assert "sending ended by the server: stopped by an operator" in err, err


@pytest.mark.anyio
async def test_send_says_the_operator_disconnected_it_and_fails(server: ServerProcess) -> None:
    sender = _client(server, "send", "--tone", "440", "--channel", "desk", "--duration", "60")
    try:
        stored = await server_event(server, "stream_stored", timeout=20, stream_id="desk")
        disconnect = f"/admin/sessions/{stored['connection_id']}/disconnect"
        assert server.post(disconnect).status_code == 200
        _, err = await anyio.to_thread.run_sync(lambda: sender.communicate(timeout=30))
    finally:
        sender.kill()
    assert sender.returncode == 1
    said = "sending ended by the server: The operator disconnected you. Reload this page"
    assert said in err, err


def test_the_clients_follow_the_servers_port_from_the_environment(server: ServerProcess) -> None:
    env = {"RELAY_SERVER__PORT": str(server.port)}
    result = _run("relay_app.client", *LOOPBACK, "listen", "--no-wait", "--duration", "2", env=env)
    assert "No audio stream available" in result.stderr, result.stderr  # it reached the server
    assert "RELAY_SERVER__PORT" in _run("relay_app.client", "--help").stdout


def test_a_sender_finishing_and_a_listener_leaving_are_not_errors(server: ServerProcess) -> None:
    before = server.metrics()["errors"]
    seen = len(server.events)
    sender = _client(server, "send", "--tone", "440", "--duration", "4", "--channel", "plain")
    server.wait_event("stream_stored", timeout=20, stream_id="plain")
    listener = _client(server, "listen", "--duration", "2", "--stream-id", "plain")
    assert listener.communicate(timeout=30)[0] and listener.returncode == 0
    sender.communicate(timeout=30)
    assert sender.returncode == 0
    server.wait_idle()
    assert server.metrics()["errors"] == before
    loud = [e for e in server.events[seen:] if e.get("level") in ("warning", "error", "critical")]
    assert not loud, loud
