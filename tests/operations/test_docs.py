"""The docs say what the code does: generated config table, every log event documented."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx

from relay_app.core.config import Settings, load_settings
from relay_app.core.logs import LEGACY_MESSAGES
from relay_app.tools.docs import configuration_markdown, example_config
from relay_app.tools.testing import REPO, free_port


def test_configuration_doc_matches_the_settings_model() -> None:
    doc = (REPO / "docs" / "configuration.md").read_text()
    assert doc == configuration_markdown(), (
        "docs/configuration.md is stale: run `.venv/bin/python -m relay_app.config > "
        "docs/configuration.md`"
    )


def test_the_example_config_has_every_key_at_its_default() -> None:
    path = REPO / "docs" / "config.example.json"
    assert path.read_text() == example_config(), (
        "docs/config.example.json is stale: run `.venv/bin/python -m relay_app.config "
        "--example > docs/config.example.json`"
    )
    assert load_settings(path).model_dump() == Settings().model_dump()
    assert json.loads(path.read_text())["webrtc"]["connection_timeout"] == 30


def test_troubleshooting_doc_maps_every_guide_pattern_to_its_event() -> None:
    doc = (REPO / "docs" / "troubleshooting.md").read_text()
    for event in LEGACY_MESSAGES:
        assert f"`{event}`" in doc, event


def test_troubleshooting_doc_says_what_replaced_the_old_files() -> None:
    doc = (REPO / "docs" / "troubleshooting.md").read_text()
    for old, new in [
        ("webrtc_server_relay.py", "make run"),
        ("test_ws.py", "relay_app.check"),
        ("performance_test.py", "relay_app.perf"),
        ("config.json", "RELAY_CONFIG"),
    ]:
        assert old in doc and new in doc, old


def test_every_guide_config_key_is_documented() -> None:
    doc = (REPO / "docs" / "configuration.md").read_text()
    for key in [
        "server.host",
        "server.port",
        "server.audio_port",
        "server.max_connections",
        "webrtc.ice_servers",
        "webrtc.connection_timeout",
        "webrtc.audio_constraints.sample_rate",
        "webrtc.audio_constraints.channels",
        "webrtc.audio_constraints.latency",
    ]:
        assert f"`{key}`" in doc, key


def test_each_guide_issue_says_what_it_was_and_what_relay_app_does_now() -> None:
    doc = (REPO / "docs" / "troubleshooting.md").read_text()
    sections = doc.split("\n### Problem ")[1:]
    numbered = {int(section.split(":")[0]): section for section in sections}
    for number in range(1, 11):
        assert "**Then → now:**" in numbered[number], f"Problem {number}"


def test_every_admin_and_recording_event_is_documented() -> None:
    """An operator greps for what admin.md names: every such event the code logs is there."""
    doc = (REPO / "docs" / "admin.md").read_text()
    source = "".join(path.read_text() for path in (REPO / "relay_app").rglob("*.py"))
    logged = (
        r'(?:\.info|\.warning|\.error|_log)\(\s*(?:caller,\s*)?f?"((?:admin|recording)_[a-z_]+)'
    )
    events = set(re.findall(logged, source))
    events |= {f"admin_channel_{action}ed" for action in ("lock", "unlock")}
    events -= {"admin_channel_"}
    assert events >= {"admin_session_kicked", "recording_failed"}, events
    missing = [event for event in sorted(events) if f"`{event}`" not in doc]
    assert not missing, missing


def test_every_cluster_and_upstream_event_is_documented() -> None:
    doc = (REPO / "docs" / "cluster.md").read_text()
    source = "".join(path.read_text() for path in (REPO / "relay_app").rglob("*.py"))
    logged = r'(?:\.info|\.warning|\.error)\(\s*"((?:cluster|upstream)_[a-z_]+)'
    events = set(re.findall(logged, source))
    assert events >= {"cluster_joined", "upstream_opened", "upstream_closed"}, events
    missing = [event for event in sorted(events) if f"`{event}`" not in doc]
    assert not missing, missing


def test_the_readmes_token_steps_work_as_written(tmp_path: Path) -> None:
    """The README's "On a shared LAN" block, run by bash as a user types it (on free ports):
    the token it prints opens the server it started."""
    readme = (REPO / "README.md").read_text()
    block = readme.split("## On a shared LAN")[1].split("```bash\n")[1].split("```")[0]
    assert "export RELAY_AUTH__SECRET" in block and "make run &" in block
    port, audio_port = free_port(), free_port()
    env = {
        **os.environ,
        "RELAY_SERVER__PORT": str(port),
        "RELAY_SERVER__AUDIO_PORT": str(audio_port),
        "RELAY_WEBRTC__ICE_ADDRESSES": '["127.0.0.1"]',
    }
    script = subprocess.Popen(
        ["bash", "-c", block],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # `make run &` lives on in this group: stopped below
    )
    try:
        token = ""
        assert script.stdout is not None
        for line in script.stdout:
            if line.count(".") == 2 and line.startswith("ey"):
                token = line.strip()
                break
        assert token, "the token command printed no token"
        # The server's log lines go on into the same pipe: keep reading them.
        threading.Thread(target=script.stdout.read, daemon=True).start()
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        headers = {"Authorization": f"Bearer {token}"}
        assert httpx.get(f"{base}/stream/status", headers=headers).status_code == 200
        assert httpx.get(f"{base}/stream/status").status_code == 401  # the secret is on
    finally:
        os.killpg(script.pid, signal.SIGTERM)
        script.wait(timeout=20)
