"""Faults: a frozen receiver, a sender whose network vanishes. Others keep hearing; the server
cleans up after the configured timeouts."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import anyio
import pytest

from relay_app.client import RelayClient, ToneTrack, dominant_frequency
from relay_app.core import protocol as p
from relay_app.tools.testing import ServerProcess, start_client

from ..helpers import wait_until

pytestmark = pytest.mark.anyio

TIMEOUT = 3.0  # webrtc.connection_timeout in these tests


@pytest.fixture
def fault_server(make_server: Callable[..., ServerProcess]) -> ServerProcess:
    return make_server(
        {
            "webrtc": {"connection_timeout": TIMEOUT},
            "streams": {"cleanup_interval": 0.5, "stale_after": 1.5},
        }
    )


@contextmanager
def client_process(server: ServerProcess, *args: str) -> Iterator[subprocess.Popen[str]]:
    process = start_client(server.ws_url, *args)
    try:
        yield process
    finally:
        process.send_signal(signal.SIGCONT)
        process.kill()
        process.wait(10)


async def test_frozen_receiver_does_not_delay_others_and_is_cleaned_up(
    fault_server: ServerProcess,
) -> None:
    server = fault_server
    async with RelayClient.connect(server.ws_url) as sender:
        stream_id = await sender.start_sending(ToneTrack(440))
        async with RelayClient.connect(server.ws_url) as good:
            await good.start_receiving(stream_id)
            with client_process(server, "listen", "--stream-id", stream_id) as frozen:
                await wait_until(lambda: server.metrics()["active_receivers"] == 2, 15)
                await anyio.sleep(1.0)
                frozen.send_signal(signal.SIGSTOP)  # stops reading its socket and its media
                heard, started = good.recorder.seconds, time.monotonic()
                took = await wait_until(lambda: server.metrics()["active_connections"] == 2, 20)
                # Cleaned up once silent for the timeout, counted from its last RTCP report
                # (sent every 0.5-1.5 s, noticed within 1 s) before the freeze.
                assert TIMEOUT - 2.5 <= took <= TIMEOUT + 5, took
                await anyio.sleep(1.0)
                elapsed = time.monotonic() - started
                # The good receiver heard (nearly) everything meanwhile, in time.
                await good.wait_audio(heard + elapsed * 0.9, timeout=2)
                recent = good.recorder.audio(1.0)
                assert abs(dominant_frequency(recent, good.recorder.sample_rate) - 440) <= 10
                assert server.metrics()["relay"]["latency"]["p95_ms"] < 50
    event = server.wait_event("session_idle_timeout")
    assert event["role"] == "receiver"


@pytest.mark.mode_independent  # the sweep watches the speaker's side, which both modes share
async def test_sender_whose_network_vanishes_is_swept_as_stale(
    fault_server: ServerProcess,
) -> None:
    server = fault_server
    with client_process(server, "send", "--tone", "440") as sender:
        await wait_until(lambda: server.metrics()["active_streams"] == 1, 15)
        stream_id = server.get("/stream/status").json()["active_streams"][0]
        async with RelayClient.connect(server.ws_url) as receiver:
            await receiver.start_receiving(stream_id)
            await receiver.wait_audio(0.5)
            sender.send_signal(signal.SIGSTOP)  # no more packets, no more WebSocket traffic
            ended = await receiver.expect("stream_ended", timeout=10)
            assert isinstance(ended, p.StreamEnded) and ended.stream_id == stream_id
            assert "no audio" in ended.reason
            server.wait_event("stale_stream_cleanup", stream_id=stream_id)
            # Then the silent sender's session itself times out. (Not "one connection left":
            # this receiver does not ping, so without media it times out too, a moment later.)
            sender_id = stream_id.removeprefix("stream_")
            await wait_until(
                lambda: bool(server.find("connection_cleanup", connection_id=sender_id)),
                TIMEOUT + 8,
            )
            assert server.find("connection_cleanup", connection_id=sender_id)[0]["reason"] == (
                "idle timeout"
            )
