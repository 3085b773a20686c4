"""Python client: `python -m relay_app.client send|listen`. The tests drive the server with it.

    python -m relay_app.client send --tone 440            # stream a 440 Hz tone
    python -m relay_app.client send --wav speech.wav      # stream a WAV file (looped)
    python -m relay_app.client listen --out heard.wav     # record the newest stream
    python -m relay_app.client listen --stream-id stream_ab12cd34-ef56 --out heard.wav

It speaks the same protocol as the web client (protocol.py documents every message) and, like
the server, keeps media on the addresses given by `--ice-address` (loopback in tests).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import json
import math
import sys
import time
import wave
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import anyio
import numpy as np
import numpy.typing as npt
import websockets
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame
from av.frame import Frame
from av.packet import Packet

from . import protocol as p
from .ice import hide_addresses, use_host_addresses

SAMPLE_RATE = 48000
FRAME_SAMPLES = 960  # 20 ms at 48 kHz
MESSAGES_KEPT = 1000


def single_error(error: BaseException) -> BaseException:
    """The one exception inside (nested) single-exception groups that task groups raise."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


class ServerError(Exception):
    """The server answered with `{"type": "error"}`."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class PacedTrack(MediaStreamTrack):
    """Base for generated audio: 20 ms s16 mono frames at 48 kHz, paced in real time.

    `pause()` stops producing frames without ending the track: the server then sees a sender
    whose media stopped while its WebSocket stays open (a stale stream).
    """

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._start: float | None = None
        self._sent = 0
        self._running = asyncio.Event()
        self._running.set()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._start = None
        self._running.set()

    def samples(self, offset: int, count: int) -> npt.NDArray[np.int16]:
        raise NotImplementedError

    async def recv(self) -> Frame:
        if self.readyState != "live":
            raise MediaStreamError
        await self._running.wait()
        now = time.monotonic()
        if self._start is None:
            self._start = now - self._sent / SAMPLE_RATE
        wait = self._start + self._sent / SAMPLE_RATE - now
        if wait > 0:
            await asyncio.sleep(wait)
        data = self.samples(self._sent, FRAME_SAMPLES)
        frame = AudioFrame.from_ndarray(data.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._sent
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        self._sent += FRAME_SAMPLES
        return frame


class ToneTrack(PacedTrack):
    def __init__(self, frequency: float, amplitude: float = 0.5) -> None:
        super().__init__()
        self.frequency = frequency
        self.amplitude = amplitude

    def samples(self, offset: int, count: int) -> npt.NDArray[np.int16]:
        t = (np.arange(offset, offset + count) / SAMPLE_RATE).astype(np.float64)
        wave_ = self.amplitude * np.sin(2 * math.pi * self.frequency * t)
        return (wave_ * 32767).astype(np.int16)


class WavTrack(PacedTrack):
    """A 16-bit PCM WAV file, mixed to mono, resampled to 48 kHz, looped."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        with wave.open(str(path), "rb") as wav:
            if wav.getsampwidth() != 2:
                raise ValueError(f"{path}: only 16-bit PCM WAV is supported")
            rate, channels = wav.getframerate(), wav.getnchannels()
            raw = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
        mono = raw.reshape(-1, channels).mean(axis=1)
        if rate != SAMPLE_RATE:
            positions = np.arange(0, len(mono), rate / SAMPLE_RATE)
            mono = np.interp(positions, np.arange(len(mono)), mono)
        if len(mono) == 0:
            raise ValueError(f"{path}: no audio")
        self._pcm = mono.astype(np.int16)

    def samples(self, offset: int, count: int) -> npt.NDArray[np.int16]:
        index = np.arange(offset, offset + count) % len(self._pcm)
        return self._pcm[index]


