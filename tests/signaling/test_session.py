"""PeerSession driven in-process through a fake WebSocket: dispatch, auth, limits, idle timeout,
flood close and the error path, with no server process (like Hypercorn's ws_stream tests).

The fake plays the client: the test writes frames into it and reads what the session sent. A
receiver's media task runs for real (aiortc gathers on loopback, see conftest) against a stream
registered by hand, so errors after negotiation take the same path as on a live server.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
import structlog.testing
from aiortc import AudioStreamTrack

from relay_app.core.auth import mint, verify
from relay_app.core.config import Settings
from relay_app.signaling.session import OUTBOX_SIZE, PeerSession
from relay_app.streams.context import RelayContext
from relay_app.streams.stream import EndCause, SessionInfo, Stream, new_connection_id, new_stream

from ..helpers import SECRET

pytestmark = pytest.mark.anyio

OFFER = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"  # no m= section


class FakeWebSocket:
    """The session's `WebSocket` Protocol over memory streams."""

    def __init__(self, reads: bool = True) -> None:
        self._frames_send, self._frames = anyio.create_memory_object_stream[str | bytes | None](
            1000
        )
        self._sent_send, self._sent = anyio.create_memory_object_stream[dict[str, Any]](1000)
        self.reads = reads  # False: a client that never reads (every send blocks)
        self.close_frame: tuple[int, str] | None = None
        self.closed = anyio.Event()

    # What the session calls.
    async def accept(self) -> None:
        pass

    async def receive(self) -> str | bytes | None:
        return await self._frames.receive()

    async def send(self, data: str) -> None:
        if not self.reads:
            await anyio.sleep_forever()
        await self._sent_send.send(json.loads(data))

    async def close(self, code: int, reason: str = "") -> None:
        self.close_frame = (code, reason)
        self.closed.set()

    # What the test calls, as the client.
    def write(self, frame: dict[str, Any] | str | bytes | None) -> None:
        self._frames_send.send_nowait(json.dumps(frame) if isinstance(frame, dict) else frame)

    async def read(self, timeout: float = 5) -> dict[str, Any]:
        """The next message the session sent, visualization aside."""
        with anyio.fail_after(timeout):
            while (message := await self._sent.receive())["type"] == "visualization":
                pass
            return message

    async def request(self, frame: dict[str, Any] | str | bytes | None) -> dict[str, Any]:
        self.write(frame)
        return await self.read()


def make_context(**config: Any) -> RelayContext:
    config.setdefault("relay", {}).setdefault("teardown_timeout", 1.0)
    return RelayContext.from_settings(Settings(**config))


def _session(ws: FakeWebSocket, ctx: RelayContext, token: str | None) -> PeerSession:
    """A session as the guard hands it over: its slot, and its URL token's grant (or, with
    auth on and no token, the token still to come in the first message)."""
    info = SessionInfo(new_connection_id(), "test")
    secret = ctx.settings.auth.secret
    if secret is None:
        return PeerSession(ws, ctx, info)
    if token is None:
        return PeerSession(ws, ctx, info, pending=True)
    return PeerSession(ws, ctx, info, verify(secret.get_secret_value(), token))


@asynccontextmanager
async def connected(
    ctx: RelayContext, ws: FakeWebSocket | None = None, token: str | None = None
) -> AsyncIterator[FakeWebSocket]:
    """A session on `ws`; leaving the block is the client going away (Quart cancels the
    handler). Afterwards the session has released everything it held."""
    ws = ws or FakeWebSocket()
    others = set(ctx.registry.sessions)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_session(ws, ctx, token).run)
        yield ws
        tg.cancel_scope.cancel()
    assert set(ctx.registry.sessions) == others
    assert_released(ctx)


def assert_released(ctx: RelayContext) -> None:
    assert ctx.registry.receiver_count == 0
    live = ctx.metrics.live.statistics()
    assert (live.sessions, live.session_task_groups) == (0, 0), live
    assert (live.peer_connections, live.relay_subscriptions) == (0, 0), live


async def wait_closed(ws: FakeWebSocket, timeout: float) -> tuple[int, str]:
    with anyio.fail_after(timeout):
        await ws.closed.wait()
    assert ws.close_frame is not None
    return ws.close_frame


@asynccontextmanager
async def listenable_stream(ctx: RelayContext) -> AsyncIterator[Stream]:
    """A live stream as a sender's session registers it, with nobody sending into it."""
    stream = new_stream(
        ctx.settings.relay,
        ctx.metrics,
        stream_id="stream_test",
        sender_id="nobody",
        source=AudioStreamTrack(),
    )
    ctx.registry.add_stream(stream)
    try:
        yield stream
    finally:
        stream.end(EndCause.SENDER_LEFT)
        ctx.registry.remove_stream(stream, SessionInfo("nobody", ""))
        stream.close_relays()


