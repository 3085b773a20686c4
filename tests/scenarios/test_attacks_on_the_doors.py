"""Hardening, round 3: the doors added last (admin, WHIP/WHEP, Ogg, recording, Host), each
attack tried against a real server.

Attackers connect from 127.0.0.2 and other clients from 127.0.0.3: loopback addresses that are
not in `server.trusted_addresses` (emptied here), so every per-address rule applies to them.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import websockets
from aiortc import RTCPeerConnection

from relay_app.client import RelayClient, ToneTrack
from relay_app.tools.testing import ServerProcess

from ..endpoints.test_http_listening import assert_hears_tone, decode, listen
from ..helpers import server_event, token

pytestmark = pytest.mark.anyio

ATTACKER, OTHER = "127.0.0.2", "127.0.0.3"
UNTRUSTED = {"server": {"trusted_addresses": []}}
SECURE_CONFIG = {"auth": {"protect_metrics": True}}  # conftest's secure_server, auth on


@pytest.fixture(scope="module")
def relay_mode() -> str:
    """Doors and limits: the relay mode does not touch them."""
    return "forward"


def http_from(address: str, **kwargs: Any) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=10, **kwargs)


def async_http_from(address: str) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(local_address=address)
    return httpx.AsyncClient(transport=transport, timeout=10)


async def whep_offer() -> str:
    """A player's offer that will never finish ICE (its answer is never applied)."""
    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return str(sdp)


def attacking(port: int) -> tuple[str, int]:
    """The server's address (it listens on 127.0.0.1); connect from ATTACKER to it."""
    return ("127.0.0.1", port)


async def ws_first_message(server: ServerProcess, address: str) -> dict[str, Any]:
    async with websockets.connect(server.ws_url, local_addr=(address, 0)) as ws:
        return dict(json.loads(await ws.recv()))


