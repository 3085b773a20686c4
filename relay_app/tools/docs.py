"""The reference docs generated from the code: docs/configuration.md, docs/config.example.json
and docs/metrics.md (`python -m relay_app.config [--example]`, `python -m relay_app.prometheus`;
tests fail when a committed file drifts from what these print)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, SecretStr

from ..core.config import Settings
from ..endpoints.prometheus import metrics_markdown
from ..streams.context import RelayContext


def iter_keys(
    model: type[BaseModel] = Settings, prefix: str = ""
) -> list[tuple[str, Any, str, str]]:
    """(dotted key, default, type, description) for every leaf key, in declaration order."""
    rows: list[tuple[str, Any, str, str]] = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows.extend(iter_keys(annotation, key + "."))
            continue
        default = field.get_default(call_default_factory=True)
        if isinstance(default, SecretStr):
            default = "**********"
        type_name = getattr(annotation, "__name__", None) or str(annotation)
        if type_name == "Literal":
            type_name = "one of " + ", ".join(map(str, getattr(annotation, "__args__", ())))
        rows.append((key, default, str(type_name).replace("typing.", ""), field.description or ""))
    return rows


def configuration_markdown() -> str:
    """docs/configuration.md, generated from the model (a test fails when they drift)."""
    lines = [
        "# Configuration",
        "",
        "<!-- Generated from relay_app/core/config.py by `python -m relay_app.config > "
        "docs/configuration.md`; tests/operations/test_docs.py fails when this file drifts. -->",
        "",
        "Settings come from built-in defaults, then `config.json` (`--config PATH` or the",
        "`RELAY_CONFIG` environment variable), then environment variables, highest last.",
        "An environment variable is `RELAY_` + the key in upper case with `__` between levels:",
        "`server.port` is `RELAY_SERVER__PORT`; lists and objects are written as JSON",
        "(`RELAY_WEBRTC__ICE_ADDRESSES='[\"127.0.0.1\"]'`). An unknown key or a bad value stops",
        "the server at startup with a message naming the key (exit code 2).",
        "",
        "| key | default | type | meaning |",
        "|---|---|---|---|",
    ]
    for key, default, type_name, description in iter_keys():
        shown = json.dumps(default)
        type_name = type_name.replace("|", "or")
        lines.append(f"| `{key}` | `{shown}` | {type_name} | {description} |")
    lines += [
        "",
        "Example `config.json` (the guide's keys):",
        "",
        "```json",
        json.dumps(
            {
                "server": {"host": "0.0.0.0", "port": 8080, "audio_port": 8081},
                "webrtc": {"ice_servers": [], "connection_timeout": 30},
                "visualization": {"enabled": True, "downsample": 5},
            },
            indent=2,
        ),
        "```",
        "",
    ]
    return "\n".join(lines)


def example_config() -> str:
    """docs/config.example.json: every key at its default (a test fails when they drift)."""
    data = Settings().model_dump(mode="json")
    data["auth"]["secret"] = None
    return json.dumps(data, indent=2) + "\n"


async def default_metrics_markdown() -> str:
    """docs/metrics.md for a server on the defaults (its collector reads tasks: needs a loop)."""
    return metrics_markdown(RelayContext.from_settings(Settings()))
