"""Access control, cross-site protection, limits and headers: who gets in, and how far."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import anyio
import httpx
import jwt
import pytest
import websockets

from relay_app.client import RelayClient, ServerError, ToneTrack
from relay_app.core import protocol as p
from relay_app.core.auth import mint
from relay_app.core.errors import sole_error
from relay_app.tools.testing import REPO, ServerProcess

from ..helpers import SECRET, assert_no_leaks, token

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def relay_mode() -> str:
    """These scenarios are about the WebSocket, tokens and limits, which the relay mode does
    not touch: forward mode only (each run costs suite time; conftest runs both otherwise)."""
    return "forward"


SECURE_CONFIG = {  # (conftest's secure_server adds auth.secret)
    "auth": {"protect_metrics": True},
    "streams": {"max_streams": 2, "max_receivers": 2},
    "server": {"max_messages_per_second": 5},
    "webrtc": {"negotiation_timeout": 1.5},
}


@pytest.fixture
def server(secure_server: ServerProcess) -> Iterator[ServerProcess]:
    yield secure_server
    assert_no_leaks(secure_server)


async def refused(url: str, expected: str) -> None:
    """The connection gets an error naming the problem, then close 1008."""
    async with websockets.connect(url) as ws:
        reply = json.loads(await ws.recv())
        assert reply["type"] == "error" and expected in reply["message"], reply
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


async def test_no_expired_or_forged_token_is_refused_and_never_counted(
    server: ServerProcess,
) -> None:
    expired = jwt.encode({"aud": "relay_app", "role": "send", "exp": 1}, SECRET, "HS256")
    forged = mint("another-secret-that-is-long-enough-000000", "send", 600)
    before = server.metrics()
    refusals_before = len(server.find("connection_refused", kind="auth"))
    await refused(server.ws_url, "authentication timed out")
    await refused(f"{server.ws_url}?token={expired}", "expired")
    await refused(f"{server.ws_url}?token={forged}", "wrong signature")
    await refused(f"{server.ws_url}?token=garbage", "invalid access token")
    async with websockets.connect(server.ws_url) as ws:  # a first message that is not auth
        await ws.send(json.dumps({"type": "get_available_streams"}))
        reply = json.loads(await ws.recv())
        assert "authentication required" in reply["message"]
    # Counted as refusals, never as sessions (compared with before: the server is shared).
    metrics = server.metrics()
    assert metrics["sessions_total"] == before["sessions_total"]
    assert metrics["errors"]["auth"] == before["errors"].get("auth", 0) + 5
    assert len(server.find("connection_refused", kind="auth")) == refusals_before + 5


async def test_right_tokens_work_in_url_or_first_message(server: ServerProcess) -> None:
    async with RelayClient.connect(server.ws_url, token=token("send")) as sender:
        stream_id = await sender.start_sending(ToneTrack(440))
        async with RelayClient.connect(
            server.ws_url, token=token("receive"), token_in_url=False
        ) as receiver:
            assert await receiver.start_receiving() == stream_id
            await receiver.wait_audio(0.5)
            renewed = await receiver.request(p.Auth(token=token("both")), "authenticated")
            assert renewed == p.Authenticated(role="both")
    server.wait_event("client_authenticated", role="receive")


async def test_wrong_role_or_wrong_stream_is_refused(server: ServerProcess) -> None:
    async with RelayClient.connect(server.ws_url, token=token("send")) as sender:
        stream_id = await sender.start_sending(ToneTrack(440))
        async with RelayClient.connect(server.ws_url, token=token("receive")) as listener:
            await listener.send({"type": "start_sending", "sdp": "v=0"})
            assert "may not send" in str(await listener.expect("error"))
            await listener.closed.wait()
            assert listener.close_code == 1008
        scoped = token("receive", stream="stream_someone-else")
        async with RelayClient.connect(server.ws_url, token=scoped) as other:
            await other.send({"type": "start_receiving", "stream_id": stream_id})
            assert "may not receive" in str(await other.expect("error"))
        # A scoped token's default stream is its own.
        async with RelayClient.connect(
            server.ws_url, token=token("receive", stream=stream_id)
        ) as mine:
            assert await mine.start_receiving() == stream_id
        # A metrics token only reads /metrics: it does not even open a session.
        with pytest.raises(BaseExceptionGroup) as refused:
            async with RelayClient.connect(server.ws_url, token=token("metrics")):
                pass
        assert "a metrics token cannot open /ws" in str(sole_error(refused.value))


async def test_metrics_needs_a_metrics_token_and_health_stays_open(
    server: ServerProcess,
) -> None:
    assert httpx.get(server.base_url + "/health", timeout=5).status_code == 200
    assert httpx.get(server.base_url + "/metrics", timeout=5).status_code == 401
    wrong = {"Authorization": f"Bearer {token('receive')}"}
    response = httpx.get(server.base_url + "/metrics", headers=wrong, timeout=5)
    # A valid token of another role: 403 (401 is for no token or a bad one).
    assert response.status_code == 403 and "may not read" in response.json()["message"]
    assert server.get("/metrics").status_code == 200  # the fixture's metrics token


async def test_cross_site_websocket_is_refused(server: ServerProcess) -> None:
    with pytest.raises(websockets.InvalidStatus) as error:
        async with websockets.connect(server.ws_url, origin="https://evil.example"):
            pass
    assert error.value.response.status_code == 403
    server.wait_event("origin_refused", origin="https://evil.example")
    # The server's own origin (the page it served) is fine.
    own = f"http://127.0.0.1:{server.port}"
    async with RelayClient.connect(server.ws_url, token=token("both"), origin=own) as client:
        assert client.welcome is not None


async def test_limits_streams_receivers_sdp_and_rate(server: ServerProcess) -> None:
    async with (
        RelayClient.connect(server.ws_url, token=token("both")) as one,
        RelayClient.connect(server.ws_url, token=token("both")) as two,
        RelayClient.connect(server.ws_url, token=token("both")) as three,
    ):
        stream_id = await one.start_sending(ToneTrack(440))
        await two.start_sending(ToneTrack(550))
        with pytest.raises(ServerError, match=r"streams\.max_streams"):
            await three.start_sending(ToneTrack(660))
        big = {"type": "start_sending", "sdp": "v=0\r\n" + "a=x\r\n" * 4000}
        await three.send(big)
        assert "webrtc.max_sdp_bytes" in str(await three.expect("error"))
        async with (
            RelayClient.connect(server.ws_url, token=token("receive")) as r1,
            RelayClient.connect(server.ws_url, token=token("receive")) as r2,
            RelayClient.connect(server.ws_url, token=token("receive")) as r3,
        ):
            await r1.start_receiving(stream_id)
            await r2.start_receiving(stream_id)
            with pytest.raises(ServerError, match=r"streams\.max_receivers"):
                await r3.start_receiving(stream_id)
        # 5 messages/s, bursts of 10: a burst of 30 pings is answered in part, then cut off.
        async with RelayClient.connect(server.ws_url, token=token("both")) as flood:
            await anyio.sleep(2.1)  # a full bucket
            for _ in range(30):
                await flood.send({"type": "ping"})
            await flood.closed.wait()
            kinds = [m.type for m in flood.messages]
            assert kinds.count("pong") == 10
            assert any("max_messages_per_second" in str(m) for m in flood.messages)
            assert flood.close_code == 1008


async def test_receiver_that_never_answers_is_dropped_after_negotiation_timeout(
    server: ServerProcess,
) -> None:
    async with RelayClient.connect(server.ws_url, token=token("both")) as sender:
        await sender.start_sending(ToneTrack(440))
        async with RelayClient.connect(server.ws_url, token=token("both")) as silent:
            await silent.request({"type": "start_receiving"}, "offer")
            error = await silent.expect("error", timeout=5)
            assert "no answer to the offer within 1.5 s" in str(error)
            assert await silent.request(p.Ping(), "pong") == p.Pong()


async def test_web_pages_send_security_headers(server: ServerProcess) -> None:
    for path in ("/", "/send", "/listen", "/static/relay.js"):
        headers = httpx.get(server.base_url + path, timeout=5).headers
        assert "script-src 'self'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["x-frame-options"] == "DENY"


def test_token_cli_mints_a_token_the_server_accepts() -> None:
    env_secret = {"RELAY_AUTH__SECRET": SECRET}
    result = subprocess.run(
        [sys.executable, "-m", "relay_app", "token", "--role", "send", "--ttl", "1h"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        env={**os.environ, **env_secret},
    )
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), SECRET, ["HS256"], audience="relay_app")
    assert claims["role"] == "send" and 3590 <= claims["exp"] - claims["iat"] <= 3600