# 1 ----------------------------------------------------------------------------------------
async def test_a_cross_site_page_cannot_lock_stop_or_kick_through_the_admin_api(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server({"channels": {"english": {"label": "English"}}})
    async with RelayClient.connect(server.ws_url) as sender:
        await sender.start_sending(ToneTrack(440), channel="english")
        victim = server.get("/admin/sessions").json()["sessions"][0]["connection_id"]
        simple = {"Content-Type": "text/plain"}
        with http_from(ATTACKER, base_url=server.base_url) as browser:
            for origin in ("http://evil.example", "null"):
                headers = {**simple, "Origin": origin}
                for path in (
                    "/admin/channels/english/lock",
                    "/admin/streams/english/stop",
                    f"/admin/sessions/{victim}/kick",
                ):
                    refused = browser.post(path, content="x", headers=headers)
                    assert refused.status_code == 403, (path, refused.text)
                    assert "server.allowed_origins" in refused.json()["message"]
        channels = server.get("/admin/channels").json()["channels"]
        assert [c["locked"] for c in channels if c["channel"] == "english"] == [False]
        assert server.metrics()["active_streams"] == 1  # nobody was stopped or kicked
        # Without Origin (curl on this machine) the operator still can.
        assert server.post("/admin/channels/english/lock").status_code == 200


def test_a_post_refused_before_its_body_arrives_says_the_connection_closes(
    make_forward_server: Callable[..., ServerProcess],
) -> None:
    """Refused at the door before its body was read, Hypercorn closes the connection after the
    answer; unless the answer says so, a keep-alive client sends its next request into a
    closed connection ("server disconnected without sending a response")."""
    server = make_forward_server()
    # Refused at the admin API's door (cross-site), and by a route that does not exist.
    for path, status in ((b"/admin/channels/english/lock", b"403"), (b"/no-such-door", b"404")):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as browser:
            browser.sendall(
                b"POST "
                + path
                + b" HTTP/1.1\r\n"
                + f"Host: 127.0.0.1:{server.port}\r\n".encode()
                + b"Origin: http://evil.example\r\nContent-Type: text/plain\r\n"
                + b"Content-Length: 1\r\n\r\n"  # (the body is never sent)
            )
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += browser.recv(4096)
        head = answer.split(b"\r\n\r\n")[0].lower()
        assert head.startswith(b"http/1.1 " + status), head
        assert b"\r\nconnection: close" in head, head


# 2 ----------------------------------------------------------------------------------------
async def test_a_lan_client_through_a_local_proxy_gets_no_admin_api_and_its_own_cap(
    make_server: Callable[..., ServerProcess],
) -> None:
    proxy = ATTACKER  # a reverse proxy on this machine, as in docs/deployment.md
    server = make_server(
        {
            "server": {
                "trusted_addresses": [],
                "trusted_proxies": [proxy],
                "max_connections_per_address": 2,
            }
        }
    )
    lan_client = {"X-Forwarded-For": "198.51.100.7"}
    with http_from(proxy, base_url=server.base_url) as via_proxy:
        refused = via_proxy.get("/admin/sessions", headers=lan_client)
        assert refused.status_code == 403 and "no proxy" in refused.json()["message"]
        assert via_proxy.post("/admin/channels/x/lock", headers=lan_client).status_code == 403
    with http_from("127.0.0.1", base_url=server.base_url) as local:
        forwarded = local.get("/admin/sessions", headers={"X-Real-IP": "198.51.100.7"})
        assert forwarded.status_code == 403  # proxy headers: maybe not this machine's user
    # Per-address caps count the client the proxy names, not the proxy.
    headers = [("X-Forwarded-For", "198.51.100.7")]
    async with (
        websockets.connect(server.ws_url, local_addr=(proxy, 0), additional_headers=headers) as a,
        websockets.connect(server.ws_url, local_addr=(proxy, 0), additional_headers=headers) as b,
    ):
        for ws in (a, b):
            assert json.loads(await ws.recv())["type"] == "welcome"
        async with websockets.connect(
            server.ws_url, local_addr=(proxy, 0), additional_headers=headers
        ) as third:
            message = json.loads(await third.recv())
            assert "too many connections from 198.51.100.7" in message["message"]
        other = [("X-Forwarded-For", "198.51.100.8")]
        async with websockets.connect(
            server.ws_url, local_addr=(proxy, 0), additional_headers=other
        ) as fourth:
            assert json.loads(await fourth.recv())["type"] == "welcome"
    connected = server.wait_event("client_connected", remote="198.51.100.8")
    assert connected["remote"] == "198.51.100.8"


# 3, 4 -------------------------------------------------------------------------------------
async def test_whep_players_count_against_the_address_cap_and_those_that_never_finish_ice_expire(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server(
        {
            "server": {"trusted_addresses": [], "max_connections_per_address": 3},
            "webrtc": {"negotiation_timeout": 2.0},
            "channels": {"english": {"label": "English"}},
        }
    )
    offer = await whep_offer()
    sdp = {"Content-Type": "application/sdp"}
    async with RelayClient.connect(server.ws_url) as sender:
        await sender.start_sending(ToneTrack(440), channel="english")
        async with async_http_from(ATTACKER) as attacker, async_http_from(OTHER) as other:
            url = f"{server.base_url}/whep/english"
            answers = [await attacker.post(url, content=offer, headers=sdp) for _ in range(3)]
            assert [a.status_code for a in answers] == [201, 201, 201]
            refused = await attacker.post(url, content=offer, headers=sdp)
            assert refused.status_code == 503 and refused.headers["retry-after"]
            assert "server.max_connections_per_address" in refused.json()["message"]
            whip = await attacker.post(f"{server.base_url}/whip/french", content=offer, headers=sdp)
            assert whip.status_code == 503  # the same table for every door
            assert "too many connections" in (await ws_first_message(server, ATTACKER))["message"]
            assert (await other.post(url, content=offer, headers=sdp)).status_code == 201
            # None of them ever finishes ICE: each is released after the negotiation timeout.
            with anyio.fail_after(20):
                while len(server.find("resource_expired")) < 4:
                    await anyio.sleep(0.5)
            await anyio.sleep(0.5)
            players = [
                s
                for s in server.get("/admin/sessions").json()["sessions"]
                if s["role"] == "receiver"
            ]
            assert players == []
            assert (await attacker.post(url, content=offer, headers=sdp)).status_code == 201


# 5 ----------------------------------------------------------------------------------------
def _post_declaring(server: ServerProcess, length: int, sent: int, token: str = "") -> bytes:
    """A POST that declares `length` bytes and sends `sent`: what the server answers."""
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    with socket.create_connection(attacking(server.port), 5, (ATTACKER, 0)) as conn:
        head = (
            f"POST /whip/english HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}"
            f"Content-Type: application/sdp\r\nContent-Length: {length}\r\n\r\n"
        )
        conn.sendall(head.encode() + b"v" * sent)
        return conn.recv(4096)


async def test_a_huge_body_is_refused_on_its_declared_size_before_it_is_read(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server(UNTRUSTED)
    started = time.monotonic()
    answer = await anyio.to_thread.run_sync(_post_declaring, server, 15 * 1024**2, 1024)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert time.monotonic() - started < 3
    rss = server.metrics()["process"]["rss_mb"]

    def flood() -> None:
        with socket.create_connection(attacking(server.port), 5, (ATTACKER, 0)) as conn:
            head = (
                "POST /whip/english HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: application/sdp\r\nContent-Length: {15 * 1024**2}\r\n\r\n"
            )
            conn.sendall(head.encode())
            try:
                for _ in range(15 * 16):
                    conn.sendall(b"v" * 65536)
            except OSError:
                pass  # answered and closed: what should happen

    async with anyio.create_task_group() as tg:
        for _ in range(6):
            tg.start_soon(anyio.to_thread.run_sync, flood)
    assert server.metrics()["process"]["rss_mb"] - rss < 30


async def test_with_auth_an_anonymous_body_is_refused_on_its_token_before_it_is_read(
    secure_server: ServerProcess,
) -> None:
    server = secure_server
    answer = await anyio.to_thread.run_sync(_post_declaring, server, 60000, 1024)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]


# 6 ----------------------------------------------------------------------------------------
async def test_a_token_scoped_to_one_stream_cannot_hear_another_through_latest_or_a_listing(
    secure_server: ServerProcess,
) -> None:
    server = secure_server
    async with (
        RelayClient.connect(server.ws_url, token=token("send")) as a,
        RelayClient.connect(server.ws_url, token=token("send")) as b,
    ):
        stream_a = await a.start_sending(ToneTrack(440))
        await anyio.sleep(0.2)
        stream_b = await b.start_sending(ToneTrack(880))  # the newest: what latest used to be
        only_a = token("receive", stream=stream_a)
        base = server.status_url + "/stream"
        assert httpx.get(f"{base}/{stream_b}.ogg?token={only_a}").status_code == 403
        ogg = await listen(f"{base}/latest.ogg?token={only_a}", 2.5)
        assert_hears_tone(ogg, 440, at_least=1.5)
        listed = httpx.get(f"{base}/status", headers={"Authorization": f"Bearer {only_a}"})
        assert listed.status_code == 200 and listed.json()["active_streams"] == [stream_a]


# 7 ----------------------------------------------------------------------------------------
async def test_one_address_cannot_take_every_ogg_listener_slot(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server({"server": {"trusted_addresses": [], "max_connections_per_address": 3}})
    async with RelayClient.connect(server.ws_url) as sender:
        stream_id = await sender.start_sending(ToneTrack(440))
        url = f"{server.status_url}/stream/{stream_id}.ogg"
        async with async_http_from(ATTACKER) as attacker, async_http_from(OTHER) as other:
            held = []
            for _ in range(3):
                held.append(await attacker.send(attacker.build_request("GET", url), stream=True))
            assert [r.status_code for r in held] == [200, 200, 200]
            refused = await attacker.get(url)
            assert refused.status_code == 503
            assert "server.max_connections_per_address" in refused.json()["message"]
            async with other.stream("GET", url) as response:
                assert response.status_code == 200
            for response in held:
                await response.aclose()


# 8 ----------------------------------------------------------------------------------------
def _recording_config(directory: Path, **recording: Any) -> dict[str, Any]:
    return {
        **UNTRUSTED,
        "recording": {
            "enabled": True,
            "directory": str(directory),
            "continue_within": 1.0,
            **recording,
        },
        "streams": {"allow_unlisted_channels": True},
    }


async def test_a_sender_over_the_opus_byte_rate_loses_its_recording_not_its_audio(
    make_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    # A tone is ~4-8 KB/s of Opus: over a 1,000 B/s cap, as fake "Opus" at 500 KB/s is
    # over the real one (64,000 B/s).
    directory = tmp_path / "recordings"
    server = make_server(_recording_config(directory, max_bytes_per_second=1000))
    async with (
        RelayClient.connect(server.ws_url) as sender,
        RelayClient.connect(server.ws_url) as receiver,
    ):
        await sender.start_sending(ToneTrack(440), channel="spam")
        await receiver.start_receiving("spam")
        stopped = await server_event(server, "recording_stopped")
        assert "recording.max_bytes_per_second" in stopped["reason"]
        await receiver.wait_audio(3.0)  # the audio goes on
    ended = await server_event(server, "recording_ended")
    assert Path(ended["path"]).stat().st_size < 20_000
    decode(Path(ended["path"]).read_bytes())  # closed cleanly: it decodes


async def test_senders_without_audio_leave_no_recordings_and_old_ones_are_pruned(
    make_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    directory = tmp_path / "recordings"
    directory.mkdir()
    old = directory / "hall-20200101T000000Z.ogg"
    old.write_bytes(b"x" * 1000)
    os.utime(old, (time.time() - 10 * 86400,) * 2)
    big = [directory / f"hall-2026010{n}T000000Z.ogg" for n in range(1, 4)]
    for n, path in enumerate(big):
        path.write_bytes(b"x" * 400_000)
        os.utime(path, (time.time() - 3600 * (4 - n),) * 2)
    server = make_server(_recording_config(directory, keep_days=1, max_total_bytes=1_000_000))
    for n in range(5):  # connected, negotiated, silent: nothing to record
        silent = ToneTrack(440)
        silent.pause()
        async with RelayClient.connect(server.ws_url) as sender:
            await sender.start_sending(silent, channel=f"silent{n}")
            await anyio.sleep(0.3)
    async with RelayClient.connect(server.ws_url) as sender:
        await sender.start_sending(ToneTrack(440), channel="talk")
        await server_event(server, "recording_started")
    await server_event(server, "recording_ended")
    left = sorted(path.name for path in directory.iterdir())
    assert not [name for name in left if name.startswith("silent")], left
    assert old.name not in left and big[0].name not in left, left  # oldest first
    assert big[2].name in left and any(name.startswith("talk") for name in left), left
    reasons = {event["reason"] for event in server.find("recording_deleted")}
    assert any("days" in reason for reason in reasons) and any("bytes" in r for r in reasons)


# 9 ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["[::1", "[zz]:1", "a" * 300, "a" * 70 + ".example"])
def test_a_malformed_host_is_a_400_not_a_500_on_both_ports_and_the_websocket(
    server: ServerProcess, host: str
) -> None:
    upgrade = (
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    )
    for port, path, extra in (
        (server.port, "/health", ""),
        (server.audio_port, "/stream/status", ""),
        (server.port, "/ws", upgrade),
    ):
        with socket.create_connection(attacking(port), 5, (ATTACKER, 0)) as conn:
            conn.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode())
            status = conn.recv(200).split(b"\r\n")[0]
        assert status.startswith(b"HTTP/1.1 400"), (port, path, status)
    assert not [event for event in server.events if "exception" in event]
