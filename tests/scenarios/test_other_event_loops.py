"""The relay on another event loop: Hypercorn's own uvloop worker (`hypercorn -k uvloop`).

uvloop has none of asyncio's selector-loop internals (no transport `_sock`, no `_add_reader`):
the server says once, at info, that batched reads are off, reads every socket as it comes,
and the fast path sends each listener's copy through the transport's public `sendto`. Before,
the first forwarded packet raised AttributeError inside the speaker's DTLS task and listeners
heard nothing. (macOS, without epoll, takes the same road: tests/internals.)
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from relay_app.client import Recorder, RelayClient, ToneTrack, dominant_frequency
from relay_app.tools.testing import ServerProcess, free_port, free_udp_port

from ..helpers import finish_server
from .test_hardening_round4_transport import server_media_address

pytestmark = [pytest.mark.anyio, pytest.mark.mode_independent]


@pytest.fixture
def uvloop_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """`hypercorn -k uvloop -c hypercorn.toml relay_app.asgi:app`, bound to loopback."""
    with uvloop_server_with(tmp_path, {}) as server:
        yield server


@contextmanager
def uvloop_server_with(tmp_path: Path, config: dict[str, Any]) -> Iterator[ServerProcess]:
    port, audio_port = free_port(), free_port()
    hypercorn = str(Path(sys.executable).parent / "hypercorn")
    server = ServerProcess(
        tmp_path,
        {"server": {"port": port, "audio_port": audio_port}, **config},
        command=[
            hypercorn,
            "-k",
            "uvloop",
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
    try:
        server.start(wait_for_http=True)
        server.take_baseline()
        yield server
        server.wait_idle()
        finish_server(server)
    finally:
        server.stop()


async def test_under_hypercorns_uvloop_worker_listeners_hear_the_speaker_and_nothing_errs(
    uvloop_server: ServerProcess,
) -> None:
    server = uvloop_server
    async with RelayClient.connect(server.ws_url) as sender:
        await sender.start_sending(ToneTrack(440))
        async with (
            RelayClient.connect(server.ws_url) as first,
            RelayClient.connect(server.ws_url) as second,
        ):
            await first.start_receiving(recorder=Recorder())
            await second.start_receiving(recorder=Recorder())
            for listener in (first, second):
                await listener.wait_audio(1.5)
                heard = dominant_frequency(listener.recorder.audio(1.0), 48000)
                assert abs(heard - 440) <= 10, heard
            relay = server.metrics()["relay"]
            assert relay["mode"] == "forward" and relay["packets_out"] > 0
    (off,) = server.find("batched_reads_off")
    assert off["level"] == "info" and "uvloop" in off["reason"], off
    errors = [e for e in server.events if e.get("level") in ("error", "critical")]
    assert not errors, errors[:3]
    assert not [line for line in server.stderr if "Traceback" in line or "Error" in line]


async def test_under_uvloop_the_one_udp_port_serves_every_listener(tmp_path: Path) -> None:
    """webrtc.udp_port on uvloop: the port is read from the loop's public add_reader (never
    in batches: batched reads are off) and each copy leaves on the shared socket."""
    udp_port = free_udp_port()
    with uvloop_server_with(tmp_path, {"webrtc": {"udp_port": udp_port}}) as server:
        async with RelayClient.connect(server.ws_url) as sender:
            await sender.start_sending(ToneTrack(440))
            async with RelayClient.connect(server.ws_url) as listener:
                await listener.start_receiving(recorder=Recorder())
                await listener.wait_audio(1.5)
                heard = dominant_frequency(listener.recorder.audio(1.0), 48000)
                assert abs(heard - 440) <= 10, heard
                assert server_media_address(listener) == ("127.0.0.1", udp_port)
                assert server.metrics()["media_port"]["batched"] is False
        errors = [e for e in server.events if e.get("level") in ("error", "critical")]
        assert not errors, errors[:3]
