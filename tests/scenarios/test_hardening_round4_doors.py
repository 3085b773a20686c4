"""Hardening, round 4: the long-lived doors (/ws, WHEP, Ogg over HTTP) against a real server.

A listener's connection lives no longer than its token, on every door; a channel's Ogg
listener cap holds across a takeover; a listener dropped as too slow loses its connection,
not only its place in the fan-out.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import anyio
import httpx
import pytest

from relay_app.client import RelayClient, ToneTrack, dominant_frequency
from relay_app.client.whip import whep_play
from relay_app.core.auth import verify
from relay_app.tools.slow_readers import ogg_slow_readers
from relay_app.tools.testing import ServerProcess

from ..endpoints.test_http_listening import decode
from ..helpers import SECRET, assert_no_leaks, token

pytestmark = pytest.mark.anyio

CHANNELS = {"stage": {"label": "Main stage"}}
INVITE_TTL = 8  # seconds: a short invite (python -m relay_app invite --ttl 8s)
CUT_WITHIN = 3.0  # seconds after the token's expiry by which every door has cut it
SECURE_CONFIG = {"channels": CHANNELS}  # conftest's secure_server: auth on


@pytest.fixture(scope="module")
def relay_mode() -> str:
    """Doors, tokens and the HTTP path: the relay mode does not touch them."""
    return "forward"


@pytest.fixture
def secure(secure_server: ServerProcess) -> Iterator[ServerProcess]:
    yield secure_server
    assert_no_leaks(secure_server)


class OggReader:
    """A plain-HTTP listener that reads everything, noting when each chunk came and when
    the server ended the response."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.body = bytearray()
        self.status: int | None = None
        self.chunks: list[tuple[float, int]] = []  # (time.time(), bytes)
        self.ended_at: float | None = None

    async def run(self) -> None:
        try:
            async with (
                httpx.AsyncClient(timeout=httpx.Timeout(10, read=None)) as client,
                client.stream("GET", self.url) as response,
            ):
                self.status = response.status_code
                async for chunk in response.aiter_bytes():
                    self.body += chunk
                    self.chunks.append((time.time(), len(chunk)))
        except httpx.HTTPError:
            pass  # (cut: a reset, or a chunked body that never finished)
        self.ended_at = time.time()

    def received_after(self, moment: float) -> int:
        return sum(size for at, size in self.chunks if at > moment)


