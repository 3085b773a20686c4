"""The docs say what the code does: generated config table, every log event documented."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
from pathlib import Path

import httpx

from relay_app.core.config import Settings, load_settings
from relay_app.core.logs import LEGACY_MESSAGES
from relay_app.tools.docs import configuration_markdown, example_config
from relay_app.tools.testing import REPO, free_port

from .qr_reader import read_terminal_qr


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
    assert events >= {"admin_session_disconnected", "recording_failed"}, events
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


def _readme_section(title: str) -> str:
    readme = (REPO / "README.md").read_text()
    return readme.split(f"## {title}\n")[1].split("\n## ")[0]


def test_the_readmes_shared_lan_steps_work_as_typed_in_the_shells_they_name(
    tmp_path: Path,
) -> None:
    """The README's "On a shared LAN" steps, run by bash as a user types them (on free ports,
    config.json in a temporary folder): the first terminal's server, then, once it has
    logged server_listening, the second terminal's commands. They print a token and an invite
    that open that server, and nothing on stderr (no warning, no refusal)."""
    section = _readme_section("On a shared LAN")
    first, second = re.findall(r"```bash\n(.*?)```", section, flags=re.S)[:2]
    assert section.index("In a first terminal") < section.index(first)
    assert section.index(first) < section.index("In a second terminal") < section.index(second)
    assert "make run" in first and not re.search(r"make run[^\n]*&", section)
    config = str(tmp_path / "config.json")
    first, second = first.replace("config.json", config), second.replace("config.json", config)
    port, audio_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")} | {
        "RELAY_SERVER__PORT": str(port),
        "RELAY_SERVER__AUDIO_PORT": str(audio_port),
        "RELAY_WEBRTC__ICE_ADDRESSES": '["127.0.0.1"]',
    }
    server = subprocess.Popen(
        ["bash", "-c", first],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # `make run` and its server: stopped below as a group
    )
    try:
        assert server.stdout is not None
        for line in server.stdout:
            if '"server_listening"' in line:
                break
        else:
            raise AssertionError("the first terminal's server never logged server_listening")
        # Its log lines go on into the pipe: keep reading them.
        threading.Thread(target=server.stdout.read, daemon=True).start()
        typed = subprocess.run(
            ["bash", "-e", "-c", second],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert typed.returncode == 0 and typed.stderr == "", typed.stderr
        lines = typed.stdout.splitlines()
        token = lines[0]
        assert token.count(".") == 2 and token.startswith("ey"), lines[0]
        base = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {token}"}
        assert httpx.get(f"{base}/stream/status", headers=headers).status_code == 200
        assert httpx.get(f"{base}/stream/status").status_code == 401  # the secret is on
        assert lines[1].startswith("Invite to English, works until "), lines[1]
        link = lines[-1]
        assert f":{port}/listen/english?token=" in link, link
        assert read_terminal_qr(typed.stdout) == link
        invite = link.split("?token=")[1]
        status = httpx.get(f"{base}/stream/status", headers={"Authorization": f"Bearer {invite}"})
        assert [c["label"] for c in status.json()["channels"]] == ["English"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=20)


def test_the_readme_names_every_package_the_tests_need_and_ci_installs() -> None:
    """What `make test` needs, in the README, is what .ci/run installs (as root)."""
    ci = (REPO / ".ci" / "run").read_text()
    packages = re.findall(r"\|\| missing\+=\(([^) ]+)", ci)
    assert "zbar-tools" in packages and len(packages) >= 10, packages
    said = _readme_section("Two commands")
    missing = [package for package in packages if package not in said]
    assert not missing, missing
    assert "sudo .ci/run" in said
