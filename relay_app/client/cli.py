"""Python client: `python -m relay_app.client send|listen`. The tests drive the server with it.

    python -m relay_app.client send --tone 440            # stream a 440 Hz tone
    python -m relay_app.client send --wav speech.wav      # stream a WAV file (looped)
    python -m relay_app.client listen --out heard.wav     # record the newest stream
    python -m relay_app.client listen --stream-id stream_ab12cd34-ef56 --out heard.wav
    python -m relay_app.client send --channel english --takeover --token <send token> --tone 440

It speaks the same protocol as the web client (protocol.py documents every message) and, like
the server, keeps media on the addresses given by `--ice-address` (loopback in tests). The
connection options (`--url`, `--token`, `--ice-address`, `--hide-addresses`) go before or
after the command. Ctrl-C (SIGINT) or SIGTERM ends sending or listening the way the end of
`--duration` does: the listener prints its summary; a second one ends the client at once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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
            elif isinstance(message, p.Disconnected):  # the operator's Disconnect or Remove
                _print_event("disconnected", reason=message.reason, message=message.message)


def _print_event(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


@dataclass
class _Run:
    """Where the client is, for Ctrl-C and for what an error is about."""

    doing: str = "connecting"  # then the command (send, listen), then "finishing"
    ended_by: str = "duration"
    interrupted: bool = False
    # Sending or listening: Ctrl-C cancels this scope and the summary follows.
    phase: anyio.CancelScope | None = None
    # Everything: a Ctrl-C before the phase (while connecting), or a second one.
    everything: anyio.CancelScope | None = None


async def _stop_on_signal(run: _Run) -> None:
    """Ctrl-C (SIGINT) or SIGTERM ends the sending or listening like its duration's end."""
    assert run.phase is not None and run.everything is not None
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            if run.doing == "connecting" or run.interrupted:
                run.everything.cancel()
            elif run.doing != "finishing":
                run.ended_by = signal.Signals(signum).name
                run.phase.cancel()
            run.interrupted = True


async def _run_cli(args: argparse.Namespace, run: _Run) -> int:
    if args.ice_address:
        use_host_addresses(args.ice_address)
    code: int | None = None
    run.phase, run.everything = anyio.CancelScope(), anyio.CancelScope()
    with run.everything:
        async with anyio.create_task_group() as signals:
            signals.start_soon(_stop_on_signal, run)
            code = await _session(args, run)
            signals.cancel_scope.cancel()
    return 130 if code is None else code


async def _session(args: argparse.Namespace, run: _Run) -> int:
    ended: list[str] = []  # why the server ended a sender's stream, if it did
    async with RelayClient.connect(args.url, token=args.token) as client:
        client.hide_addresses = args.hide_addresses
        run.doing = args.command
        assert run.phase is not None
        with run.phase:
            if args.command == "send":
                track: PacedTrack = WavTrack(Path(args.wav)) if args.wav else ToneTrack(args.tone)
                stream_id = await client.start_sending(
                    track, channel=args.channel, takeover=args.takeover
                )
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
        if client.closed.is_set() and not run.interrupted:
            run.ended_by = "server closed the connection"
        run.doing = "finishing"
        await client.close_media()  # no late frame after the file is finished
        client.recorder.close()
    if args.command == "send":
        return _sender_outcome(client, ended)
    return _listener_outcome(client, args, run)


async def _watch_sending(client: RelayClient, ended: list[str], scope: anyio.CancelScope) -> None:
    """A sender the server ends (an operator's stop, a takeover, a stale stream) is told so
    in `stream_ended`; record why and stop sending."""
    with contextlib.suppress(anyio.EndOfStream):
        while True:
            message = await client.next_message(timeout=math.inf)
            if isinstance(message, p.StreamEnded):
                ended.append(message.reason)
            elif isinstance(message, p.Disconnected):  # the operator's Disconnect or Remove
                ended.append(message.message)
            else:
                continue
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


def _listener_outcome(client: RelayClient, args: argparse.Namespace, run: _Run) -> int:
    """The summary, however listening ended (its duration, Ctrl-C, the server): `recorded`
    with --out, `heard` without; exit 1 when no audio arrived."""
    recorder = client.recorder
    seconds = round(recorder.seconds, 2)
    peak = round(dominant_frequency(recorder.audio(), recorder.sample_rate), 1) if seconds else 0
    summary: dict[str, Any] = {"seconds": seconds, "dominant_hz": peak, "ended_by": run.ended_by}
    if args.out:
        _print_event("recorded", out=args.out, **summary)
    else:
        _print_event("heard", **summary)
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