async def test_an_expired_invite_is_cut_on_every_door_and_never_hears_the_next_speaker(
    secure: ServerProcess,
) -> None:
    """One invite, three doors: a WebSocket receiver, a WHEP player, an Ogg listener. Each is
    cut within a few seconds of the invite's expiry, counted and logged the same way, and
    none of them hears the speaker who takes the channel over afterwards."""
    server = secure
    speaker_token = token("send", stream="stage")
    invite = token("receive", ttl=INVITE_TTL, stream="stage", subject="invite")
    expires_at = verify(SECRET, invite).expires_at
    assert expires_at is not None
    auth_errors = server.metrics()["errors"].get("auth", 0)
    ogg = OggReader(f"{server.status_url}/stream/stage.ogg?token={invite}")
    async with (
        RelayClient.connect(server.ws_url, token=speaker_token) as speaker,
        anyio.create_task_group() as tg,
    ):
        await speaker.start_sending(ToneTrack(440), channel="stage")
        async with (
            RelayClient.connect(server.ws_url, token=invite) as receiver,
            whep_play(f"{server.base_url}/whep/stage", token=invite) as player,
        ):
            await receiver.start_receiving("stage")
            tg.start_soon(ogg.run)
            await receiver.wait_audio(1.0)
            with anyio.fail_after(10):
                await player.recorder.wait_seconds(1.0)
            assert ogg.status == 200 and ogg.ended_at is None, "all three play before expiry"
            await anyio.sleep(max(0.0, expires_at + CUT_WITHIN - time.time()))
            player_heard = player.recorder.seconds
            # The next speaker takes the channel over: nobody holding the invite hears it.
            async with RelayClient.connect(server.ws_url, token=speaker_token) as next_speaker:
                await next_speaker.start_sending(ToneTrack(660), channel="stage", takeover=True)
                await anyio.sleep(2.0)
            cut = expires_at + CUT_WITHIN
            still_playing = {  # by door, what each heard after `cut`
                "ws": None if receiver.closed.is_set() else "open",
                "whep": _seconds(player.recorder.seconds - player_heard),
                "ogg": None if ogg.received_after(cut) == 0 else f"{ogg.received_after(cut)} B",
            }
            assert still_playing == {"ws": None, "whep": None, "ogg": None}, still_playing
            assert receiver.close_code == 1008
            assert ogg.ended_at is not None and ogg.ended_at <= cut, (ogg.ended_at, cut)
        tg.cancel_scope.cancel()
    samples, rate = decode(bytes(ogg.body))
    assert abs(dominant_frequency(samples[-rate // 2 :], rate) - 440) <= 10, "no 660 Hz heard"
    # One rule: counted (errors.auth) and logged (client_error, kind auth) on every door.
    expired = [
        event
        for event in server.find("client_error", kind="auth")
        if event["error"].startswith("access token expired")
    ]
    assert sorted(event["door"] for event in expired) == ["ogg", "whep", "ws"], expired
    delays = {event["door"]: round(_at(event) - expires_at, 2) for event in expired}
    assert ogg.ended_at is not None
    ended = round(ogg.ended_at - expires_at, 2)
    print("cut after the invite's expiry (s):", delays, "Ogg response ended after:", ended)
    assert all(0 <= delay <= CUT_WITHIN for delay in delays.values()), delays
    assert server.metrics()["errors"]["auth"] == auth_errors + 3
    whep = server.find("client_connected", resource=player.location.rsplit("/", 1)[1])
    cleanup = server.find("connection_cleanup", connection_id=whep[0]["connection_id"])
    assert cleanup[0]["reason"].startswith("access token expired"), cleanup
    ogg_end = server.find("http_listener_ended", reason="token expired")
    assert len(ogg_end) == 1, server.find("http_listener_ended")


async def test_the_ogg_listener_cap_holds_across_a_takeover(
    make_forward_server: Callable[..., ServerProcess],
) -> None:
    """streams.max_http_listeners: 2 on a channel. A second speaker takes it over; while the
    new stream is registered and not yet audible, and after the handover, the channel still
    has two Ogg listeners at most."""
    server = make_forward_server({"channels": CHANNELS, "streams": {"max_http_listeners": 2}})
    url = f"{server.status_url}/stream/stage.ogg"
    async with (
        RelayClient.connect(server.ws_url) as speaker,
        RelayClient.connect(server.ws_url) as next_speaker,
        httpx.AsyncClient(timeout=10) as http,
    ):
        await speaker.start_sending(ToneTrack(440), channel="stage")
        held = [await http.send(http.build_request("GET", url), stream=True) for _ in range(2)]
        assert [r.status_code for r in held] == [200, 200]
        assert (await http.get(url)).status_code == 503
        quiet = ToneTrack(660)
        quiet.pause()  # registered, negotiated, not yet audible: the old speaker plays on
        await next_speaker.start_sending(quiet, channel="stage", takeover=True)
        during = [await http.send(http.build_request("GET", url), stream=True) for _ in range(2)]
        statuses = [r.status_code for r in during]
        quiet.resume()  # its first packet: the handover
        await anyio.sleep(2.0)
        after = await http.get(url)
        counts = _ogg_listeners(server, "stage")
        for response in held + during:
            await response.aclose()
    assert statuses == [503, 503], statuses
    assert after.status_code == 503
    assert "streams.max_http_listeners" in after.json()["message"]
    assert counts == 2, counts


async def test_a_listener_dropped_as_too_slow_loses_its_connection_within_5_s(
    make_forward_server: Callable[..., ServerProcess],
) -> None:
    """Ten Ogg listeners that never read (4 KiB receive buffers) of a ~500 KB/s stream are
    dropped as too slow within a second or two; the server holds none of their connections
    5 s later (server.dead_peer_timeout, 30 s, is not what cuts them)."""
    server = make_forward_server({"visualization": {"enabled": False}})
    result = await ogg_slow_readers(server, clients=10, watch=10.0)
    print("stalled Ogg listeners:", result)
    assert result["dropped_too_slow"] == 10, result
    assert result["still_held"] == 0, result
    assert max(result["held_after_last_drop_s"]) <= 5.0, result
    assert not server.find("connection_abort_unavailable")


def _ogg_listeners(server: ServerProcess, stream_id: str) -> int:
    status = server.get("/stream/status", status_port=True).json()
    return sum(s["http_listeners"] for s in status["streams"] if s["stream_id"] == stream_id)


def _seconds(heard: float) -> str | None:
    return None if heard < 0.2 else f"{heard:.1f} s"


def _at(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"]).timestamp()
