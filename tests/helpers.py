"""Helpers the tests share: the one test secret, server lifetimes, the leak check, WAV files,
what a test needs from the machine (tools, network namespaces). Fixtures are in conftest.py;
what bench/ shares with the tests is in relay_app/tools/testing.py."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import time
import wave
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import anyio
import numpy as np
import pytest

from relay_app.core.auth import Role, mint
from relay_app.tools.testing import ServerProcess

# The one secret every test server with auth on uses (auth.secret), and its tokens.
SECRET = "relay-app-test-secret-0123456789abcdef0123"


def token(role: Role, ttl: float = 600, **kwargs: Any) -> str:
    return mint(SECRET, role, ttl, **kwargs)


def finish_server(server: ServerProcess) -> None:
    code = server.stop()
    assert code == 0, f"server exit code {code}; stderr: {server.stderr[-20:]}"
    assert not server.bad_lines, f"non-JSON lines on the server's stdout: {server.bad_lines[:5]}"
    tracebacks = [e for e in server.events if "exception" in e]
    assert not tracebacks, f"the server logged tracebacks: {tracebacks[:3]}"


def serving(
    tmp_dir: Path, config: dict[str, Any], headers: dict[str, str] | None = None
) -> Iterator[ServerProcess]:
    """A module's server: started, its baseline taken (with `headers` for a protected
    /metrics), and checked when the module is done."""
    server = ServerProcess(tmp_dir, config).start()
    try:
        server.headers = headers or {}
        server.take_baseline()
        yield server
        finish_server(server)
    finally:
        server.stop()


async def wait_until(
    condition: Callable[[], bool], timeout: float = 10, step: float = 0.05
) -> float:
    """Seconds until `condition` held, polled every `step` without blocking the event loop:
    a scenario's speakers (their tones) and clients (their answers to consent checks) run on
    it, and a blocking wait of seconds froze them. AssertionError after `timeout`."""
    started = time.monotonic()
    try:
        with anyio.fail_after(timeout):
            while not condition():
                await anyio.sleep(step)
    except TimeoutError:
        raise AssertionError(f"condition not met in {timeout} s") from None
    return time.monotonic() - started


async def server_event(server: ServerProcess, name: str, **fields: Any) -> dict[str, Any]:
    """`server.wait_event` (its log) read in a thread, for the same reason (`wait_until`)."""
    return await anyio.to_thread.run_sync(functools.partial(server.wait_event, name, **fields))


def assert_no_leaks(server: ServerProcess) -> None:
    """Sessions, task groups, peer connections, relay subscriptions at zero; tasks at baseline."""
    server.wait_idle()


def write_wav(path: Path, samples: np.ndarray, rate: int = 48000) -> Path:
    """A mono 16-bit WAV file of `samples` (floats in -1..1)."""
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes((np.clip(samples, -1, 1) * 32767).astype(np.int16).tobytes())
    return path


def unavailable(reason: str) -> NoReturn:
    """A test cannot run on this machine: a skip on a developer's, a failure under CI=true
    (where .ci/run installs everything, so a missing piece is a broken CI, never a pass)."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {reason} (.ci/run provides what the tests need)", pytrace=False)
    pytest.skip(reason)


def need(tool: str, package: str | None = None) -> str:
    """The path of the command `tool` (from Debian's `package`, named after it by default)."""
    path = shutil.which(tool)
    if path is None:
        unavailable(f"{tool} is missing: apt-get install -y {package or tool}")
    return path


def require_namespaces(tools: tuple[str, ...] = ("ip",)) -> None:
    """This machine can build network namespaces."""
    reason = _namespaces_unavailable(tools)
    if reason is not None:
        unavailable(f"this test needs network namespaces: {reason}")


def _namespaces_unavailable(tools: tuple[str, ...]) -> str | None:
    """Why this machine cannot build network namespaces, or None."""
    for tool in tools:
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (apt-get install -y iproute2 nftables)"
    if os.geteuid() != 0:
        return "building network namespaces needs root (CAP_NET_ADMIN)"
    probe = f"relayprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"the kernel refuses network namespaces: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], check=True)
    return None
