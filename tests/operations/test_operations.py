"""What operators see: /health, /metrics, /stream/status, logs, config errors, SIGTERM."""

from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import httpx
import pytest

from relay_app.client import RelayClient, ToneTrack
from relay_app.core import protocol as p
from relay_app.core.logs import LEGACY_MESSAGES
from relay_app.tools.testing import REPO, ServerProcess, free_port

pytestmark = pytest.mark.anyio

HEALTH_KEYS = {
    "status",
    "webrtc_available",
    "audio_server_running",
    "active_streams",
    "connected_clients",
    "uptime_seconds",
}
METRICS_KEYS = {
    "uptime_seconds",
    "active_connections",
    "active_streams",
    "total_audio_bytes",
    "webrtc_available",
}


async def test_health_metrics_and_status_during_and_after_a_stream(server: ServerProcess) -> None:
    idle_health = server.get("/health").json()
    assert idle_health.keys() >= HEALTH_KEYS
    assert idle_health["status"] == "healthy" and idle_health["active_streams"] == 0
    bytes_before = server.metrics()["total_audio_bytes"]

    async with RelayClient.connect(server.ws_url) as sender:
        stream_id = await sender.start_sending(ToneTrack(440))
        async with (
            RelayClient.connect(server.ws_url) as one,
            RelayClient.connect(server.ws_url) as two,
        ):
            await one.start_receiving()
            await two.start_receiving()
            await one.wait_audio(0.5)
            await two.wait_audio(0.5)

            health = server.get("/health")
            assert health.status_code == 200
            body = health.json()
            assert body.keys() >= HEALTH_KEYS
            assert body["status"] == "healthy"
            assert body["webrtc_available"] is True and body["audio_server_running"] is True
            assert body["active_streams"] == 1 and body["connected_clients"] == 3
            assert isinstance(body["uptime_seconds"], int)
            assert "cluster" not in body  # one node: a cluster of one says nothing of it

            metrics = server.metrics()
            assert metrics.keys() >= METRICS_KEYS
            # The guide's problem 10 numbers: 1 stream, 3 connections (1 sender + 2 receivers).
            assert metrics["active_streams"] == 1 and metrics["active_connections"] == 3
            assert metrics["total_audio_bytes"] > bytes_before
            live = metrics["live"]
            assert live["peer_connections"] == 3 and live["session_task_groups"] == 3
            # Two receivers plus the visualization tap.
            assert live["relay_subscriptions"] == 3
            assert metrics["cluster"] is None

            status = server.get("/stream/status", status_port=True).json()
            assert status["active_streams"] == [stream_id]
            assert status["streams"][0]["receivers"] == 2
            assert status["streams"][0]["node"] is None

    metrics = server.wait_idle()
    assert metrics["active_streams"] == 0 and metrics["active_connections"] == 0
    assert server.get("/stream/status", status_port=True).json()["active_streams"] == []
    after = server.get("/health").json()
    assert after["active_streams"] == 0 and after["connected_clients"] == 0


@pytest.mark.mode_independent  # the HTTP side: the relay mode does not change it
async def test_prometheus_scraper_gets_exposition_format(server: ServerProcess) -> None:
    response = server.get("/metrics", headers={"Accept": "text/plain"})
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert "# TYPE relay_active_streams gauge" in text
    assert "relay_peer_connections 0.0" in text
    assert "# TYPE relay_latency_seconds histogram" in text
    assert "process_resident_memory_bytes" in text
    assert "# TYPE relay_cluster_nodes gauge" in text
    assert not [line for line in text.splitlines() if line.startswith("relay_cluster_")]
    response = server.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")
    # jq users keep getting JSON.
    assert server.get("/metrics", headers={"Accept": "*/*"}).json()["active_streams"] == 0


@pytest.mark.mode_independent  # the HTTP side: the relay mode does not change it
async def test_unknown_paths_get_json_404_and_wrong_method_405(server: ServerProcess) -> None:
    for status_port in (False, True):
        response = server.get("/no/such/path", status_port=status_port)
        assert response.status_code == 404
        assert response.json()["status"] == 404
    response = httpx.post(server.base_url + "/health", timeout=5)
    assert response.status_code == 405 and response.json()["status"] == 405


@pytest.mark.mode_independent  # the HTTP side: the relay mode does not change it
async def test_web_client_page_is_served(server: ServerProcess) -> None:
    response = server.get("/")
    assert response.status_code == 200
    assert "text/html" in response.headers["content-type"]