class Recorder:
    """A received track's audio: the newest `keep_seconds` as mono float samples for checks,
    and, with `wav`, everything written to that file as it arrives (16-bit mono).

    Memory stays bounded however long a listener runs (an hour of kept float samples would be
    ~700 MB).
    """

    def __init__(self, keep_seconds: float = 60.0, wav: Path | None = None) -> None:
        self.keep_seconds = keep_seconds
        self.chunks: deque[npt.NDArray[np.float32]] = deque()
        self._kept = 0  # samples in chunks
        self.sample_rate = SAMPLE_RATE
        self.frames = 0
        self.total_samples = 0
        self._wav_path = wav
        self._wav: wave.Wave_write | None = None
        self._progress = anyio.Event()

    def add(self, frame: Frame | Packet) -> None:
        if not isinstance(frame, AudioFrame):
            raise TypeError(f"expected decoded audio, got {type(frame).__name__}")
        data = frame.to_ndarray().astype(np.float32) / 32768.0
        channels = len(frame.layout.channels)
        if frame.format.is_planar:
            mono = data.mean(axis=0)
        else:
            mono = data.reshape(-1, channels).mean(axis=1)
        self.sample_rate = frame.sample_rate
        self._keep(mono)
        self._write(mono)
        self.frames += 1
        self.total_samples += len(mono)
        self._progress.set()
        self._progress = anyio.Event()

    def _keep(self, mono: npt.NDArray[np.float32]) -> None:
        self.chunks.append(mono)
        self._kept += len(mono)
        limit = self.keep_seconds * self.sample_rate
        while self.chunks and self._kept - len(self.chunks[0]) >= limit:
            self._kept -= len(self.chunks.popleft())

    def _write(self, mono: npt.NDArray[np.float32]) -> None:
        if self._wav_path is None:
            return
        if self._wav is None:
            self._wav = wave.open(str(self._wav_path), "wb")  # noqa: SIM115 (closed in close())
            self._wav.setnchannels(1)
            self._wav.setsampwidth(2)
            self._wav.setframerate(self.sample_rate)
        self._wav.writeframes((np.clip(mono, -1, 1) * 32767).astype(np.int16).tobytes())

    def close(self) -> None:
        """Finish the WAV file, if any (its header needs the final length)."""
        if self._wav is not None:
            self._wav.close()
            self._wav = None

    async def wait_seconds(self, seconds: float) -> None:
        while self.seconds < seconds:
            await self._progress.wait()

    @property
    def seconds(self) -> float:
        """All audio received so far, kept or not."""
        return self.total_samples / self.sample_rate

    def audio(self, last_seconds: float | None = None) -> npt.NDArray[np.float32]:
        """The kept audio (at most keep_seconds), or its last `last_seconds`."""
        if not self.chunks:
            return np.zeros(0, dtype=np.float32)
        samples = np.concatenate(self.chunks)
        if last_seconds is not None:
            samples = samples[-int(last_seconds * self.sample_rate) :]
        return samples


def dominant_frequency(samples: npt.NDArray[np.float32], sample_rate: int) -> float:
    """The strongest frequency (Hz) in the samples, by FFT with a Hann window."""
    if len(samples) < 2:
        return 0.0
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    spectrum[0] = 0
    return float(np.fft.rfftfreq(len(samples), 1 / sample_rate)[int(np.argmax(spectrum))])


M = TypeVar("M", bound=p.ServerMessage)
Outgoing = p.ClientMessage | dict[str, Any] | str | bytes
"""A protocol model; or, for tests of bad input, a raw dict, text or binary frame."""


async def record_track(track: MediaStreamTrack, recorder: Recorder) -> None:
    """Feed a received track into `recorder` until the track ends."""
    try:
        while True:
            recorder.add(await track.recv())
    except MediaStreamError:
        pass


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
        self._inbox: deque[p.ServerMessage] = deque(maxlen=MESSAGES_KEPT)
        self._arrived = anyio.Event()
        self.pc: RTCPeerConnection | None = None
        self.recorder = Recorder()
        self.stream_id: str | None = None
        # Send mDNS names instead of our addresses, as browsers do (ice.hide_addresses).
        self.hide_addresses = False
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
        """The next message other than a visualization; EndOfStream once the socket closed."""
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
        recorder = self.recorder

        @pc.on("track")
        def _on_track(track: MediaStreamTrack) -> None:
            if on_track is not None:
                on_track(pc, track)
            else:
                self._tg.start_soon(record_track, track, recorder)

        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        await self.send(p.Answer(sdp=self._local_sdp(pc)))
        self.stream_id = offer.stream_id
        return offer.stream_id

    async def follow_channel(self, timeout: float = 20, recorder: Recorder | None = None) -> str:
        """After `stream_ended` with `waiting` (a channel's sender left): wait for the
        channel's next sender and answer the server's offer; audio goes on into the same
        recorder unless one is given. Returns the stream id (the channel's name)."""
        await self.receive(p.StreamStarted, timeout=timeout)
        return await self.answer_offer(await self.receive(p.Offer), recorder=recorder)

    async def wait_audio(self, seconds: float, timeout: float = 20) -> None:
        """Wait until `seconds` of audio have been received."""
        with anyio.fail_after(timeout):
            await self.recorder.wait_seconds(seconds)

    async def close_media(self) -> None:
        if self.pc is not None:
            pc, self.pc = self.pc, None
            await pc.close()


