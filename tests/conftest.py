"""Fixtures: real servers on 127.0.0.1, real aiortc clients, and the leak check after each test."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from relay_app.tools.testing import ServerProcess, deep_merge
from relay_app.webrtc.ice import use_host_addresses

# The test clients gather media candidates on loopback only, like the server under test.
use_host_addresses(["127.0.0.1"])


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiortc is asyncio-only


def finish_server(server: ServerProcess) -> None:
    code = server.stop()
    assert code == 0, f"server exit code {code}; stderr: {server.stderr[-20:]}"
    assert not server.bad_lines, f"non-JSON lines on the server's stdout: {server.bad_lines[:5]}"
    tracebacks = [e for e in server.events if "exception" in e]
    assert not tracebacks, f"the server logged tracebacks: {tracebacks[:3]}"


RELAY_MODES = ["forward", "transcode"]


@pytest.fixture(scope="module", params=RELAY_MODES)
def relay_mode(request: pytest.FixtureRequest) -> str:
    """Every scenario runs against both relay modes (relay.mode)."""
    return str(request.param)


@pytest.fixture(scope="module")
def shared_server(
    tmp_path_factory: pytest.TempPathFactory, relay_mode: str
) -> Iterator[ServerProcess]:
    yield from serving(tmp_path_factory.mktemp("server"), {"relay": {"mode": relay_mode}})


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


@pytest.fixture
def server(shared_server: ServerProcess) -> Iterator[ServerProcess]:
    """The module's server; after the test, every live count must be back to zero."""
    yield shared_server
    assert_no_leaks(shared_server)


def assert_no_leaks(server: ServerProcess) -> None:
    """Sessions, task groups, peer connections, relay subscriptions at zero; tasks at baseline."""
    server.wait_idle()


@pytest.fixture
def make_server(tmp_path: Path, relay_mode: str) -> Iterator[Callable[..., ServerProcess]]:
    """Start a server with extra config for this test only; checked and stopped after it."""
    yield from _servers(tmp_path, relay_mode)


@pytest.fixture
def make_forward_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """`make_server` in forward mode only: for scenarios about the WebSocket, limits and
    sessions that the relay mode does not touch (each run costs suite time)."""
    yield from _servers(tmp_path, "forward")


def _servers(tmp_path: Path, relay_mode: str) -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def _make(config: dict[str, Any] | None = None, **kwargs: Any) -> ServerProcess:
        config = deep_merge({"relay": {"mode": relay_mode}}, config or {})
        server = ServerProcess(tmp_path, config, **kwargs).start()
        started.append(server)
        server.take_baseline()
        return server

    try:
        yield _make
        for server in started:
            if server.proc is not None and server.proc.poll() is None:
                server.wait_idle()
                finish_server(server)
    finally:
        for server in started:  # a failed check must not leave a server running
            server.stop()


def require_namespaces(tools: tuple[str, ...] = ("ip",)) -> None:
    """Skip unless this machine can build network namespaces; under CI=true, fail instead."""
    reason = _namespaces_unavailable(tools)
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and this test needs network namespaces: {reason}")
        pytest.skip(reason)


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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Scenarios marked `mode_independent` (page logic, the HTTP path, which both relay modes
    share) run in forward mode only: the transcode copy would test the same code again and
    cost suite time. Deselected, not skipped: nothing here depends on the machine."""
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        mode = callspec.params.get("relay_mode") if callspec is not None else None
        once = item.get_closest_marker("mode_independent") is not None
        (drop if once and mode == "transcode" else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
