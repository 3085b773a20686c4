"""WHIP and WHEP clients on aiortc: HTTP + SDP only, no WebSocket (tests, and a reference for
what a WHIP/WHEP tool does against relay_app; see docs/whip-whep.md).

    async with whip_publish("http://relay:8080/whip/english", ToneTrack(440)) as session:
        ...                                  # publishing until the block ends (DELETE)
    async with whep_play("http://relay:8080/whep/english") as session:
        await session.recorder.wait_seconds(3)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from urllib.parse import urljoin

import anyio
import httpx
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from ..core.errors import sole_error
from .tracks import Recorder, record_track

SDP = "application/sdp"


class WhipError(Exception):
    """The server refused the offer: its HTTP status and JSON message."""

    def __init__(self, status: int, message: str, headers: httpx.Headers) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.headers = headers


@dataclass(eq=False)
class WhipSession:
    location: str
    pc: RTCPeerConnection
    recorder: Recorder = field(default_factory=Recorder)


async def _offer(
    http: httpx.AsyncClient, url: str, pc: RTCPeerConnection, token: str | None
) -> str:
    """POST our complete offer (non-trickle), apply the answer, return the resource URL."""
    await pc.setLocalDescription(await pc.createOffer())
    headers = {"Content-Type": SDP}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    response = await http.post(url, content=pc.localDescription.sdp, headers=headers)
    if response.status_code != 201:
        try:
            message = response.json()["message"]
        except ValueError:
            message = response.text
        raise WhipError(response.status_code, message, response.headers)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=response.text, type="answer"))
    return urljoin(url, response.headers["Location"])


async def _delete(http: httpx.AsyncClient, location: str, token: str | None) -> None:
    """End the resource. Asked again once on a fresh connection if the kept-alive one was
    closed under the request (the server's keep-alive timeout racing it): DELETE is
    idempotent, and a browser retries it the same way."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        await http.delete(location, headers=headers)
    except (httpx.RemoteProtocolError, httpx.ConnectError, httpx.ReadError):
        await http.delete(location, headers={**headers, "Connection": "close"})


@asynccontextmanager
async def _session(
    url: str, pc: RTCPeerConnection, token: str | None
) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    async with httpx.AsyncClient(timeout=10) as http:
        try:
            location = await _offer(http, url, pc, token)
            try:
                yield http, location
            finally:
                with anyio.move_on_after(5, shield=True):
                    await _delete(http, location, token)
        finally:
            with anyio.move_on_after(5, shield=True):
                await pc.close()


@asynccontextmanager
async def whip_publish(
    url: str, track: MediaStreamTrack, token: str | None = None, *more: MediaStreamTrack
) -> AsyncIterator[WhipSession]:
    """Publish `track` (and `more`, e.g. a video track as OBS sends) until the block ends."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    for each in (track, *more):
        pc.addTransceiver(each, direction="sendonly")
    async with _session(url, pc, token) as (_, location):
        yield WhipSession(location, pc)


@asynccontextmanager
async def whep_play(
    url: str,
    token: str | None = None,
    sections: Sequence[tuple[str, str]] = (("audio", "recvonly"),),
) -> AsyncIterator[WhipSession]:
    """Play a WHEP endpoint into `session.recorder` until the block ends. `sections`: the
    offer's media sections in order, (kind, direction), as other players make them (video
    first, or a sendrecv audio section)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    for kind, direction in sections:
        pc.addTransceiver(kind, direction=direction)
    recorder = Recorder()
    try:
        async with anyio.create_task_group() as tg:

            @pc.on("track")
            def _on_track(track: MediaStreamTrack) -> None:
                tg.start_soon(record_track, track, recorder)

            try:
                async with _session(url, pc, token) as (_, location):
                    yield WhipSession(location, pc, recorder)
            finally:
                tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise sole_error(group) from None  # a refusal is a WhipError, as for whip_publish
