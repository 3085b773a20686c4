"""config.py: defaults from the guide, file and env precedence, errors that name the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from relay_app.core.config import ConfigError, load_settings


def test_defaults_match_the_guide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RELAY_CONFIG", raising=False)
    settings = load_settings()
    assert (settings.server.host, settings.server.port, settings.server.audio_port) == (
        "0.0.0.0",
        8080,
        8081,
    )
    assert settings.server.max_connections == 50  # the guide's; the stream limits fit in it
    assert settings.webrtc.ice_servers == [] and settings.webrtc.connection_timeout == 30
    constraints = settings.webrtc.audio_constraints
    assert (constraints.sample_rate, constraints.channels, constraints.latency) == (16000, 1, 0)
    assert settings.visualization.downsample == 5


def test_env_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"server": {"port": 9000, "max_connections": 10}}))
    monkeypatch.setenv("RELAY_SERVER__MAX_CONNECTIONS", "20")
    monkeypatch.setenv("RELAY_WEBRTC__ICE_ADDRESSES", '["127.0.0.1"]')
    settings = load_settings(path)
    assert settings.server.port == 9000 and settings.server.max_connections == 20
    assert settings.webrtc.ice_addresses == ["127.0.0.1"]


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"server": {"port": 70000}}, "server.port"),
        ({"server": {"max_connections": 0}}, "server.max_connections"),
        ({"webrtc": {"ice_addresses": ["not-an-ip"]}}, "webrtc.ice_addresses"),
        (
            {"webrtc": {"audio_constraints": {"sample_rate": 1}}},
            "webrtc.audio_constraints.sample_rate",
        ),
        ({"logging": {"format": "xml"}}, "logging.format"),
        ({"channels": {"no spaces": {"label": "x"}}}, "channels"),
        ({"channels": {"stream_1": {"label": "x"}}}, "not starting with stream_"),
        ({"channels": {"english": {}}}, "channels.english.label"),
        ({"nonsense": 1}, "nonsense: unknown key"),
        ({"server": {"certfile": "cert.pem"}}, "certfile and keyfile"),
        ({"webrtc": {"udp_port_range": [40100, 40000]}}, "udp_port_range must be"),
        (
            {"webrtc": {"udp_port_range": [40000, 40100], "ice_servers": [{"urls": "stun:x"}]}},
            "cannot be combined with ice_servers",
        ),
        ({"webrtc": {"udp_port": 0}}, "webrtc.udp_port"),
        ({"webrtc": {"udp_port": 70000}}, "webrtc.udp_port"),
        ({"webrtc": {"udp_port": "media"}}, "webrtc.udp_port"),
        (
            {"webrtc": {"udp_port": 3478, "udp_port_range": [40000, 40100]}},
            "udp_port and udp_port_range cannot both be set: choose one",
        ),
        (
            {"webrtc": {"udp_port": 3478, "ice_servers": [{"urls": "stun:x"}]}},
            "udp_port cannot be combined with ice_servers",
        ),
        ({"cluster": {"redis_url": "redis://127.0.0.1:6379/0"}}, "advertise_url is required"),
        ({"cluster": {"redis_url": "http://x", "advertise_url": "ws://h/ws"}}, "redis_url must"),
        ({"cluster": {"advertise_url": "http://h:8080/ws"}}, "cluster.advertise_url"),
        ({"cluster": {"node_ttl": 1, "heartbeat_interval": 2}}, "node_ttl must be longer"),
        ({"cluster": {"node_id": "no spaces"}}, "cluster.node_id"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, config: dict[str, object], key: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    with pytest.raises(ConfigError) as error:
        load_settings(path)
    assert key in str(error.value)


def test_unreadable_or_invalid_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_settings(bad)


def test_the_guides_top_level_audio_constraints_are_moved_with_a_warning(
    tmp_path: Path,
) -> None:
    """The guide's problem 8 puts `audio_constraints` at the top level; it lives under webrtc."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"audio_constraints": {"sample_rate": 16000, "latency": 0}}))
    settings = load_settings(path)
    assert settings.webrtc.audio_constraints.sample_rate == 16000
    assert settings.moved_keys == [("audio_constraints", "webrtc.audio_constraints")]
    # Both places: the new place wins, key by key.
    path.write_text(
        json.dumps(
            {
                "audio_constraints": {"sample_rate": 8000, "channels": 2},
                "webrtc": {"audio_constraints": {"sample_rate": 24000}},
            }
        )
    )
    constraints = load_settings(path).webrtc.audio_constraints
    assert (constraints.sample_rate, constraints.channels) == (24000, 2)
    # A bad value in the old place is named by its new key, with a note saying so.
    path.write_text(json.dumps({"audio_constraints": {"sample_rate": 1}}))
    with pytest.raises(ConfigError) as error:
        load_settings(path)
    assert "webrtc.audio_constraints.sample_rate" in str(error.value)
    assert "(audio_constraints in the file is read as webrtc.audio_constraints)" in str(error.value)


def test_the_guides_commented_snippets_get_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{\n  "webrtc": {\n    "connection_timeout": 60 // Increase from 30\n  }\n}\n')
    with pytest.raises(ConfigError, match="JSON has no comments"):
        load_settings(path)


def test_default_limits_agree_with_each_other() -> None:
    from relay_app.core.config import Settings, unreachable_limits

    settings = Settings()
    assert unreachable_limits(settings) == []
    assert settings.server.max_connections >= (
        settings.streams.max_receivers + settings.streams.max_streams
    )


def test_a_limit_another_limit_makes_unreachable_is_named(tmp_path: Path) -> None:
    from relay_app.core.config import unreachable_limits

    path = tmp_path / "config.json"
    path.write_text(
        json.dumps(
            {"server": {"max_connections": 30}, "webrtc": {"udp_port_range": [40000, 40020]}}
        )
    )
    problems = unreachable_limits(load_settings(path))
    assert any("server.max_connections=30" in p for p in problems), problems
    assert any("udp_port_range has 21 ports" in p for p in problems), problems
