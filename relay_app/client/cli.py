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
import contextlib
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import websockets

from ..core import protocol as p
from ..core.errors import sole_error
from ..webrtc.ice import use_host_addresses
from .relay_client import RelayClient, ServerError
from .tracks import PacedTrack, Recorder, ToneTrack, WavTrack, dominant_frequency


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
    """A listener stays on its channel: each next sender plays on the same connection."""
    with contextlib.suppress(anyio.EndOfStream):
        while True:
            message = await client.next_message(timeout=math.inf)
            if isinstance(message, p.StreamEnded):
                _print_event("stream_ended", **message.model_dump(exclude={"type"}))
            elif isinstance(message, p.StreamStarted):
                _print_event("receiving", stream_id=message.stream_id, label=message.label)


def _print_event(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


async def _run_cli(args: argparse.Namespace) -> int:
    if args.ice_address:
        use_host_addresses(args.ice_address)
    ended: list[str] = []  # why the server ended a sender's stream, if it did
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
            else:
                tg.start_soon(_watch_sending, client, ended, tg.cancel_scope)
            await _keep_alive(client, args.duration)
            tg.cancel_scope.cancel()
        await client.close_media()  # no late frame after the file is finished
        client.recorder.close()
    if args.command == "send":
        return _sender_outcome(client, ended)
    return _listener_outcome(client, args)


async def _watch_sending(client: RelayClient, ended: list[str], scope: anyio.CancelScope) -> None:
    """A sender the server ends (an operator's stop, a takeover, a stale stream) is told so
    in `stream_ended`; record why and stop sending."""
    with contextlib.suppress(anyio.EndOfStream):
        while True:
            message = await client.next_message(timeout=math.inf)
            if isinstance(message, p.StreamEnded):
                ended.append(message.reason)
                scope.cancel()
                return


def _sender_outcome(client: RelayClient, ended: list[str]) -> int:
    """0 when the sender ended on its own terms (its duration); otherwise say why, exit 1."""
    if ended:
        print(f"sending ended by the server: {ended[0]}", file=sys.stderr)
        return 1
    if client.closed.is_set() and client.close_code not in (None, 1000):
        reason = client.close_reason or "no reason given"
        print(f"the server closed the connection ({client.close_code}): {reason}", file=sys.stderr)
        return 1
    return 0


def _listener_outcome(client: RelayClient, args: argparse.Namespace) -> int:
    recorder = client.recorder
    if args.out:
        peak = dominant_frequency(recorder.audio(), recorder.sample_rate)
        seconds = round(recorder.seconds, 2)
        _print_event("recorded", out=args.out, seconds=seconds, dominant_hz=round(peak, 1))
    if recorder.seconds == 0:
        print(
            "no audio arrived: the stream was silent or its media never connected", file=sys.stderr
        )
        return 1
    return 0


def default_url() -> str:
    """The local server's /ws: RELAY_URL, or localhost on RELAY_SERVER__PORT (what `make run`
    and the server read), or 8080."""
    port = os.environ.get("RELAY_SERVER__PORT", "8080")
    return os.environ.get("RELAY_URL") or f"ws://localhost:{port}/ws"


URL_HELP = (
    "the server's WebSocket URL (default: $RELAY_URL, else ws://localhost:$RELAY_SERVER__PORT/ws, "
    "else ws://localhost:8080/ws); e.g. ws://192.168.1.50:8080/ws, wss://relay.lan:8443/ws"
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m relay_app.client")
    parser.add_argument("--url", default=default_url(), help=URL_HELP)
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
        error = sole_error(group)
        if isinstance(error, ServerError):
            print(f"server error: {error.message}", file=sys.stderr)
            return 1
        if isinstance(error, OSError | websockets.InvalidHandshake):
            print(f"cannot reach {args.url}: {describe(error)}", file=sys.stderr)
            return 1
        raise


def describe(error: BaseException) -> str:
    """An error in words, even one whose message is empty (a TimeoutError is an OSError
    with no text in 3.11: "cannot reach ...: " said nothing)."""
    if isinstance(error, TimeoutError):
        return "no answer (timed out)"
    return str(error) or type(error).__name__
