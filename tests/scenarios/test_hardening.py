"""Hardening, round 2: each numbered attack from the issue, tried against a real
server process by a real WebSocket or aiortc client, fails to do harm.

Media and every address stay on loopback; the ICE-candidate test names addresses from the
documentation range 192.0.2.0/24 that the server must drop without probing them.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import httpx
import pytest
import websockets
from aiortc import RTCPeerConnection
from cryptography import x509

from relay_app.client import (
    RelayClient,
    ServerError,
    ToneTrack,
)
from relay_app.core import protocol as p
from relay_app.core.errors import sole_error
from relay_app.core.logs import RepeatFilter
from relay_app.tools.slow_readers import slow_readers
from relay_app.tools.testing import REPO, ServerProcess, assert_kept_hearing, listening_pair

from ..helpers import assert_no_leaks, token

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def relay_mode() -> str:
    """These scenarios are about the WebSocket, tokens and limits, which the relay mode does
    not touch: forward mode only (each run costs suite time; conftest runs both otherwise)."""
    return "forward"


SECURE_CONFIG = {"auth": {"timeout": 1.5}, "server": {"max_pending_connections": 2}}


@pytest.fixture
def secure(secure_server: ServerProcess) -> Iterator[ServerProcess]:
    yield secure_server
    assert_no_leaks(secure_server)


async def sender_offer(audio_sections: int = 1) -> str:
    pc = RTCPeerConnection()
    try:
        for _ in range(audio_sections):
            pc.addTransceiver(ToneTrack(440), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)
    finally:
        await pc.close()


# 1. A client that never reads is closed; what it sends cannot pile up in the server -------
@pytest.mark.serial
async def test_1_a_client_that_floods_then_never_reads_is_closed_and_memory_stays_flat(
    make_forward_server: Callable[..., ServerProcess],
) -> None:
    """The issue's case: the error replies to a flood back up behind a client that reads
    nothing. Before, the session then sat in a blocked send, 45 s past connection_timeout."""
    timeout, teardown = 3.0, 3.0
    server = make_forward_server(
        {
            "server": {"max_messages_per_second": 1_000_000, "send_timeout": 1.0},
            "webrtc": {"connection_timeout": timeout},
            "relay": {"teardown_timeout": teardown},
        }
    )
    rss_before = server.metrics()["process"]["rss_mb"]
    async with listening_pair(server.ws_url) as (_, receiver):
        heard, started = receiver.recorder.seconds, time.monotonic()
        # A small receive buffer, and the library stops reading after one message.
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        async with websockets.connect(server.ws_url, sock=sock, max_queue=1, close_timeout=1) as ws:
            connection_id = json.loads(await ws.recv())["connection_id"]
            with anyio.move_on_after(timeout + teardown + 10):
                try:
                    for _ in range(100):  # 60,000 frames, ~90 bytes of reply each
                        for _ in range(600):
                            await ws.send(b"")
                        await anyio.sleep(0.01)  # leave the loop to the pair too
                except websockets.ConnectionClosed:
                    pass
            flooded = time.monotonic()
            with anyio.fail_after(timeout + teardown + 2):
                while not server.find("connection_cleanup", connection_id=connection_id):
                    await anyio.sleep(0.1)
            closed = time.monotonic()
        await assert_kept_hearing(receiver, heard, started)
    assert closed - flooded < timeout + teardown, (closed - flooded, flooded - started)
    assert server.find("client_error", kind="not_reading", connection_id=connection_id)
    assert server.metrics()["process"]["rss_mb"] - rss_before < 20


# 2. One limiter counts every frame and closes a sustained flood -----------------------------
@pytest.mark.serial
async def test_2_binary_oversized_and_steady_floods_are_all_closed(
    make_forward_server: Callable[..., ServerProcess],
) -> None:
    server = make_forward_server({"server": {"max_messages_per_second": 5}})

    async def replies_until_closed(frames: list[str | bytes], pace: float = 0) -> int:
        """Send frames (paced `pace` s apart) while counting replies, until the server closes
        the connection with 1008."""
        replies: list[str | bytes] = []
        codes: list[int | None] = []
        async with websockets.connect(server.ws_url) as ws, anyio.create_task_group() as tg:
            await ws.recv()  # welcome

            async def read() -> None:
                try:
                    async for reply in ws:
                        replies.append(reply)
                except websockets.ConnectionClosed as closed:
                    codes.append(closed.rcvd.code if closed.rcvd else None)
                tg.cancel_scope.cancel()

            tg.start_soon(read)
            with anyio.fail_after(20):
                try:
                    for frame in frames:
                        await ws.send(frame)
                        await anyio.sleep(pace)
                except websockets.ConnectionClosed:
                    pass
                await anyio.sleep_forever()  # until read() sees the close
        assert codes == [1008], codes
        return len(replies)

    assert await replies_until_closed([b""] * 5000) < 50
    assert await replies_until_closed(["x" * 70_000] * 300) < 50
    # 10 pings a second against a limit of 5: every other one is refused, none in a row.
    steady = await replies_until_closed([json.dumps({"type": "ping"})] * 200, pace=0.1)
    assert steady < 100
    errors = server.metrics()["errors"]
    assert errors["flood"] == 3 and errors["limit"] >= 30, errors


# 3. DNS rebinding: a Host this server does not have is refused everywhere ------------------
def raw_upgrade(port: int, host: str) -> str:
    """The status line a WebSocket handshake naming `host` gets."""
    request = (
        f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        f"Origin: http://{host}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request.encode())
        return sock.recv(4096).decode(errors="replace").splitlines()[0]


async def test_3_a_rebinding_host_is_refused_on_http_and_websocket(server: ServerProcess) -> None:
    evil = f"evil.example:{server.port}"
    assert " 403 " in raw_upgrade(server.port, evil)
    assert " 101 " in raw_upgrade(server.port, f"127.0.0.1:{server.port}")
    assert " 101 " in raw_upgrade(server.port, f"localhost:{server.port}")
    for port in (server.port, server.audio_port):
        refused = httpx.get(f"http://127.0.0.1:{port}/health", headers={"Host": "evil.example"})
        assert refused.status_code == 403 and "server.allowed_hosts" in refused.json()["message"]
    assert server.find("host_refused", host=evil)


# 4, 5. Tokens: checked when used, expiry closes the session, metrics tokens stay off /ws ----
@pytest.mark.serial
async def test_4_an_expiring_token_closes_its_session_unless_renewed(
    secure: ServerProcess,
) -> None:
    async with RelayClient.connect(secure.ws_url, token=token("both", ttl=2)) as client:
        with anyio.fail_after(6):
            await client.closed.wait()
        assert client.close_code == 1008
        assert any("access token expired" in str(m) for m in client.messages)
    async with RelayClient.connect(secure.ws_url, token=token("both", ttl=2)) as renewed:
        await renewed.request(p.Auth(token=token("both")), "authenticated")
        await anyio.sleep(3)
        assert await renewed.request(p.Ping(), "pong") == p.Pong()


async def test_5_a_metrics_token_and_an_oversized_first_message_are_refused(
    secure: ServerProcess,
) -> None:
    async with websockets.connect(f"{secure.ws_url}?token={token('metrics')}") as ws:
        reply = json.loads(await ws.recv())
        assert "a metrics token cannot open /ws" in reply["message"]
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    padded = json.dumps({"type": "auth", "token": token("both"), "pad": "x" * 100_000})
    async with websockets.connect(secure.ws_url) as ws:
        await ws.send(padded)
        reply = json.loads(await ws.recv())
        assert "authentication required" in reply["message"]


# 6. Secrets stay out of logs -----------------------------------------------------------------
async def test_6_tokens_and_secrets_never_reach_the_logs(
    secure: ServerProcess, tmp_path: Path
) -> None:
    secret_token = token("receive")
    async with RelayClient.connect(secure.ws_url, token=secret_token) as client:
        assert client.welcome is not None
    httpx.get(f"{secure.base_url}/listen?token={secret_token}")
    secure.wait_event("http_access", path="/listen")
    assert not [line for line in secure.lines if secret_token in line]
    assert secure.find("http_access", path="/listen")[-1]["query"] == "token=REDACTED"
    bad = "short-but-secret"  # under 32 characters: refused at startup
    result = subprocess.run(
        [sys.executable, "-m", "relay_app"],
        env={
            **os.environ,
            "RELAY_AUTH__SECRET": bad,
            "RELAY_SERVER__HOST": "127.0.0.1",
            "RELAY_SERVER__PORT": "0",
            "RELAY_SERVER__AUDIO_PORT": "0",
        },
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert result.returncode == 2 and "auth.secret" in result.stderr + result.stdout
    assert bad not in result.stderr + result.stdout


# 7. With auth on, stream ids are not readable without a token ------------------------------
async def test_7_status_and_metrics_need_a_token_and_listings_follow_the_grant(
    secure: ServerProcess,
) -> None:
    for port in (secure.port, secure.audio_port):
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/stream/status").status_code == 401
        listen = {"Authorization": f"Bearer {token('receive')}"}
        assert httpx.get(f"{base}/stream/status", headers=listen).status_code == 200
        assert httpx.get(f"{base}/health").status_code == 200  # probes stay open
    assert httpx.get(f"{secure.base_url}/metrics").status_code == 401
    async with RelayClient.connect(secure.ws_url, token=token("send")) as sender:
        stream_id = await sender.start_sending(ToneTrack(440))
        scoped = token("receive", stream="stream_someone-else")
        async with RelayClient.connect(secure.ws_url, token=scoped) as other:
            listed = await other.request(p.GetAvailableStreams(), "available_streams")
            assert listed == p.AvailableStreams(streams=[])
        async with RelayClient.connect(secure.ws_url, token=token("receive")) as anyone:
            listed = await anyone.request(p.GetAvailableStreams(), "available_streams")
            assert isinstance(listed, p.AvailableStreams)
            assert [s.stream_id for s in listed.streams] == [stream_id]


# 8. Only the media the server consumes is accepted ------------------------------------------
async def test_8_many_audio_sections_or_a_sending_receiver_are_refused(
    server: ServerProcess,
) -> None:
    async with RelayClient.connect(server.ws_url) as sender:
        await sender.send(p.StartSending(sdp=await sender_offer(audio_sections=10)))
        error = await sender.expect("error")
        assert "10 m=audio sections" in str(error)
        await sender.start_sending(ToneTrack(440))
        async with RelayClient.connect(server.ws_url) as receiver:
            offer = await receiver.request(p.StartReceiving(), "offer")
            assert isinstance(offer, p.Offer) and "a=sendonly" in offer.sdp
            pc = RTCPeerConnection()
            try:
                await pc.setRemoteDescription(p_offer(offer.sdp))
                await pc.setLocalDescription(await pc.createAnswer())
                sendrecv = pc.localDescription.sdp.replace("a=recvonly", "a=sendrecv")
                error = await receiver.request(p.Answer(sdp=sendrecv), "error")
                assert "recvonly" in str(error)
            finally:
                await pc.close()
    assert server.metrics()["errors"]["negotiation"] >= 2


def p_offer(sdp: str) -> object:
    from aiortc import RTCSessionDescription

    return RTCSessionDescription(sdp=sdp, type="offer")


# 9. Connections waiting for a token are capped and wait briefly ------------------------------
@pytest.mark.serial
async def test_9_pending_connections_are_capped_and_time_out_quickly(
    secure: ServerProcess,
) -> None:
    async with websockets.connect(secure.ws_url) as one, websockets.connect(secure.ws_url) as two:
        await anyio.sleep(0.2)
        async with websockets.connect(secure.ws_url) as third:
            reply = json.loads(await third.recv())
            assert "server.max_pending_connections" in reply["message"]
        started = time.monotonic()
        for ws in (one, two):
            reply = json.loads(await ws.recv())
            assert "authentication timed out" in reply["message"]
        assert time.monotonic() - started < 1.5 + 1.0


# 10. Limits that held only one message at a time ---------------------------------------------
async def test_10_simultaneous_offers_and_one_address_cannot_exceed_their_caps(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server(
        {
            "streams": {"max_streams": 1},
            "server": {"trusted_addresses": [], "max_connections_per_address": 4},
        }
    )
    offer = await sender_offer()
    async with (
        RelayClient.connect(server.ws_url) as a,
        RelayClient.connect(server.ws_url) as b,
        RelayClient.connect(server.ws_url) as c,
    ):
        for client in (a, b, c):
            await client.send(p.StartSending(sdp=offer))
        replies = [(await client.next_message()).type for client in (a, b, c)]
        assert sorted(replies) == ["answer", "error", "error"], replies
        async with RelayClient.connect(server.ws_url):
            with pytest.raises(BaseExceptionGroup) as refused:
                async with RelayClient.connect(server.ws_url):
                    pass
            error = sole_error(refused.value)
            assert isinstance(error, ServerError)
            assert "server.max_connections_per_address" in error.message


# 11. Remote candidates are capped and filtered -----------------------------------------------
async def test_11_an_offer_full_of_candidates_is_trimmed_before_any_probe(
    server: ServerProcess,
) -> None:
    offer = await sender_offer()
    junk = "".join(
        f"a=candidate:{i} 1 udp 2122260223 192.0.2.{i % 250 + 1} {40000 + i} typ host\r\n"
        for i in range(250)
    )
    stuffed = offer.replace("a=end-of-candidates", junk + "a=end-of-candidates")
    assert stuffed != offer
    dropped_before = server.metrics()["relay"]["drops"].get("remote_candidate", 0)
    async with RelayClient.connect(server.ws_url) as sender:
        answer = await sender.request(p.StartSending(sdp=stuffed), "answer")
        assert isinstance(answer, p.AnswerOut)
    assert server.metrics()["relay"]["drops"]["remote_candidate"] - dropped_before == 250


# 12. The LAN certificate is no CA, and its key is never world-readable ----------------------
def test_12_the_lan_certificate_is_not_a_ca_and_its_key_is_private(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text("old")
    key.chmod(0o644)
    subprocess.run(
        [sys.executable, "-m", "relay_app", "cert", "--host", "127.0.0.1", "--out-dir", tmp_path],
        check=True,
        capture_output=True,
        timeout=30,
        cwd=REPO,
    )
    cert = x509.load_pem_x509_certificate((tmp_path / "cert.pem").read_bytes())
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert key.stat().st_mode & 0o777 == 0o600


# 13. A sender of garbage cannot flood the log ------------------------------------------------
def test_13_a_library_warning_repeated_per_packet_is_logged_once_per_window() -> None:
    records = [
        logging.LogRecord(
            "aiortc.rtcrtpreceiver", logging.WARNING, __file__, 1, "failed %s", (i,), None
        )
        for i in range(500)
    ]
    repeat = RepeatFilter(("aiortc",))
    assert sum(repeat.filter(r) for r in records) == 1
    other = logging.LogRecord("relay_app", logging.WARNING, __file__, 1, "x", (), None)
    assert repeat.filter(other)


# The acceptance soak, short (bench/slow_readers.py runs 50 clients for 60 s) ---------------
@pytest.mark.serial
async def test_slow_readers_are_all_closed_in_time_and_the_pair_keeps_hearing(
    make_forward_server: Callable[..., ServerProcess],
) -> None:
    server = make_forward_server(
        {"server": {"max_connections": 30}, "webrtc": {"connection_timeout": 5.0}}
    )
    result = await slow_readers(server, clients=8, seconds=6, drain_wait=0)
    assert result["flooding_sessions"] >= 8, result
    assert result["closed_sessions"] == result["flooding_sessions"], result
    assert result["over_limit"] == 0 and result["rss_growth_mb"] < 20, result
    assert result["audio_heard_ratio"] > 0.8, result


async def test_websocket_compression_is_declined(server: ServerProcess) -> None:
    """Each deflate context costs ~300 KB per WebSocket; the relay declines the extension.
    Fails loudly if Hypercorn stops offering it through `ws_stream.PerMessageDeflate`."""
    from hypercorn.protocol import ws_stream

    assert hasattr(ws_stream, "PerMessageDeflate")
    async with websockets.connect(server.ws_url) as ws:  # it asks for permessage-deflate
        assert ws.request is not None and ws.response is not None
        assert "permessage-deflate" in ws.request.headers.get("Sec-WebSocket-Extensions", "")
        assert ws.response.headers.get("Sec-WebSocket-Extensions") is None
        assert json.loads(await ws.recv())["type"] == "welcome"
