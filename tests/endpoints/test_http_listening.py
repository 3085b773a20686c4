"""Listening without WebRTC: `GET :8081/stream/<stream_id>.ogg` as VLC or ffplay would."""

from __future__ import annotations

import io
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import av
import httpx
import numpy as np
import pytest
from aiortc import MediaStreamTrack

from relay_app.client import RelayClient, ToneTrack, dominant_frequency
from relay_app.core import protocol as p
from relay_app.core.auth import mint
from relay_app.tools.testing import ServerProcess

from ..helpers import SECRET, server_event, serving

# The HTTP path is fed from the RTP tap in both relay modes: the same code either way.
pytestmark = [pytest.mark.anyio, pytest.mark.mode_independent]


DEAD_PEER_TIMEOUT = 3.0  # server.dead_peer_timeout where a listener stalls on purpose
HALL = {"hall": {"label": "Hall"}}
# What a player may send after its GET before any answer: nothing (curl, VLC), or its next
# request, pipelined (HTTP/1.1 allows it; a stray CRLF does the same to the server).
AHEAD = {"nothing": b"", "a pipelined request": b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"}
GONE_WITHIN = 5.0  # s, generous: the server learns of a hang-up within a few ms


async def listen(url: str, seconds: float, headers: dict[str, str] | None = None) -> bytes:
    """What a player receives in `seconds` (less if the server ends the response)."""
    data = bytearray()
    async with (
        httpx.AsyncClient(timeout=10) as client,
        client.stream("GET", url, headers=headers) as response,
    ):
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"] == "audio/ogg"
        with anyio.move_on_after(seconds):
            async for chunk in response.aiter_bytes():
                data += chunk
    return bytes(data)


async def play(port: int, path: str, ahead: bytes) -> anyio.abc.SocketStream:
    """A player on a connection of its own: its GET, then `ahead`, sent before any answer."""
    player = await anyio.connect_tcp("127.0.0.1", port)
    await player.send(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode() + ahead)
    return player


async def read_at_least(player: anyio.abc.SocketStream, size: int) -> bytes:
    """What the server sent the player, once it is `size` bytes or more."""
    data = bytearray()
    with anyio.fail_after(10):
        while len(data) < size:
            data += await player.receive()
    return bytes(data)


async def wait_gone(server: ServerProcess, connections: int) -> float:
    """Seconds until the server holds `connections` sessions (and as many session groups)."""
    started = time.monotonic()
    with anyio.fail_after(GONE_WITHIN):
        while True:
            metrics = server.metrics()
            live = (metrics["active_connections"], metrics["live"]["session_task_groups"])
            if live == (connections, connections):
                return time.monotonic() - started
            await anyio.sleep(0.05)


def decode(ogg: bytes) -> tuple[np.ndarray, int]:
    """Mono float samples and rate, decoded by FFmpeg (PyAV) as a player would."""
    with av.open(io.BytesIO(ogg), format="ogg") as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name == "opus"
        frames = [frame.to_ndarray()[0] for frame in container.decode(stream)]
    return np.concatenate(frames).astype(np.float32), 48000


def pages(ogg: bytes) -> list[tuple[int, int, int]]:
    """(header type, granule, sequence) of each Ogg page."""
    found, offset = [], 0
    while offset < len(ogg):
        assert ogg[offset : offset + 4] == b"OggS", offset
        flags, granule, _, sequence, _, segments = struct.unpack_from("<BqIIIB", ogg, offset + 5)
        lacing = ogg[offset + 27 : offset + 27 + segments]
        found.append((flags, granule, sequence))
        offset += 27 + segments + sum(lacing)
    return found


def assert_hears_tone(ogg: bytes, hz: float, at_least: float) -> None:
    samples, rate = decode(ogg)
    assert len(samples) / rate >= at_least, len(samples) / rate
    assert abs(dominant_frequency(samples[rate // 2 :], rate) - hz) <= 10


async def test_several_http_listeners_and_a_late_one_hear_the_senders_tone(
    server: ServerProcess,
) -> None:
    async with RelayClient.connect(server.ws_url) as sender:
        stream_id = await sender.start_sending(ToneTrack(440))
        url = f"{server.status_url}/stream/{stream_id}.ogg"
        results: dict[str, bytes] = {}

        async def one(name: str, delay: float) -> None:
            await anyio.sleep(delay)
            results[name] = await listen(url, 3.0)

        async with anyio.create_task_group() as tg:
            for name in ("a", "b", "c"):
                tg.start_soon(one, name, 0.0)
            tg.start_soon(one, "late", 1.5)
            await anyio.sleep(1.0)
            status = server.get("/stream/status", status_port=True).json()
            assert status["streams"][0]["http_listeners"] == 3
        for name, ogg in results.items():
            assert_hears_tone(ogg, 440, at_least=2.0)
            found = pages(ogg)
            assert found[0][0] == 0x02, "the first page begins the stream"
            sequences = [sequence for _, _, sequence in found]
            assert sequences == list(range(sequences[0], sequences[0] + len(found))), name
            granules = [granule for _, granule, _ in found[2:]]
            assert granules == sorted(granules) and all(g % 960 == 0 for g in granules)
            # Its own timeline starts at 0 as a file's does, however late it came (a player
            # counts its play time from there: VLC's --run-time, the position it shows).
            assert granules[0] == 5 * 960, (name, granules[:3])
        numbers = [sequence for _, _, sequence in pages(results["late"])]
        assert numbers == list(range(len(numbers))), "a late listener's pages start at 0"
        metrics = server.metrics()
        assert metrics["live"]["http_listeners"] == 0
    server.wait_event("http_listener_ended", stream_id=stream_id, reason="client left")


async def test_stream_end_closes_every_response_with_an_end_of_stream_page(
    server: ServerProcess,
) -> None:
    live = anyio.Event()
    stream_ids: list[str] = []
    results: list[bytes] = []

    async def sender_for(seconds: float) -> None:
        async with RelayClient.connect(server.ws_url) as sender:
            stream_ids.append(await sender.start_sending(ToneTrack(660)))
            live.set()
            await anyio.sleep(seconds)

    async def one() -> None:
        await live.wait()
        results.append(await listen(f"{server.status_url}/stream/{stream_ids[0]}.ogg", 20.0))

    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        # (4 s: on a busy machine a listener's response may start a second or two in)
        tg.start_soon(sender_for, 4.0)
        tg.start_soon(one)
        tg.start_soon(one)
    assert time.monotonic() - started < 12, "the responses ended with the stream"
    for ogg in results:
        assert pages(ogg)[-1][0] & 0x04, "the last page carries the end-of-stream flag"
        assert_hears_tone(ogg, 660, at_least=1.0)
    server.wait_event("http_listener_ended", stream_id=stream_ids[0], reason="stream ended")


async def test_a_listener_that_stops_reading_is_dropped_and_closed_while_others_keep_hearing(
    tmp_path: Path,
) -> None:
    """One relay mode only: the HTTP path does not depend on it, and this takes 15 s."""
    for server in serving(tmp_path, {"server": {"dead_peer_timeout": DEAD_PEER_TIMEOUT}}):
        await _one_stalls_one_listens(server)


async def _one_stalls_one_listens(server: ServerProcess) -> None:
    async with RelayClient.connect(server.ws_url) as sender:
        stream_id = await sender.start_sending(ToneTrack(440))
        path = f"/stream/{stream_id}.ogg"
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", server.audio_port))
        stalled.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        try:  # it never reads; a good listener meanwhile hears everything
            good = await listen(server.status_url + path, 15.0)
            # Its window stays shut: cut by the kernel after server.dead_peer_timeout (or
            # dropped as too slow, whichever comes first), its connection gone, not kept.
            event = server.wait_event("http_listener_ended", timeout=15, stream_id=stream_id)
            assert event["reason"] in ("too slow", "client left"), event
            client_port = stalled.getsockname()[1]
            with anyio.fail_after(DEAD_PEER_TIMEOUT + 5):
                while _server_side_open(server.audio_port, client_port):
                    await anyio.sleep(0.5)
        finally:
            stalled.close()
        assert_hears_tone(good, 440, at_least=14.0)


def _server_side_open(server_port: int, client_port: int) -> bool:
    """Whether the server still holds its end of that TCP connection (/proc/net/tcp)."""
    ours = f":{server_port:04X}"
    theirs = f":{client_port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(ours) and fields[2].endswith(theirs):
            return True
    return False


async def test_unknown_stream_is_404_and_latest_follows_a_new_sender(
    server: ServerProcess,
) -> None:
    response = httpx.get(f"{server.status_url}/stream/latest.ogg", timeout=5)
    assert response.status_code == 404
    assert "No audio stream available" in response.json()["message"]
    response = httpx.get(f"{server.status_url}/stream/stream_nope.ogg", timeout=5)
    assert response.status_code == 404 and response.json()["status"] == 404
    for hz in (440, 880):
        async with RelayClient.connect(server.ws_url) as sender:
            stream_id = await sender.start_sending(ToneTrack(hz))
            ogg = await listen(f"{server.status_url}/stream/latest.ogg", 2.5)
            assert_hears_tone(ogg, hz, at_least=1.5)
        server.wait_event("http_listener_started", stream_id=stream_id)


async def test_http_listeners_are_limited_per_stream(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server({"streams": {"max_http_listeners": 1}})
    async with RelayClient.connect(server.ws_url) as sender:
        stream_id = await sender.start_sending(ToneTrack(440))
        url = f"{server.status_url}/stream/{stream_id}.ogg"
        async with anyio.create_task_group() as tg:
            tg.start_soon(listen, url, 2.0)
            await anyio.sleep(1.0)
            response = httpx.get(url, timeout=5)
            assert response.status_code == 503
            assert "streams.max_http_listeners" in response.json()["message"]


async def test_with_auth_on_listening_needs_a_receive_token_for_that_stream(
    tmp_path: Path,
) -> None:
    metrics = {"Authorization": f"Bearer {mint(SECRET, 'metrics', 600)}"}
    for server in serving(tmp_path, {"auth": {"secret": SECRET}}, metrics):
        await _listen_with_tokens(server)


async def _listen_with_tokens(server: ServerProcess) -> None:
    sender_token = mint(SECRET, "send", 600)
    async with RelayClient.connect(server.ws_url, token=sender_token) as sender:
        stream_id = await sender.start_sending(ToneTrack(440))
        url = f"{server.status_url}/stream/{stream_id}.ogg"
        assert httpx.get(url, timeout=5).status_code == 401
        other = mint(SECRET, "receive", 600, stream="stream_other")
        assert httpx.get(f"{url}?token={other}", timeout=5).status_code == 403  # may not
        metrics_token = mint(SECRET, "metrics", 600)
        assert httpx.get(f"{url}?token={metrics_token}", timeout=5).status_code == 403
        scoped = mint(SECRET, "receive", 600, stream=stream_id)
        ogg = await listen(url, 2.0, headers={"Authorization": f"Bearer {scoped}"})
        assert_hears_tone(ogg, 440, at_least=1.0)
        ogg = await listen(f"{url}?token={scoped}", 2.0)
        assert_hears_tone(ogg, 440, at_least=1.0)


@pytest.mark.parametrize("ahead", AHEAD.values(), ids=AHEAD.keys())
async def test_a_channel_listener_that_hangs_up_while_nobody_speaks_is_gone_and_its_place_free(
    make_server: Callable[..., ServerProcess], ahead: bytes
) -> None:
    server = make_server({"channels": HALL, "streams": {"max_http_listeners": 1}})
    url = f"{server.status_url}/stream/hall.ogg"
    async with RelayClient.connect(server.ws_url) as speaker:
        await speaker.start_sending(ToneTrack(440), channel="hall")
        player = await play(server.audio_port, "/stream/hall.ogg", ahead)
        await read_at_least(player, 4000)  # the headers and some pages of audio
    # The speaker has left; nobody follows: the listener waits on the channel, sent nothing.
    server.wait_event("http_listener_ended", stream_id="hall", reason="stream ended")
    await wait_gone(server, 1)  # (the speaker's session is over: only the listener's)
    await anyio.sleep(0.5)
    await player.aclose()  # the player hangs up
    seconds = await wait_gone(server, 0)
    print(f"hang-up to session gone: {seconds:.3f} s")
    # Its place among streams.max_http_listeners (1) is free for the next listener.
    async with RelayClient.connect(server.ws_url) as speaker:
        await speaker.start_sending(ToneTrack(660), channel="hall")
        assert_hears_tone(await listen(url, 2.5), 660, at_least=1.5)


@pytest.mark.parametrize("ahead", AHEAD.values(), ids=AHEAD.keys())
async def test_a_channel_listener_that_hangs_up_while_audio_flows_ends_as_before(
    make_server: Callable[..., ServerProcess], ahead: bytes
) -> None:
    server = make_server({"channels": HALL})
    async with RelayClient.connect(server.ws_url) as speaker:
        await speaker.start_sending(ToneTrack(440), channel="hall")
        player = await play(server.audio_port, "/stream/hall.ogg", ahead)
        await read_at_least(player, 4000)
        await player.aclose()
        await wait_gone(server, 1)  # the speaker's own session stays, and its audio
        server.wait_event("http_listener_ended", stream_id="hall", reason="client left")
        assert server.metrics()["live"]["http_listeners"] == 0


async def test_a_player_that_asked_ahead_gets_its_answer_once_the_stream_ends(
    server: ServerProcess,
) -> None:
    """Its next request waits for the stream's end, on the same connection, as HTTP/1.1
    has it: the server reads on meanwhile but answers in order."""
    async with RelayClient.connect(server.ws_url) as sender:
        stream_id = await sender.start_sending(ToneTrack(440))
        player = await play(
            server.audio_port, f"/stream/{stream_id}.ogg", AHEAD["a pipelined request"]
        )
        await read_at_least(player, 4000)
        await sender.send(p.Stop())
        await sender.expect("stopped")
    data = bytearray()
    with anyio.fail_after(10):
        while b'"status"' not in data:  # /health's JSON answer, after the Ogg response
            data += await player.receive()
    await player.aclose()
    ogg_end = data.index(b"HTTP/1.1 200")
    assert data.count(b"HTTP/1.1 200") == 1 and data[:ogg_end].endswith(b"0\r\n\r\n")


class MuteTrack(MediaStreamTrack):
    """A microphone whose audio never comes (its sound card hangs, say): no packet is sent."""

    kind = "audio"

    async def recv(self) -> Any:
        await anyio.sleep_forever()


async def test_a_channel_listener_stays_on_when_a_speaker_leaves_before_any_audio_came(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server({"channels": HALL})
    url = f"{server.status_url}/stream/hall.ogg"
    async with anyio.create_task_group() as group:
        heard: list[bytes] = []

        async def listener() -> None:
            heard.append(await listen(url, 6.0))

        async with RelayClient.connect(server.ws_url) as speaker:
            await speaker.start_sending(MuteTrack(), channel="hall")
            group.start_soon(listener)
            await server_event(server, "http_listener_started")
            await anyio.sleep(0.5)
        await server_event(server, "http_listener_ended", reason="stream ended")
        async with RelayClient.connect(server.ws_url) as speaker:
            await speaker.start_sending(ToneTrack(660), channel="hall")
            await anyio.sleep(4.0)
    assert_hears_tone(heard[0], 660, at_least=2.0)  # the same response, the next speaker
    assert not [e for e in server.events if e.get("level") in ("error", "critical")]
