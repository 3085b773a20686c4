"""The admin API: an operator sees who is connected, kicks one, stops a stream,
locks a channel, and fetches recordings; nobody else may.

Mode-independent (it reads and changes the registry): run once, against real servers.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay_app.client import (
    RelayClient,
    ServerError,
    ToneTrack,
    dominant_frequency,
)
from relay_app.core import protocol as p
from relay_app.core.auth import mint
from relay_app.core.errors import sole_error
from relay_app.tools.testing import ServerProcess

from ..helpers import SECRET, require_namespaces, server_event, serving

pytestmark = pytest.mark.anyio

CHANNELS = {"english": {"label": "English"}}


def hears(client: RelayClient, hz: float) -> bool:
    recent = client.recorder.audio(1.0)
    return abs(dominant_frequency(recent, client.recorder.sample_rate) - hz) <= 10


async def test_the_operator_lists_sessions_and_kicks_exactly_one(tmp_path: Path) -> None:
    for server in serving(tmp_path, {"channels": CHANNELS}):
        async with (
            RelayClient.connect(server.ws_url) as sender,
            RelayClient.connect(server.ws_url, user_agent_header="booth-laptop") as kept,
            RelayClient.connect(server.ws_url) as kicked,
        ):
            await sender.start_sending(ToneTrack(440), channel="english")
            for receiver in (kept, kicked):
                await receiver.start_receiving("english")
                await receiver.wait_audio(0.5)
            sessions = server.get("/admin/sessions").json()["sessions"]
            rows = {row["connection_id"]: row for row in sessions}
            assert rows[sender.connection_id]["role"] == "sender"
            assert rows[sender.connection_id]["channel"] == "english"
            assert rows[sender.connection_id]["audio_bytes_in"] > 0
            assert rows[kept.connection_id]["role"] == "receiver"
            assert rows[kept.connection_id]["user_agent"] == "booth-laptop"
            assert rows[kept.connection_id]["remote"] == "127.0.0.1"
            assert rows[kept.connection_id]["bytes_out"] > 0
            assert rows[kept.connection_id]["waiting"] is False

            # (/kick is Disconnect's old name: the same thing)
            answer = server.post(
                f"/admin/sessions/{kicked.connection_id}/kick", json={"reason": "heckling"}
            )
            assert answer.status_code == 200, answer.text
            told = await kicked.receive(p.Disconnected)
            said = "The operator disconnected you (heckling). Reload this page to connect again."
            assert (told.reason, told.message) == ("disconnected", said)
            await kicked.closed.wait()
            assert kicked.close_code == 1000, kicked.close_code
            # Everyone else keeps their audio.
            await kept.wait_audio(kept.recorder.seconds + 1.0)
            assert hears(kept, 440)
            event = server.wait_event(
                "admin_session_disconnected", disconnected=kicked.connection_id
            )
            assert event["by"] == "local 127.0.0.1" and event["reason"] == "heckling"
            missing = server.post("/admin/sessions/nobody/disconnect")
            assert missing.status_code == 404
            assert missing.json()["message"].startswith("Nobody is connected as 'nobody' now")


async def test_a_locked_channel_takes_no_new_sender_and_a_stopped_stream_ends(
    tmp_path: Path,
) -> None:
    for server in serving(tmp_path, {"channels": CHANNELS}):
        async with (
            RelayClient.connect(server.ws_url) as sender,
            RelayClient.connect(server.ws_url) as receiver,
        ):
            await sender.start_sending(ToneTrack(440), channel="english")
            await receiver.start_receiving("english")
            assert server.post("/admin/channels/english/lock").json()["locked"] is True
            assert server.post("/admin/streams/english/stop").json() == {"stopped": "english"}
            ended = await sender.receive(p.StreamEnded)
            assert ended.reason == "stopped by an operator"
            waiting = await receiver.receive(p.StreamEnded)
            assert waiting.waiting and waiting.reason == "stopped by an operator"
            with pytest.raises(ServerError, match="locked by an operator"):
                await sender.start_sending(ToneTrack(440), channel="english")
            channels = server.get("/admin/channels").json()["channels"]
            assert channels[0]["channel"] == "english" and channels[0]["locked"] is True
            assert server.post("/admin/channels/english/unlock").json()["locked"] is False
            async with RelayClient.connect(server.ws_url) as next_sender:
                await next_sender.start_sending(ToneTrack(660), channel="english")
                await receiver.follow_channel()
                await receiver.wait_audio(1.0)
                assert hears(receiver, 660)
            for event in ("admin_channel_locked", "admin_stream_stopped", "admin_channel_unlocked"):
                assert server.find(event), event
            assert server.post("/admin/streams/english/stop").status_code == 404
            assert server.post("/admin/channels/no%20way/lock").status_code == 400


async def test_with_auth_only_an_admin_token_may_use_it(tmp_path: Path) -> None:
    directory = tmp_path / "recordings"
    config = {
        "channels": CHANNELS,
        "auth": {"secret": SECRET},
        "recording": {"enabled": True, "directory": str(directory), "continue_within": 1.0},
    }
    admin = {"Authorization": f"Bearer {mint(SECRET, 'admin', 600, subject='alice')}"}
    metrics = {"Authorization": f"Bearer {mint(SECRET, 'metrics', 600)}"}
    receive = {"Authorization": f"Bearer {mint(SECRET, 'receive', 600)}"}
    for server in serving(tmp_path, config, metrics):
        assert server.get("/admin/sessions").status_code == 403  # a metrics token
        assert server.get("/admin/sessions", headers={"Authorization": ""}).status_code == 401
        assert server.get("/admin/sessions", headers=receive).status_code == 403
        refused = server.post("/admin/channels/english/lock", headers=receive)
        assert (
            refused.status_code == 403 and "may not use the admin API" in refused.json()["message"]
        )
        assert server.get("/admin/sessions", headers=admin).json() == {"sessions": []}
        # An admin token is for HTTP: it cannot open /ws.
        with pytest.raises(BaseExceptionGroup) as refused:
            async with RelayClient.connect(server.ws_url, token=mint(SECRET, "admin", 600)):
                pass
        assert "an admin token cannot open /ws" in str(sole_error(refused.value))
        # A recording, listed and fetched by the admin only.
        async with RelayClient.connect(server.ws_url, token=mint(SECRET, "send", 600)) as sender:
            await sender.start_sending(ToneTrack(440), channel="english")
            # (not blocking: the recording starts with the first second of this loop's audio)
            await server_event(server, "recording_started")
            listed = server.get("/admin/recordings", headers=admin).json()["recordings"]
            assert len(listed) == 1 and listed[0]["recording"] is True
        server.wait_event("recording_ended")
        name = server.get("/admin/recordings", headers=admin).json()["recordings"][0]["name"]
        assert server.get(f"/admin/recordings/{name}", headers=receive).status_code == 403
        file = server.get(f"/admin/recordings/{name}", headers=admin)
        assert file.status_code == 200 and file.headers["content-type"] == "audio/ogg"
        assert file.content == (directory / name).read_bytes() and file.content[:4] == b"OggS"
        assert server.get("/admin/recordings/..%2Fconfig.json", headers=admin).status_code == 404
        assert server.wait_event("admin_recording_downloaded", name=name)["by"] == "alice"


LAN_IP = "192.0.2.10"  # documentation range, on the loopback device of our own namespace


@pytest.fixture
def lan_namespace() -> Iterator[str]:
    """A network namespace whose one non-loopback address is LAN_IP (nothing leaves it)."""
    require_namespaces()
    name = f"rla{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for command in (
            ["link", "set", "lo", "up"],
            ["addr", "add", f"{LAN_IP}/32", "dev", "lo"],
        ):
            subprocess.run(["ip", "-n", name, *command], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _status_from(namespace: str, url: str) -> int:
    script = f"import httpx; print(httpx.get({url!r}, timeout=5).status_code)"
    out = subprocess.run(
        ["ip", "netns", "exec", namespace, sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return int(out.stdout.strip())


def test_without_auth_only_this_machine_may_use_it(tmp_path: Path, lan_namespace: str) -> None:
    server = ServerProcess(tmp_path, {"server": {"host": "0.0.0.0", "port": 8080}})
    server.command = ["ip", "netns", "exec", lan_namespace, *server.command]
    server.start()
    try:
        # (and the startup log names the LAN address, not 0.0.0.0: what phones can open)
        assert server.wait_event("listen_urls")["urls"] == [f"http://{LAN_IP}:8080/listen"]
        assert _status_from(lan_namespace, "http://127.0.0.1:8080/admin/sessions") == 200
        assert _status_from(lan_namespace, f"http://{LAN_IP}:8080/admin/sessions") == 403
        assert _status_from(lan_namespace, f"http://{LAN_IP}:8080/health") == 200
    finally:
        assert server.stop() == 0