async def test_every_stdout_line_is_json_with_the_guides_patterns(server: ServerProcess) -> None:
    async with RelayClient.connect(server.ws_url) as sender:
        await sender.start_sending(ToneTrack(440))
        async with RelayClient.connect(server.ws_url) as receiver:
            await receiver.start_receiving()
            await receiver.wait_audio(0.3)
    server.wait_idle()
    assert not server.bad_lines
    for event in server.events:
        assert {"timestamp", "level", "event"} <= event.keys(), event
    # The guide's greps keep working on the JSON lines.
    wanted = [
        "Setting up sender for connection",
        "Received audio track from sender",
        "Stored stream stream_",
        "Starting visualization task for stream_",
        "Sent offer to receiver",
        "relay.subscribe",
        "Cleaning up connection",
        "Audio track ended for",
    ]
    text = "\n".join(server.lines)
    for pattern in wanted:
        assert pattern in text, pattern
    assert any(
        e["event"] == "ice_connection_state" and e["message"].endswith("connected")
        for e in server.events
        if "message" in e
    )
    assert set(LEGACY_MESSAGES) >= {e["event"] for e in server.events if "message" in e}


def test_invalid_config_refuses_to_start_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"server": {"port": "eighty", "colour": "blue"}}))
    result = subprocess.run(
        [sys.executable, "-m", "relay_app", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert result.returncode == 2
    assert "server.port" in result.stderr and "server.colour: unknown key" in result.stderr

    env = {**os.environ, "RELAY_WEBRTC__CONNECTION_TIMEOUT": "-1"}
    result = subprocess.run(
        [sys.executable, "-m", "relay_app"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        env=env,
    )
    assert result.returncode == 2 and "webrtc.connection_timeout" in result.stderr


async def test_sigterm_to_hypercorn_exits_within_5s_cleaning_every_session(
    tmp_path: Path,
) -> None:
    port, audio_port = free_port(), free_port()
    hypercorn = Path(sys.executable).parent / "hypercorn"
    server = ServerProcess(
        tmp_path,
        {"server": {"port": port, "audio_port": audio_port}},
        command=[
            str(hypercorn),
            "-c",
            "hypercorn.toml",
            "--bind",
            f"127.0.0.1:{port}",
            "--bind",
            f"127.0.0.1:{audio_port}",
            "relay_app.asgi:app",
        ],
    )
    server.port, server.audio_port = port, audio_port
    server.start(wait_for_http=True)
    try:
        async with RelayClient.connect(server.ws_url) as sender:
            await sender.start_sending(ToneTrack(440))
            async with (
                RelayClient.connect(server.ws_url) as one,
                RelayClient.connect(server.ws_url) as two,
            ):
                await one.start_receiving()
                await two.start_receiving()
                await one.wait_audio(0.3)
                await two.wait_audio(0.3)
                assert server.get("/stream/status", status_port=True).json()["active_streams"]
                started = time.monotonic()
                code = await anyio.to_thread.run_sync(server.stop)
                elapsed = time.monotonic() - started
                with anyio.fail_after(5):
                    await one.closed.wait()
        assert code == 0, server.stderr[-20:]
        assert elapsed < 5, elapsed
        ids = {c.connection_id for c in (sender, one, two)}
        cleaned = {e["connection_id"] for e in server.find("connection_cleanup")}
        assert ids <= cleaned
        assert server.find("server_stopped")
        assert not server.bad_lines
    finally:
        server.stop()


@pytest.mark.mode_independent  # the HTTP side: the relay mode does not change it
async def test_status_port_serves_only_status(server: ServerProcess) -> None:
    assert server.get("/stream/status", status_port=True).status_code == 200
    assert server.get("/metrics", status_port=True).status_code == 404


@pytest.mark.mode_independent  # the transport: the relay mode does not change it
async def test_https_and_wss_with_a_self_signed_cert_for_lan_phones(
    make_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "relay_app",
            "cert",
            "--host",
            "127.0.0.1",
            "--out-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    server = make_server({"server": {"certfile": str(cert), "keyfile": str(key)}})
    assert server.wait_event("server_listening")["url"].startswith("https://")
    context = ssl.create_default_context(cafile=str(cert))
    response = server.get("/health")
    assert response.status_code == 200 and response.json()["status"] == "healthy"
    url = f"wss://127.0.0.1:{server.port}/ws"
    async with RelayClient.connect(url, ssl=context) as client:
        assert client.welcome is not None


def _dockerfile() -> tuple[list[str], dict[str, str], list[str]]:
    """(CMD, ENV, HEALTHCHECK CMD) of the Dockerfile, joined across continuation lines."""
    lines = (REPO / "Dockerfile").read_text().splitlines()
    # Like Docker: comment lines go first (even inside a continued instruction), then join.
    kept = [line for line in lines if not line.strip().startswith("#")]
    text = "\n".join(kept).replace("\\\n", " ")
    env: dict[str, str] = {}
    cmd: list[str] = []
    health: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("ENV "):
            for key, value in re.findall(r'(\w+)=("[^"]*"|\S+)', line[4:]):
                env[key] = value.strip('"')
        elif line.startswith("CMD "):
            cmd = json.loads(line[4:])
        elif line.startswith("HEALTHCHECK "):
            health = json.loads(line[line.index("CMD ") + 4 :])
    return cmd, env, health


async def test_docker_cmd_and_healthcheck_run_as_plain_processes(tmp_path: Path) -> None:
    """No Docker engine here: run the image's CMD and HEALTHCHECK as processes instead."""
    cmd, env, health = _dockerfile()
    assert cmd[:3] == ["hypercorn", "-c", "hypercorn.toml"], cmd
    assert "relay_app.asgi:app" in cmd
    readme = (REPO / "README.md").read_text()
    assert " ".join(cmd) in readme, "the README shows the same Hypercorn command"
    port, audio_port = free_port(), free_port()
    hypercorn = str(Path(sys.executable).parent / "hypercorn")
    server = ServerProcess(
        tmp_path,
        {"server": {"port": port, "audio_port": audio_port}},
        # The CMD as is, plus binds on loopback ephemeral ports for the test.
        command=[
            hypercorn,
            *cmd[1:],
            "--bind",
            f"127.0.0.1:{port}",
            "--bind",
            f"127.0.0.1:{audio_port}",
        ],
        env=env,
    )
    server.port, server.audio_port = port, audio_port
    server.start(wait_for_http=True)
    try:
        check = [
            sys.executable
            if part == "python"
            else part.replace("localhost:8080", f"127.0.0.1:{port}")
            for part in health
        ]
        assert subprocess.run(check, timeout=30).returncode == 0
        async with RelayClient.connect(server.ws_url) as sender:
            await sender.start_sending(ToneTrack(440))
            answer = next(m for m in sender.messages if isinstance(m, p.AnswerOut))
            low, high = json.loads(env["RELAY_WEBRTC__UDP_PORT_RANGE"])
            for line in answer.sdp.splitlines():
                if line.startswith("a=candidate"):
                    assert low <= int(line.split()[5]) <= high, line
        server.wait_idle()
    finally:
        assert server.stop() == 0


def test_the_image_has_curl_for_the_guides_docker_exec_commands() -> None:
    """The guide runs `docker exec voice-streaming curl ...`; python:3.11-slim has no curl."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    runs = [line for line in text.splitlines() if line.startswith("RUN ")]
    install = next(line for line in runs if "apt-get install" in line)
    assert re.search(r"\bcurl=", install) and "--no-install-recommends" in install
    assert "rm -rf /var/lib/apt/lists/*" in install, "keep the image small"
    guide = (REPO / "docs" / "troubleshooting.md").read_text()
    assert "docker exec voice-streaming curl" in guide


def test_hypercorn_binds_that_do_not_match_the_config_ports_stop_the_server(
    tmp_path: Path,
) -> None:
    """The app routes by port, so `bind = 0.0.0.0:9000` with server.port 8080 cannot work:
    the worker exits 2 at startup with a message naming both, and so does Hypercorn."""
    port, audio_port, other = free_port(), free_port(), free_port()
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"server": {"port": port, "audio_port": audio_port}}))
    hypercorn = str(Path(sys.executable).parent / "hypercorn")
    command = [hypercorn, "-c", "hypercorn.toml", "relay_app.asgi:app"]
    binds = ["--bind", f"127.0.0.1:{other}", "--bind", f"127.0.0.1:{audio_port}"]
    result = subprocess.run(
        command + binds,
        cwd=REPO,
        env={**os.environ, "RELAY_CONFIG": str(config)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    message = next(line for line in result.stderr.splitlines() if "relay_app:" in line)
    assert f"127.0.0.1:{other}" in message and f"server.port={port}" in message
    assert f"server.audio_port={audio_port}" in message


@pytest.mark.mode_independent  # the config file: the relay mode does not change it
async def test_a_config_file_from_the_old_guide_starts_the_server(
    make_server: Callable[..., ServerProcess],
) -> None:
    """Every key the guide shows, where it shows it (audio_constraints both at the top level,
    as in its problem 8, and under webrtc): the server starts and says where the key moved."""
    old_config = {
        "server": {"host": "127.0.0.1", "max_connections": 20},
        "webrtc": {
            "ice_servers": [],
            "connection_timeout": 60,
            "audio_constraints": {"sample_rate": 8000, "channels": 1},
        },
        "audio_constraints": {"sample_rate": 16000, "latency": 0},
    }
    server = make_server(old_config)
    moved = server.wait_event("config_key_moved")
    assert (moved["key"], moved["new_key"]) == ("audio_constraints", "webrtc.audio_constraints")
    assert moved["level"] == "warning"
    async with RelayClient.connect(server.ws_url) as client:
        assert client.welcome is not None
        config = client.welcome.config
        assert config["connection_timeout"] == 60
        # webrtc.audio_constraints is the new place, so its sample_rate wins.
        assert config["audio_constraints"]["sample_rate"] == 8000
        assert config["audio_constraints"]["latency"] == 0


def test_the_ci_script_is_valid_bash() -> None:
    """CI runs .ci/run on a clean clone before anything else: a syntax slip there means
    nothing is tested at all."""
    checked = subprocess.run(["bash", "-n", str(REPO / ".ci" / "run")], capture_output=True)
    assert checked.returncode == 0, checked.stderr
