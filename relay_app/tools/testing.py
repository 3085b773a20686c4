"""Helpers for tests/ and bench/ (like `trio.testing`): a real server process, the client CLI as
a child process, free ports, and the one idle/leak check.

`ServerProcess` runs the relay in a child process on 127.0.0.1 ephemeral ports. Its stdout is
read line by line: every line must be JSON (the log contract), and tests look events up by
name. Media stays on loopback: the config pins `webrtc.ice_addresses`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from ..client import RelayClient, ToneTrack, dominant_frequency

# The checkout these tools run from: the first folder above that holds pyproject.toml, so the
# answer does not change when this module moves.
REPO = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
# Tasks counted per owner in /metrics' `live` (asyncio_tasks is everyone's, so not compared).
TASK_OWNERS = ("relay_app_tasks", "aiortc_tasks", "aioice_tasks")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_udp_port() -> int:
    """A UDP port free on 127.0.0.1 now (for webrtc.udp_port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


BASE_CONFIG: dict[str, Any] = {
    "server": {"host": "127.0.0.1", "port": 0, "audio_port": 0},
    "webrtc": {"ice_addresses": ["127.0.0.1"]},
}


def start_client(ws_url: str, *args: str, **popen: Any) -> subprocess.Popen[str]:
    """`python -m relay_app.client` with media on loopback, as a child process."""
    command = [sys.executable, "-m", "relay_app.client", "--url", ws_url]
    return subprocess.Popen(
        [*command, "--ice-address", "127.0.0.1", *args],
        cwd=REPO,
        text=True,
        **({"stdout": subprocess.PIPE, "stderr": subprocess.PIPE} | popen),
    )


class ServerProcess:
    def __init__(
        self,
        tmp_dir: Path,
        config: dict[str, Any] | None = None,
        command: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.config = deep_merge(BASE_CONFIG, config or {})
        self.config_path = tmp_dir / f"config-{time.monotonic_ns()}.json"
        self.config_path.write_text(json.dumps(self.config))
        self.command = command or [
            sys.executable,
            "-m",
            "relay_app",
            "--config",
            str(self.config_path),
        ]
        self.env = {**os.environ, "RELAY_CONFIG": str(self.config_path), **(env or {})}
        self.lines: list[str] = []
        self.events: list[dict[str, Any]] = []
        self.bad_lines: list[str] = []
        self.stderr: list[str] = []
        certfile = self.config["server"].get("certfile")
        # TLS servers are reached over https, trusting their own (self-signed) certificate.
        self.scheme = "https" if certfile else "http"
        self.verify: Any = ssl.create_default_context(cafile=certfile) if certfile else True
        self.headers: dict[str, str] = {}
        self.port = 0
        self.audio_port = 0
        self._listening = threading.Event()
        self.baseline: dict[str, Any] | None = None
        self.proc: subprocess.Popen[str] | None = None

    # Lifetime --------------------------------------------------------------------------------
    def start(self, timeout: float = 30, wait_for_http: bool = False) -> ServerProcess:
        """Start; ready when it logs `server_listening` (or, with a foreign command, /health)."""
        self.proc = subprocess.Popen(
            self.command,
            cwd=REPO,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        if wait_for_http:
            self._wait_http(timeout)
        elif not self._listening.wait(timeout):
            self.stop()
            raise RuntimeError(f"server did not start: {self.stderr[-20:]} {self.lines[-20:]}")
        return self

    def _wait_http(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.get("/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not answer /health: {self.stderr[-20:]}")

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            try:
                event = json.loads(line)
                if not isinstance(event, dict):
                    raise ValueError(line)
            except ValueError:
                self.bad_lines.append(line)
                continue
            self.events.append(event)
            if event.get("event") == "server_listening":
                self.port, self.audio_port = event["port"], event["audio_port"]
                self._listening.set()

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line.rstrip("\n"))

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM and wait; return the exit code (None if it had to be killed)."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None

    # Access ------------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def status_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.audio_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def get(self, path: str, status_port: bool = False, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, status_port, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def request(
        self, method: str, path: str, status_port: bool = False, **kwargs: Any
    ) -> httpx.Response:
        base = self.status_url if status_port else self.base_url
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return httpx.request(
            method, base + path, timeout=5, verify=self.verify, headers=headers, **kwargs
        )

    def metrics(self) -> dict[str, Any]:
        return dict(self.get("/metrics").json())

    def find(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        return [
            e
            for e in list(self.events)
            if e.get("event") == event and all(e.get(k) == v for k, v in fields.items())
        ]

    def wait_event(self, event: str, timeout: float = 10, **fields: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.find(event, **fields)
            if found:
                return found[-1]
            time.sleep(0.05)
        raise AssertionError(f"no {event} {fields} in server log within {timeout} s")

    def take_baseline(self) -> dict[str, Any]:
        """Once the server is idle: what `wait_idle` compares tasks with after each scenario."""
        self.baseline = wait_idle(self.metrics)
        return self.baseline

    def wait_idle(self, timeout: float = 8) -> dict[str, Any]:
        return wait_idle(self.metrics, self.baseline, timeout)


def idle_problems(
    metrics: dict[str, Any], baseline: dict[str, Any] | None = None, threads: bool = False
) -> list[str]:
    """What is still held: live counts above zero, tasks (and threads) above the baseline."""
    live = metrics["live"]
    problems = [f"{k}={v}" for k, v in live.items() if v and not k.endswith("_tasks")]
    if metrics["active_streams"]:
        problems.append(f"active_streams={metrics['active_streams']}")
    if baseline is not None:
        problems += [
            f"{k}={live[k]} (baseline {baseline['live'][k]})"
            for k in TASK_OWNERS
            if live[k] > baseline["live"][k]
        ]
        was, now = baseline["process"]["threads"], metrics["process"]["threads"]
        if threads and now > was:
            problems.append(f"threads={now} (baseline {was})")
    return problems


def wait_idle(
    fetch_metrics: Callable[[], dict[str, Any]],
    baseline: dict[str, Any] | None = None,
    timeout: float = 8,
    threads: bool = False,
) -> dict[str, Any]:
    """Poll /metrics until nothing is held (see `idle_problems`); AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        metrics = fetch_metrics()
        problems = idle_problems(metrics, baseline, threads)
        if not problems:
            return metrics
        if time.monotonic() > deadline:
            raise AssertionError(f"resources left after the scenario: {problems}")
        time.sleep(0.05)


@asynccontextmanager
async def listening_pair(
    ws_url: str, frequency: float = 440
) -> AsyncIterator[tuple[RelayClient, RelayClient]]:
    """A sender of a tone and a receiver that has heard 0.5 s of it: the bystanders whose
    audio must keep flowing while a scenario misbehaves beside them."""
    async with RelayClient.connect(ws_url) as sender:
        await sender.start_sending(ToneTrack(frequency))
        async with RelayClient.connect(ws_url) as receiver:
            await receiver.start_receiving(sender.stream_id)
            await receiver.wait_audio(0.5)
            yield sender, receiver


async def assert_kept_hearing(
    receiver: RelayClient, heard: float, since: float, frequency: float = 440
) -> None:
    """`receiver`, which had heard `heard` s of audio at monotonic time `since`, has heard
    (nearly) everything since then, and it is still the tone."""
    elapsed = time.monotonic() - since
    await receiver.wait_audio(heard + elapsed * 0.8)
    recent = receiver.recorder.audio(1.0)
    assert abs(dominant_frequency(recent, receiver.recorder.sample_rate) - frequency) <= 10


class RedisProcess:
    """Debian's `redis-server` on a free loopback port, no persistence, stopped by its PID
    (the cluster tests' real Redis; `.ci/run` installs it)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10) -> RedisProcess:
        self.proc = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--loglevel", "warning"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def cluster_config(redis_url: str, node_id: str, **cluster: Any) -> dict[str, Any]:
    """A node of a test cluster: its port chosen up front, since other nodes dial it."""
    port = free_port()
    settings = {
        "redis_url": redis_url,
        "node_id": node_id,
        "advertise_url": f"ws://127.0.0.1:{port}/ws",
        "heartbeat_interval": 0.5,
        "node_ttl": 2.0,
        "upstream_linger": 1.0,
        **cluster,
    }
    return {"server": {"port": port}, "cluster": settings}
