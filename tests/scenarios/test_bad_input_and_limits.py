"""Bad clients, limits and timeouts: clear errors, clean closes, and nobody else's audio lost."""

from __future__ import annotations

import json
from collections.abc import Callable

import anyio
import pytest
import websockets
from aiortc import RTCPeerConnection

from relay_app.client import RelayClient, ToneTrack, dominant_frequency
from relay_app.core import protocol as p
from relay_app.tools.testing import ServerProcess

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def relay_mode() -> str:
    """These scenarios are about the WebSocket, tokens and limits, which the relay mode does
    not touch: forward mode only (each run costs suite time; conftest runs both otherwise)."""
    return "forward"


async def _offer_sdp(kind: str) -> str:
    pc = RTCPeerConnection()
    try:
        if kind == "datachannel":
            pc.createDataChannel("chat")
        else:
            pc.addTransceiver(kind, direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)
    finally:
        await pc.close()


async def test_bad_input_gets_clear_errors_and_others_keep_hearing(server: ServerProcess) -> None:
    audio_offer = await _offer_sdp("audio")
    bad_inputs: list[tuple[str | bytes, str]] = [
        ("this is not json", "invalid JSON"),
        ("[1, 2, 3]", "must be a JSON object"),
        ('{"no_type": 1}', 'needs a string "type"'),
        ('{"type": "bogus"}', "unknown message type 'bogus'"),
        ('{"type": "start_sending"}', "invalid 'start_sending' message: sdp"),
        ('{"type": "start_sending", "sdp": ""}', "invalid 'start_sending' message: sdp"),
        ('{"type": "start_sending", "sdp": "garbage"}', "no audio"),
        (json.dumps({"type": "start_sending", "sdp": await _offer_sdp("datachannel")}), "no audio"),
        (
            json.dumps({"type": "start_sending", "sdp": await _offer_sdp("video")}),
            "no audio",
        ),
        (
            json.dumps({"type": "start_sending", "sdp": audio_offer[: len(audio_offer) // 2]}),
            "offer",
        ),
        ('{"type": "start_receiving", "stream_id": 42}', "invalid 'start_receiving' message"),
        ('{"type": "answer", "sdp": "v=0"}', "unexpected answer"),
        ("x" * 100_000, "message too large"),  # larger than 2x the limit: Hypercorn, 1009
        (b"\x00\x01binary", "binary frames are not supported"),
    ]
    async with RelayClient.connect(server.ws_url) as sender:
        await sender.start_sending(ToneTrack(440))
        async with RelayClient.connect(server.ws_url) as receiver:
            await receiver.start_receiving()
            await receiver.wait_audio(0.5)
            async with RelayClient.connect(server.ws_url) as bad:
                for payload, expected in bad_inputs:
                    await bad.send(payload)
                    reply = await bad.next_message()
                    assert isinstance(reply, p.Error), (payload[:60], reply)
                    assert expected in reply.message, (payload[:60], reply)
                    # The session stays usable after each mistake.
                    assert await bad.request(p.Ping(), "pong") == p.Pong()
            # A second start_sending on a sending socket.
            await sender.send({"type": "start_sending", "sdp": audio_offer})
            reply = await sender.expect("error")
            assert isinstance(reply, p.Error) and "already sending" in reply.message
            # The receiver kept hearing the tone throughout.
            heard = receiver.recorder.seconds
            await receiver.wait_audio(heard + 1.0)
            recent = receiver.recorder.audio(1.0)
            assert abs(dominant_frequency(recent, receiver.recorder.sample_rate) - 440) <= 10
    errors = [e for e in server.events if e.get("level") in ("error", "critical")]
    assert not errors, errors


@pytest.mark.parametrize("max_connections", [2])
async def test_over_max_connections_refused_with_1013(
    make_server: Callable[..., ServerProcess], max_connections: int
) -> None:
    server = make_server({"server": {"max_connections": max_connections}})
    async with RelayClient.connect(server.ws_url), RelayClient.connect(server.ws_url):
        async with websockets.connect(server.ws_url) as refused:
            reply = json.loads(await refused.recv())
            assert reply["type"] == "error"
            assert "server.max_connections" in reply["message"]
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await refused.recv()
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1013
        assert server.metrics()["active_connections"] == max_connections
    server.wait_event("connection_refused")
    # Once a slot is free, a new client gets in.
    async with RelayClient.connect(server.ws_url) as client:
        assert client.welcome is not None


@pytest.fixture
def quick_timeout_server(make_forward_server: Callable[..., ServerProcess]) -> ServerProcess:
    return make_forward_server({"webrtc": {"connection_timeout": 1.0}})


async def test_idle_session_closes_after_connection_timeout(
    quick_timeout_server: ServerProcess,
) -> None:
    server = quick_timeout_server
    async with websockets.connect(server.ws_url) as ws:
        welcome = json.loads(await ws.recv())
        assert welcome["config"]["connection_timeout"] == 1.0
        assert welcome["config"]["idle_close_after"] == 1.5
        started = anyio.current_time()
        reply = json.loads(await ws.recv())
        assert reply["type"] == "error" and "idle timeout" in reply["message"]
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
        elapsed = anyio.current_time() - started
        assert 1.3 <= elapsed <= 3.5, elapsed
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
        assert closed.value.rcvd.reason == "idle timeout"
    server.wait_event("session_idle_timeout", connection_id=welcome["connection_id"])


async def test_a_client_pinging_every_connection_timeout_is_never_dropped(
    quick_timeout_server: ServerProcess,
) -> None:
    """The guide's keepalive: a ping every `connection_timeout` seconds, exactly (its own
    example is 30 s against a 30 s timeout). The pings arrive a little late each time, so the
    server closes only after 1.5 intervals of silence."""
    async with RelayClient.connect(quick_timeout_server.ws_url) as client:
        next_ping = anyio.current_time()
        for _ in range(6):  # 6 intervals of 1 s
            await anyio.sleep_until(next_ping)
            assert await client.request(p.Ping(), "pong") == p.Pong()
            next_ping += 1.0
        await anyio.sleep_until(next_ping)
        assert not client.closed.is_set()
        assert await client.request(p.Ping(), "pong") == p.Pong()
        assert not quick_timeout_server.find("session_idle_timeout")


async def test_flowing_media_keeps_silent_sessions_open(
    quick_timeout_server: ServerProcess,
) -> None:
    """A listener that never pings is not idle while its audio flows."""
    server = quick_timeout_server
    async with RelayClient.connect(server.ws_url) as sender:
        await sender.start_sending(ToneTrack(440))
        async with RelayClient.connect(server.ws_url) as receiver:
            await receiver.start_receiving()
            await receiver.wait_audio(2.5)
            assert not receiver.closed.is_set() and not sender.closed.is_set()


async def test_media_ports_stay_in_udp_port_range_and_a_full_range_says_so(
    make_server: Callable[..., ServerProcess],
) -> None:
    from relay_app.tools.testing import free_port

    low = free_port()
    while low > 65000:  # leave room for the range
        low = free_port()
    server = make_server({"webrtc": {"udp_port_range": [low, low + 1]}})
    async with RelayClient.connect(server.ws_url) as sender:
        await sender.start_sending(ToneTrack(440))
        answer = next(m for m in sender.messages if isinstance(m, p.AnswerOut))
        ports = {int(line.split()[5]) for line in answer.sdp.splitlines() if "a=candidate" in line}
        assert ports and ports <= {low, low + 1}, ports
        async with RelayClient.connect(server.ws_url) as receiver:
            await receiver.start_receiving()
            await receiver.wait_audio(0.5)
            async with RelayClient.connect(server.ws_url) as third:
                await third.send({"type": "start_receiving"})
                error = await third.expect("error")
                assert isinstance(error, p.Error) and "webrtc.udp_port_range" in error.message
                # The others keep hearing the tone.
                heard = receiver.recorder.seconds
                await receiver.wait_audio(heard + 0.5)