async def _receive_when_live(client: RelayClient, args: argparse.Namespace) -> str:
    """Start receiving; with --wait (the default) retry every 2 s while there is no stream."""
    recorder = Recorder(keep_seconds=10.0, wav=Path(args.out) if args.out else None)
    while True:
        try:
            return await client.start_receiving(args.stream_id, recorder=recorder)
        except ServerError as error:
            if p.NO_STREAM_MESSAGE not in error.message or not args.wait:
                raise
            _print_event("waiting", reason=error.message)
            await anyio.sleep(2)  # the guide's auto-retry


async def _keep_alive(client: RelayClient, duration: float) -> None:
    """Ping as the server asks until `duration` (0: forever) or the session closes."""
    assert client.welcome is not None
    ping_interval = float(client.welcome.config.get("ping_interval", 15))
    deadline = anyio.current_time() + duration if duration else math.inf
    while anyio.current_time() < deadline and not client.closed.is_set():
        with anyio.move_on_after(min(ping_interval, deadline - anyio.current_time())):
            await client.closed.wait()
        if not client.closed.is_set():
            await client.send(p.Ping())


async def _follow(client: RelayClient) -> None:
    """A listener stays on its channel: each next sender's offer is answered as it comes."""
    with contextlib.suppress(anyio.EndOfStream):
        while True:
            message = await client.next_message(timeout=math.inf)
            if isinstance(message, p.StreamEnded):
                _print_event("stream_ended", **message.model_dump(exclude={"type"}))
            elif isinstance(message, p.Offer):
                _print_event("receiving", stream_id=await client.answer_offer(message))


def _print_event(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


async def _run_cli(args: argparse.Namespace) -> int:
    if args.ice_address:
        use_host_addresses(args.ice_address)
    async with RelayClient.connect(args.url, token=args.token) as client:
        client.hide_addresses = args.hide_addresses
        if args.command == "send":
            track: PacedTrack = WavTrack(Path(args.wav)) if args.wav else ToneTrack(args.tone)
            stream_id = await client.start_sending(track, channel=args.channel)
            _print_event("sending", stream_id=stream_id)
        else:
            _print_event("receiving", stream_id=await _receive_when_live(client, args))
        async with anyio.create_task_group() as tg:
            if args.command == "listen":
                tg.start_soon(_follow, client)
            await _keep_alive(client, args.duration)
            tg.cancel_scope.cancel()
        client.recorder.close()
        if args.command == "listen" and args.out:
            recorder = client.recorder
            peak = dominant_frequency(recorder.audio(), recorder.sample_rate)
            _print_event(
                "recorded",
                out=args.out,
                seconds=round(recorder.seconds, 2),
                dominant_hz=round(peak, 1),
            )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m relay_app.client")
    parser.add_argument("--url", default="ws://localhost:8080/ws")
    parser.add_argument("--token", help="access token (when the server has auth.secret)")
    parser.add_argument(
        "--ice-address",
        action="append",
        help="local IP to gather media candidates on (repeatable; 127.0.0.1 for loopback)",
    )
    parser.add_argument(
        "--hide-addresses",
        action="store_true",
        help="send mDNS names instead of local addresses in candidates, as browsers do",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    send = sub.add_parser("send", help="stream a tone or a WAV file")
    source = send.add_mutually_exclusive_group(required=True)
    source.add_argument("--tone", type=float, metavar="HZ")
    source.add_argument("--wav", metavar="FILE")
    send.add_argument("--duration", type=float, default=0, help="seconds (0 = until Ctrl-C)")
    send.add_argument("--channel", help="send on this named channel (its stream_id)")
    listen = sub.add_parser("listen", help="receive a stream, optionally into a WAV file")
    listen.add_argument("--stream-id")
    listen.add_argument("--out", metavar="FILE.wav")
    listen.add_argument("--duration", type=float, default=0, help="seconds (0 = until Ctrl-C)")
    listen.add_argument(
        "--no-wait", dest="wait", action="store_false", help="fail at once if no stream"
    )
    args = parser.parse_args(argv)
    try:
        return anyio.run(_run_cli, args)
    except KeyboardInterrupt:
        return 130
    except BaseException as group:
        error = single_error(group)
        if isinstance(error, ServerError):
            print(f"server error: {error.message}", file=sys.stderr)
            return 1
        if isinstance(error, OSError | websockets.InvalidHandshake):
            print(f"cannot reach {args.url}: {error}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
