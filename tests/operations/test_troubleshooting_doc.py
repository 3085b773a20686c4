"""The diagnostic commands of docs/troubleshooting.md, run against a live server.

Each ```console block holds `$ command` lines, each followed by lines its output must contain.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from relay_app.tools.testing import REPO, ServerProcess

from ..helpers import need

DOC = REPO / "docs" / "troubleshooting.md"


def console_commands() -> list[tuple[str, list[str]]]:
    commands: list[tuple[str, list[str]]] = []
    for block in re.findall(r"```console\n(.*?)```", DOC.read_text(), flags=re.S):
        for line in block.splitlines():
            if line.startswith("$ "):
                commands.append((line[2:], []))
            elif line.strip() and commands:
                commands[-1][1].append(line.strip())
    return commands


def test_the_doc_has_checked_commands() -> None:
    commands = console_commands()
    assert len(commands) >= 5
    assert any("/health" in c for c, _ in commands)
    assert any("relay_app.check" in c for c, _ in commands)


@pytest.mark.parametrize(("command", "expected"), console_commands())
@pytest.mark.mode_independent  # the guide's commands: the relay mode does not change it
def test_troubleshooting_command_gives_the_documented_output(
    server: ServerProcess, command: str, expected: list[str]
) -> None:
    if "jq" in command:
        need("jq")
    live = (
        command.replace("ws://localhost:8080", f"ws://127.0.0.1:{server.port}")
        .replace("http://localhost:8080", server.base_url)
        .replace("http://localhost:8081", server.status_url)
        .replace(".venv/bin/python", sys.executable)
    )
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", live],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 0, (live, result.stderr)
    for text in expected:
        assert text in result.stdout, (live, text, result.stdout)