# Dispatch ----------------------------------------------------------------------------------
async def test_welcome_then_ping_pong_and_an_empty_stream_list() -> None:
    ctx = make_context()
    async with connected(ctx) as ws:
        welcome = await ws.read()
        assert welcome["type"] == "welcome" and welcome["config"]["connection_timeout"] == 30
        assert (await ws.request({"type": "ping"}))["type"] == "pong"
        streams = await ws.request({"type": "get_available_streams"})
        assert streams == {"type": "available_streams", "streams": [], "channels": []}
        assert list(ctx.registry.sessions) == [welcome["connection_id"]]


@pytest.mark.parametrize(
    ("frame", "kind", "expected"),
    [
        ("not json", "protocol", "invalid JSON"),
        ({"type": "dance"}, "protocol", "unknown message type 'dance'"),
        (b"\x00\x01", "protocol", "binary frames are not supported"),
        (None, "protocol", "binary frames are not supported"),  # Quart's empty binary frame
        ("x" * 70_000, "message_too_big", "server.max_message_bytes"),
        ({"type": "answer", "sdp": "v=0"}, "session_state", "no offer is waiting"),
        ({"type": "start_receiving"}, "no_stream", "No audio stream available"),
        ({"type": "start_sending", "sdp": "garbage"}, "negotiation", "no audio track"),
        ({"type": "start_sending", "sdp": OFFER}, "negotiation", "no m=audio section"),
        ({"type": "start_sending", "sdp": "x" * 20_000}, "limit", "webrtc.max_sdp_bytes"),
    ],
)
async def test_bad_input_gets_one_counted_error_and_the_session_stays(
    frame: Any, kind: str, expected: str
) -> None:
    ctx = make_context()
    async with connected(ctx) as ws:
        await ws.read()  # welcome
        error = await ws.request(frame)
        assert error["type"] == "error" and expected in error["message"], error
        assert ctx.metrics.errors == {kind: 1}
        assert (await ws.request({"type": "ping"}))["type"] == "pong"
        assert ws.close_frame is None


# Auth --------------------------------------------------------------------------------------
async def test_without_a_token_the_client_is_refused_before_it_is_registered() -> None:
    ctx = make_context(auth={"secret": SECRET})
    async with connected(ctx) as ws:
        ws.write({"type": "get_available_streams"})
        error = await ws.read()
        assert "authentication required" in error["message"]
        assert (await wait_closed(ws, 2))[0] == 1008
        assert ctx.metrics.sessions_total == 0 and ctx.metrics.errors == {"auth": 1}


async def test_a_token_in_the_url_or_first_message_is_accepted_and_its_role_enforced() -> None:
    ctx = make_context(auth={"secret": SECRET})
    async with connected(ctx, token=mint(SECRET, "receive", 60)) as ws:
        assert (await ws.read())["type"] == "welcome"
        error = await ws.request({"type": "start_sending", "sdp": OFFER})
        assert "may not send" in error["message"]
        assert (await wait_closed(ws, 2))[0] == 1008
    async with connected(ctx) as ws:
        ws.write({"type": "auth", "token": mint(SECRET, "both", 60, subject="desk")})
        assert (await ws.read())["type"] == "welcome"
        renewed = await ws.request({"type": "auth", "token": mint(SECRET, "send", 60)})
        assert renewed == {"type": "authenticated", "role": "send", "stream": None}
    assert ctx.metrics.errors == {"auth": 1} and ctx.metrics.sessions_total == 2


# Limits ------------------------------------------------------------------------------------
async def test_a_sender_over_max_streams_is_refused_naming_the_key() -> None:
    ctx = make_context(streams={"max_streams": 1})
    ctx.registry.sessions["other"] = SessionInfo("other", "elsewhere", role="sender")
    async with connected(ctx) as ws:
        await ws.read()
        error = await ws.request({"type": "start_sending", "sdp": OFFER})
        assert "streams.max_streams" in error["message"]
        assert ctx.metrics.errors == {"limit": 1}
    del ctx.registry.sessions["other"]


async def test_a_flood_is_refused_then_closed_with_1008() -> None:
    ctx = make_context(server={"max_messages_per_second": 5})
    async with connected(ctx) as ws:
        await ws.read()
        for _ in range(40):
            ws.write({"type": "ping"})
        replies = [await ws.read() for _ in range(10 + 11)]  # 10 pongs (2 s burst), 11 refusals
        assert [r["type"] for r in replies[:10]] == ["pong"] * 10
        assert "closing" in replies[-1]["message"]
        assert await wait_closed(ws, 3) == (1008, replies[-1]["message"][:120])
        assert ctx.metrics.errors == {"limit": 10, "flood": 1}


