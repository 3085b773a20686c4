"""WHIP ingest and WHEP playback: tools that speak only HTTP + SDP.

An aiortc WHIP client (no WebSocket) publishes a tone; WebSocket receivers, WHEP players and
HTTP listeners hear it. Every status the RFC asks for answers as documented.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import anyio
import av
import httpx
import pytest
from aiortc import VideoStreamTrack

from relay_app.client import RelayClient, ServerError, ToneTrack, dominant_frequency
from relay_app.client.whip import WhipError, whep_play, whip_publish
from relay_app.core import protocol as p
from relay_app.core.auth import mint
from relay_app.server.tls import make_self_signed
from relay_app.tools.testing import REPO, ServerProcess, free_udp_port

from ..helpers import SECRET, serving
from .test_http_listening import decode, listen

pytestmark = pytest.mark.anyio


def dominant(recorder: object) -> float:
    audio = recorder.audio(1.0)  # type: ignore[attr-defined]
    return dominant_frequency(audio, recorder.sample_rate)  # type: ignore[attr-defined]


async def test_a_whip_publisher_is_heard_over_websocket_whep_and_http(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server({"channels": {"stage": {"label": "Stage"}}})
    async with whip_publish(f"{server.base_url}/whip/stage", ToneTrack(440)) as published:
        assert published.location.startswith(f"{server.base_url}/whip/stage/")
        async with (
            RelayClient.connect(server.ws_url) as receiver,
            whep_play(f"{server.base_url}/whep/stage") as player,
        ):
            assert await receiver.start_receiving("stage") == "stage"
            await receiver.wait_audio(1.5)
            await player.recorder.wait_seconds(1.5)
            assert abs(dominant(receiver.recorder) - 440) <= 10
            assert abs(dominant(player.recorder) - 440) <= 10
            ogg = await listen(f"{server.status_url}/stream/stage.ogg", 1.5)
            audio, rate = decode(ogg)
            assert abs(dominant_frequency(audio, rate) - 440) <= 10
            sessions = server.get("/admin/sessions").json()["sessions"]
            assert sorted(row["role"] for row in sessions) == ["receiver", "receiver", "sender"]
        # DELETE ends the stream: a WebSocket receiver of it is told so.
        async with RelayClient.connect(server.ws_url) as receiver:
            await receiver.start_receiving("stage")
            async with httpx.AsyncClient() as http:
                assert (await http.delete(published.location)).status_code == 200
                assert (await http.delete(published.location)).status_code == 404
            ended = await receiver.receive(p.StreamEnded)
            assert ended.stream_id == "stage"
    server.wait_event("connection_cleanup", via="whip")


async def test_whip_and_whep_answer_with_the_statuses_the_rfc_names(tmp_path: Path) -> None:
    config = {"auth": {"secret": SECRET}, "streams": {"max_streams": 2}}
    metrics = {"Authorization": f"Bearer {mint(SECRET, 'metrics', 600)}"}
    send, receive = mint(SECRET, "send", 600), mint(SECRET, "receive", 600)
    for server in serving(tmp_path, config, metrics):
        url = f"{server.base_url}/whip/booth"
        with pytest.raises(WhipError) as refused:  # no token
            async with whip_publish(url, ToneTrack(440)):
                pass
        assert refused.value.status == 401 and "Bearer" in refused.value.headers["www-authenticate"]
        with pytest.raises(WhipError) as refused:  # a token that may not send
            async with whip_publish(url, ToneTrack(440), token=receive):
                pass
        assert refused.value.status == 403
        with pytest.raises(WhipError) as refused:  # nobody on that channel to play
            async with whep_play(f"{server.base_url}/whep/booth", token=receive):
                pass
        assert refused.value.status == 404
        # OBS offers video too: answered inactive, the audio is relayed.
        video = VideoStreamTrack()
        async with whip_publish(f"{server.base_url}/whip/obs", ToneTrack(440), send, video) as obs:
            answer = obs.pc.remoteDescription.sdp
            assert "m=video" in answer and "a=inactive" in answer.split("m=video")[1]
            assert server.get("/stream/status").json()["active_streams"] == ["obs"]
        async with whip_publish(url, ToneTrack(440), token=send) as first:
            with pytest.raises(WhipError) as refused:  # busy channel
                async with whip_publish(url, ToneTrack(660), token=send):
                    pass
            assert refused.value.status == 409 and "busy" in refused.value.message
            async with whip_publish(f"{server.base_url}/whip/other", ToneTrack(660), token=send):
                with pytest.raises(WhipError) as refused:  # over streams.max_streams
                    async with whip_publish(
                        f"{server.base_url}/whip/third", ToneTrack(550), token=send
                    ):
                        pass
                assert refused.value.status == 503 and refused.value.headers["retry-after"]
            async with httpx.AsyncClient() as http:
                patch = await http.patch(first.location, content=b"a=candidate:x")
                assert patch.status_code == 405 and "DELETE" in patch.headers["allow"]
                bearer = {"Authorization": f"Bearer {send}"}
                for body, content_type, status in [
                    (b"v=0 garbage", "application/sdp", 400),
                    (b"{}", "application/json", 415),
                    (b"v=0\r\n" + b"a=x\r\n" * 30000, "application/sdp", 413),
                ]:
                    headers = {"Content-Type": content_type, **bearer}
                    answer = await http.post(
                        url.replace("booth", "new"), content=body, headers=headers
                    )
                    assert answer.status_code == status, answer.text
                    assert answer.json()["status"] == status
                preflight = await http.options(url, headers={"Origin": server.base_url})
                assert preflight.status_code == 204
                assert preflight.headers["access-control-allow-origin"] == server.base_url
                assert "POST" in preflight.headers["access-control-allow-methods"]
                assert "Authorization" in preflight.headers["access-control-allow-headers"]
                foreign = {"Origin": "http://evil.example", "Content-Type": "application/sdp"}
                assert (await http.post(url, content=b"v=0", headers=foreign)).status_code == 403


@pytest.mark.parametrize("one_port", [False, True], ids=["own-ports", "one-udp-port"])
async def test_ffmpeg_publishes_over_whip_and_a_websocket_receiver_hears_it(
    tmp_path: Path, one_port: bool
) -> None:
    """Interop with a WHIP client we did not write: FFmpeg 8's WHIP muxer (from PyAV), with
    a port per peer connection and on the one UDP port (webrtc.udp_port)."""
    if "whip" not in av.formats_available:
        pytest.fail("PyAV's FFmpeg has no WHIP muxer (FFmpeg 8 is needed)")
    cert, key = make_self_signed(["ffmpeg"], tmp_path)
    config = {"webrtc": {"udp_port": free_udp_port()}} if one_port else {}
    for server in serving(tmp_path, config):
        url = f"{server.base_url}/whip/desk"
        command = [sys.executable, "-m", "tests.tools.ffmpeg_whip", url, "6", "440"]
        async with await anyio.open_process([*command, str(cert), str(key)], cwd=REPO) as ffmpeg:
            async with RelayClient.connect(server.ws_url) as receiver:
                with anyio.fail_after(10):
                    while True:
                        try:
                            await receiver.start_receiving("desk")
                            break
                        except ServerError:
                            await anyio.sleep(0.2)
                await receiver.wait_audio(2.0)
                assert abs(dominant(receiver.recorder) - 440) <= 10
                assert (await receiver.receive(p.StreamEnded, timeout=10)).stream_id == "desk"
            with anyio.fail_after(10):
                assert await ffmpeg.wait() == 0
            assert ffmpeg.stdout is not None
            assert b"published" in await ffmpeg.stdout.receive()
        access = server.find("http_access", method="DELETE")
        assert access and access[-1]["status"] == 200, "FFmpeg ended with DELETE"