def _connection_options(parser: argparse.ArgumentParser, after_command: bool) -> None:
    """--url, --token, --ice-address, --hide-addresses: before the command with their
    defaults, and again after it (`send --token X`), where they leave the value alone unless
    given."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if after_command else value

    parser.add_argument("--url", default=default(default_url()), help=URL_HELP)
    parser.add_argument(
        "--token",
        default=default(None),
        help="access token, when the server has auth.secret (python -m relay_app token)",
    )
    parser.add_argument(
        "--ice-address",
        action="append",
        default=default(None),
        help="local IP to gather media candidates on (repeatable; 127.0.0.1 for loopback)",
    )
    parser.add_argument(
        "--hide-addresses",
        action="store_true",
        default=default(False),
        help="send mDNS names instead of local addresses in candidates, as browsers do",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m relay_app.client",
        description="Send a tone or a WAV file to the relay, or listen to a stream. Ctrl-C "
        "ends either like the end of --duration (the listener prints its summary).",
    )
    _connection_options(parser, after_command=False)
    connection = argparse.ArgumentParser(add_help=False)
    _connection_options(connection, after_command=True)
    sub = parser.add_subparsers(dest="command", required=True)
    send = sub.add_parser("send", parents=[connection], help="stream a tone or a WAV file")
    source = send.add_mutually_exclusive_group(required=True)
    source.add_argument("--tone", type=float, metavar="HZ")
    source.add_argument("--wav", metavar="FILE")
    send.add_argument("--duration", type=float, default=0, help="seconds (0 = until Ctrl-C)")
    send.add_argument("--channel", help="send on this named channel (its stream_id)")
    send.add_argument(
        "--takeover",
        action="store_true",
        help="take the channel over from its speaker (needs --channel; with auth on, a send "
        "token for that channel)",
    )
    listen = sub.add_parser(
        "listen", parents=[connection], help="receive a stream, optionally into a WAV file"
    )
    listen.add_argument("--stream-id")
    listen.add_argument("--out", metavar="FILE.wav")
    listen.add_argument("--duration", type=float, default=0, help="seconds (0 = until Ctrl-C)")
    listen.add_argument(
        "--no-wait", dest="wait", action="store_false", help="fail at once if no stream"
    )
    args = parser.parse_args(argv)
    if args.command == "send" and args.takeover and not args.channel:
        parser.error("--takeover needs --channel: the channel to take over")
    run = _Run()
    try:
        return anyio.run(_run_cli, args, run)
    except KeyboardInterrupt:
        return 130
    except BaseException as group:
        error = sole_error(group)
        if isinstance(error, ServerError):
            # The protocol's words for a takeover, as this command says it.
            message = error.message.replace('start_sending with "takeover": true', "--takeover")
            print(f"{PROG}: {_refused(args, run)}: {message}", file=sys.stderr)
            return 1
        if isinstance(error, OSError | websockets.InvalidHandshake):
            print(f"cannot reach {_shown(args.url)}: {describe(error)}", file=sys.stderr)
            return 1
        raise


PROG = "relay_app.client"


def _shown(url: str) -> str:
    """A URL for messages: without its query (a token may be in it)."""
    parts = urlsplit(url)
    return parts._replace(query="", fragment="").geturl()


def _refused(args: argparse.Namespace, run: _Run) -> str:
    """What the server refused, in words, for its error message to follow."""
    if run.doing == "connecting":
        return f"the server at {_shown(args.url)} refused the connection"
    if args.command == "listen":
        return "could not listen"
    where = f"on {args.channel}" if args.channel else "a new stream"
    return f"could not take over {args.channel}" if args.takeover else f"could not send {where}"


def describe(error: BaseException) -> str:
    """An error in words, even one whose message is empty (a TimeoutError is an OSError
    with no text in 3.11: "cannot reach ...: " said nothing)."""
    if isinstance(error, TimeoutError):
        return "no answer (timed out)"
    return str(error) or type(error).__name__
