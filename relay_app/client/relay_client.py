"""RelayClient: one WebSocket session with the relay, and at most one peer connection."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import urlencode

import anyio
import websockets
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from ..core import protocol as p
from ..core.metrics import Metrics
from ..webrtc.ice import hide_addresses
from ..webrtc.red import Repair
from ..webrtc.rtp_tap import negotiated_opus_payload_type, receive_red, tap_receiver
from ..webrtc.sdp import negotiated_red, with_red
from .tracks import Recorder

MESSAGES_KEPT = 1000


class ServerError(Exception):
    """The server answered with `{"type": "error"}`."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


M = TypeVar("M", bound=p.ServerMessage)
Outgoing = p.ClientMessage | dict[str, Any] | str | bytes
"""A protocol model; or, for tests of bad input, a raw dict, text or binary frame."""
Notice = p.SpeakerLost | p.SpeakerBack | p.Booth
NOTICES = (p.SpeakerLost, p.SpeakerBack, p.Booth)


class RelayClient:
    """One WebSocket session with the relay, and at most one peer connection.

    Use as `async with RelayClient.connect(url) as client:`; leaving the block closes the peer
    connection and the WebSocket and ends the client's own tasks. Messages are protocol.py's
    models both ways. What it keeps is bounded: the newest MESSAGES_KEPT messages and
    visualizations, and an inbox that drops its oldest unread message when full (a CLI that
    only pings never reads its pongs).
    """

    def __init__(self, ws: Any, tg: anyio.abc.TaskGroup, ice_servers: list[dict[str, Any]]):
        self.ws = ws
        self._tg = tg
        self._ice_servers = ice_servers
        self.welcome: p.Welcome | None = None
        self.messages: deque[p.ServerMessage] = deque(maxlen=MESSAGES_KEPT)  # newest, in order
        self.visualizations: deque[p.Visualization] = deque(maxlen=MESSAGES_KEPT)
        # What the server says along the way (speaker_lost, speaker_back, booth): kept
        # here, in `messages` too, and never in the way of `expect`.
        self.notices: deque[Notice] = deque(maxlen=MESSAGES_KEPT)
        self._inbox: deque[p.ServerMessage] = deque(maxlen=MESSAGES_KEPT)
        self._arrived = anyio.Event()
        self.pc: RTCPeerConnection | None = None
        self.recorder = Recorder()
        self.stream_id: str | None = None
        # Send mDNS names instead of our addresses, as browsers do (ice.hide_addresses).
        self.hide_addresses = False
        # Take RED (RFC 2198) when the relay offers it, as browsers do: lost packets are then
        # rebuilt from the next before aiortc decodes them (webrtc/red.py).
        self.red = False
        self.closed = anyio.Event()
        self.close_code: int | None = None
        self.close_reason: str | None = None

    @property
    def connection_id(self) -> str:
        assert self.welcome is not None
        return self.welcome.connection_id

    @classmethod
    @asynccontextmanager
    async def connect(
        cls,
        url: str,
        *,
        ice_servers: list[dict[str, Any]] | None = None,
        token: str | None = None,
        token_in_url: bool = True,
        **ws_options: Any,
    ) -> AsyncIterator[RelayClient]:
        """Open a session; with `token`, authenticate in the URL or in a first `auth` message."""
        if token is not None and token_in_url:
            url += ("&" if "?" in url else "?") + urlencode({"token": token})
        async with (
            websockets.connect(url, max_size=None, **ws_options) as ws,
            anyio.create_task_group() as tg,
        ):
            client = cls(ws, tg, ice_servers or [])
            tg.start_soon(client._read_loop)
            try:
                if token is not None and not token_in_url:
                    await client.send(p.Auth(token=token))
                client.welcome = await client.receive(p.Welcome)
                yield client
            finally:
                with anyio.move_on_after(5, shield=True):
                    await client.close_media()
                    await ws.close()
                tg.cancel_scope.cancel()

    async def _read_loop(self) -> None:
        try:
            async for text in self.ws:
                message = p.parse_server_message(text)
                self.messages.append(message)
                if isinstance(message, p.Visualization):
                    self.visualizations.append(message)
                elif isinstance(message, NOTICES):
                    self.notices.append(message)
                else:
                    self._inbox.append(message)  # full: the oldest unread one is dropped
                self._wake()
        except websockets.ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code
            self.close_reason = self.ws.close_reason
            self.closed.set()
            self._wake()

    def _wake(self) -> None:
        self._arrived.set()
        self._arrived = anyio.Event()

    async def send(self, message: Outgoing) -> None:
        if isinstance(message, dict):
            message = json.dumps(message)
        elif not isinstance(message, str | bytes):
            message = p.encode(message)
        await self.ws.send(message)

    async def next_message(self, timeout: float = 10) -> p.ServerMessage:
        """The next message other than a visualization or a notice; EndOfStream once the
        socket closed."""
        with anyio.fail_after(timeout):
            while not self._inbox:
                if self.closed.is_set():
                    raise anyio.EndOfStream
                await self._arrived.wait()
            return self._inbox.popleft()

    async def expect(self, *types: str, timeout: float = 10) -> p.ServerMessage:
        """The next message, of one of `types`; ServerError on an unexpected error."""
        message = await self.next_message(timeout)
        if message.type in types:
            return message
        if isinstance(message, p.Error):
            raise ServerError(message.message)
        raise AssertionError(f"expected {types}, got {message}")

    async def receive(self, kind: type[M], timeout: float = 10) -> M:
        """`expect` with the model class: the result is typed."""
        message = await self.expect(kind.model_fields["type"].default, timeout=timeout)
        assert isinstance(message, kind)
        return message

    async def request(self, message: Outgoing, *types: str) -> p.ServerMessage:
        await self.send(message)
        return await self.expect(*types)

    @staticmethod
    def _receive_red(pc: RTCPeerConnection, red: int | None, tap: bool) -> None:
        """RED packets reach the receiver; with `tap`, aiortc decodes the repaired Opus."""
        if red is None:
            return
        receive_red(pc, red)
        if tap:
            repair = Repair(Metrics(), negotiated_opus_payload_type(pc), red)
            receiver = pc.getTransceivers()[0].receiver
            tap_receiver(receiver, lambda packet, arrival: None, repair=repair)

    def _local_sdp(self, pc: RTCPeerConnection) -> str:
        sdp: str = pc.localDescription.sdp
        return hide_addresses(sdp) if self.hide_addresses else sdp

    def _new_pc(self) -> RTCPeerConnection:
        servers = [RTCIceServer(**server) for server in self._ice_servers]
        return RTCPeerConnection(RTCConfiguration(iceServers=servers))

    async def start_sending(
        self, track: MediaStreamTrack, channel: str | None = None, takeover: bool = False
    ) -> str:
        """Offer `track` (on `channel`, if named; replacing its sender with `takeover`);
        return the stream_id once the server has stored the stream."""
        self.pc = pc = self._new_pc()
        pc.addTransceiver(track, direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        await self.send(p.StartSending(sdp=self._local_sdp(pc), channel=channel, takeover=takeover))
        answer = await self.receive(p.AnswerOut)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer.sdp, type="answer"))
        started = await self.receive(p.StreamStarted)
        self.stream_id = started.stream_id
        return started.stream_id

    async def start_receiving(
        self,
        stream_id: str | None = None,
        on_track: Callable[[RTCPeerConnection, MediaStreamTrack], None] | None = None,
        recorder: Recorder | None = None,
        visualization: bool = False,
    ) -> str:
        """Ask for a stream and answer the offer; audio lands in `self.recorder` (a new
        `Recorder()` unless one is given); `visualization` asks for level messages.

        `on_track` replaces the recorder (a load generator counts packets instead).
        """
        await self.send(p.StartReceiving(stream_id=stream_id, visualization=visualization))
        offer = await self.receive(p.Offer)
        return await self.answer_offer(offer, on_track, recorder or Recorder())

    async def answer_offer(
        self,
        offer: p.Offer,
        on_track: Callable[[RTCPeerConnection, MediaStreamTrack], None] | None = None,
        recorder: Recorder | None = None,
    ) -> str:
        """Answer the server's offer with a new peer connection (the old one is closed)."""
        await self.close_media()
        self.pc = pc = self._new_pc()
        if recorder is not None:
            self.recorder = recorder

        @pc.on("track")
        def _on_track(track: MediaStreamTrack) -> None:
            if on_track is not None:
                on_track(pc, track)
            else:
                self._tg.start_soon(self._record, track)

        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        answer = self._local_sdp(pc)
        if self.red:
            answer = with_red(answer, remote=offer.sdp)
            self._receive_red(pc, negotiated_red(answer, offer.sdp), tap=on_track is None)
        await self.send(p.Answer(sdp=answer))
        self.stream_id = offer.stream_id
        return offer.stream_id

    async def _record(self, track: MediaStreamTrack) -> None:
        """Into whichever recorder is current: `follow_channel` may start a new one."""
        try:
            while True:
                frame = await track.recv()
                self.recorder.add(frame)
        except MediaStreamError:
            pass

    async def follow_channel(self, timeout: float = 20, recorder: Recorder | None = None) -> str:
        """After `stream_ended` with `waiting` (a channel's sender left): wait for the
        channel's next sender, which plays on the same peer connection (no new offer); audio
        goes on into the same recorder unless one is given. Returns the stream id (the
        channel's name)."""
        started = await self.receive(p.StreamStarted, timeout=timeout)
        if recorder is not None:
            self.recorder = recorder
        self.stream_id = started.stream_id
        return started.stream_id

    async def wait_audio(self, seconds: float, timeout: float = 20) -> None:
        """Wait until `seconds` of audio have been received."""
        with anyio.fail_after(timeout):
            await self.recorder.wait_seconds(seconds)

    async def close_media(self) -> None:
        if self.pc is not None:
            pc, self.pc = self.pc, None
            await pc.close()