# Timeouts ----------------------------------------------------------------------------------
async def test_a_silent_session_gets_an_idle_timeout_error_then_close_1000() -> None:
    ctx = make_context(webrtc={"connection_timeout": 0.3})
    async with connected(ctx) as ws:
        await ws.read()
        error = await ws.read(timeout=3)
        assert "idle timeout" in error["message"]
        assert await wait_closed(ws, 2) == (1000, "idle timeout")
        assert ctx.metrics.errors == {"idle_timeout": 1}


async def test_a_client_that_never_reads_is_still_closed_when_idle() -> None:
    ctx = make_context(webrtc={"connection_timeout": 0.3})
    ws = FakeWebSocket(reads=False)
    async with connected(ctx, ws):
        started = anyio.current_time()
        assert (await wait_closed(ws, 5))[0] == 1000
        # The idle deadline, then at most the teardown deadline for the stuck writer.
        assert anyio.current_time() - started < 0.3 + 1.0 + 1.0


async def test_a_client_that_sends_but_never_reads_is_closed_when_its_outbox_fills() -> None:
    ctx = make_context(server={"max_messages_per_second": 10_000})
    ws = FakeWebSocket(reads=False)
    async with connected(ctx, ws):
        for _ in range(OUTBOX_SIZE + 5):
            ws.write({"type": "ping"})
        code, reason = await wait_closed(ws, 5)
        assert code == 1008 and "not reading" in reason
        assert ctx.metrics.errors["not_reading"] == 1


# Media errors after negotiation: the same one path -------------------------------------------
async def test_a_receiver_that_never_answers_gets_an_error_and_keeps_its_session() -> None:
    ctx = make_context(webrtc={"negotiation_timeout": 0.5})
    async with listenable_stream(ctx), connected(ctx) as ws:
        await ws.read()
        offer = await ws.request({"type": "start_receiving"})
        assert offer["type"] == "offer" and offer["stream_id"] == "stream_test"
        assert ctx.registry.receiver_count == 1 and ctx.metrics.live.peer_connections == 1
        busy = await ws.request({"type": "start_receiving"})
        assert "this connection is receiver; send stop before start_receiving" in busy["message"]
        error = await ws.read(timeout=3)
        assert "no answer to the offer within 0.5 s" in error["message"]
        assert ctx.metrics.errors == {"session_state": 1, "negotiation": 1}
        assert ctx.registry.receiver_count == 0 and ctx.metrics.live.peer_connections == 0
        assert (await ws.request({"type": "ping"}))["type"] == "pong"


async def test_a_bad_answer_ends_the_media_and_stop_after_it_is_harmless() -> None:
    ctx = make_context()
    async with listenable_stream(ctx), connected(ctx) as ws:
        await ws.read()
        await ws.request({"type": "start_receiving", "stream_id": "stream_test"})
        error = await ws.request({"type": "answer", "sdp": "v=0\r\nnonsense"})
        assert "cannot use this answer" in error["message"]
        assert ctx.metrics.errors == {"negotiation": 1}
        assert (await ws.request({"type": "stop"}))["type"] == "stopped"


async def test_stop_ends_a_waiting_receiver_and_frees_its_peer() -> None:
    ctx = make_context()
    async with listenable_stream(ctx), connected(ctx) as ws:
        await ws.read()
        await ws.request({"type": "start_receiving"})
        assert (await ws.request({"type": "stop"}))["type"] == "stopped"
        assert ctx.registry.receiver_count == 0 and ctx.metrics.live.peer_connections == 0
        assert [info.role for info in ctx.registry.sessions.values()] == ["idle"]


async def test_a_stream_that_ends_while_a_receiver_starts_is_an_error_not_a_crash() -> None:
    ctx = make_context()
    async with listenable_stream(ctx) as stream, connected(ctx) as ws:
        await ws.read()
        stream.close_relays()  # its sender is leaving: relays closed, `ended` not set yet
        error = await ws.request({"type": "start_receiving"})
        assert "stream_test has ended" in error["message"]
        assert ctx.metrics.errors == {"session_state": 1}


async def test_bad_frames_are_all_counted_but_logged_sparingly() -> None:
    ctx = make_context(server={"max_messages_per_second": 10_000})
    with structlog.testing.capture_logs() as logs:
        async with connected(ctx) as ws:
            await ws.read()
            for _ in range(50):
                ws.write(b"")
            for _ in range(50):
                assert "binary frames" in (await ws.read())["message"]
    assert ctx.metrics.errors == {"protocol": 50}
    assert 1 <= len([e for e in logs if e["event"] == "client_error"]) <= 10
