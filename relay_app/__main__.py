"""`python -m relay_app`: load settings, set up logs, serve :8080 and :8081 with Hypercorn.

The sockets are bound here, before Hypercorn starts, so that port 0 (an ephemeral port, used by
the tests) works and the app knows which actual port is the status port. SIGTERM/SIGINT first
tells every session to close (1001), then lets Hypercorn finish; the process exits within a few
seconds with each session's cleanup logged.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig

from .core.auth import ROLES
from .core.config import ConfigError, Settings, load_settings
from .core.logs import configure_logging, get_logger
from .server.app import PortDispatcher, create_asgi_app
from .server.lan import listen_urls
from .tools.handout import Refused, make_link, make_token, print_handout, print_warnings
from .webrtc.dtls import use_shared_certificate
from .webrtc.ice import configure_ice

RECEIVE_BUFFER_BYTES = 64 * 1024  # the kernel doubles it
# The audio port's send buffer (doubled by the kernel): without a fixed size Linux grows it to
# megabytes for a client that stops reading, and an HTTP listener (listen_http.py) is only
# dropped once its buffers are full: minutes of audio. Fixed, that is ~32 KB here plus
# Hypercorn's 64 KB and 5 s of pages.
AUDIO_SEND_BUFFER_BYTES = 16 * 1024
CONFIG_HELP = "config.json path (default: $RELAY_CONFIG, else built-in)"
NAME_HELP = "who uses it, as the operator's console and the speakers' messages name them (Marie)"
HANDOUT_DESCRIPTION = (
    "Reads the server's configuration as the server does (--config, $RELAY_CONFIG, the "
    "RELAY_... environment, e.g. RELAY_SERVER__PORT and RELAY_AUTH__SECRET), asks the server "
    "at that address whether it requires tokens, and refuses (exit 1, saying why) to print "
    "what it would refuse. When no server answers it prints anyway, with a warning."
)


def _bind(
    host: str, port: int, send_buffer: int | None = None, dead_peer_timeout: float = 0
) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # Accepted sockets inherit this: signaling needs little, and it bounds what a flooding
    # client can have queued for us (and what we must parse) once its session is closed.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
    if send_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    if dead_peer_timeout > 0 and hasattr(socket, "TCP_USER_TIMEOUT"):
        # Inherited too: a peer that stops taking our data (a zero window, no ACKs) is cut
        # by the kernel, even where our own close cannot finish because the write is stuck.
        milliseconds = int(dead_peer_timeout * 1000)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, milliseconds)
    sock.bind((host, port))
    # Listening now (not when Hypercorn gets to it) means a client that read our
    # `server_listening` line is queued in the backlog instead of refused.
    sock.listen(1024)
    return sock


def hypercorn_config(settings: Settings, sockets: Sequence[socket.socket]) -> HypercornConfig:
    config = HypercornConfig()
    # Hypercorn takes the descriptors over (and closes them on exit).
    config.bind = [f"fd://{sock.detach()}" for sock in sockets]
    config.graceful_timeout = settings.server.graceful_timeout
    # Frames up to twice server.max_message_bytes reach the app, which answers the oversized
    # ones with an error frame; beyond that Hypercorn closes the connection with 1009, so a
    # client cannot make the server buffer megabytes per frame.
    config.websocket_max_message_size = 2 * settings.server.max_message_bytes
    config.certfile = settings.server.certfile
    config.keyfile = settings.server.keyfile
    # Hypercorn's own loggers, routed through our JSON renderer (see logs.py).
    config.errorlog = logging.getLogger("hypercorn.error")
    config.accesslog = logging.getLogger("hypercorn.access")
    return config


async def _serve(settings: Settings) -> None:
    log = get_logger("relay_app.main")
    server = settings.server
    sockets = [
        _bind(server.host, server.port, dead_peer_timeout=server.dead_peer_timeout),
        _bind(
            server.host,
            server.audio_port,
            AUDIO_SEND_BUFFER_BYTES,
            dead_peer_timeout=server.dead_peer_timeout,
        ),
    ]
    ports = [sock.getsockname()[1] for sock in sockets]
    app: PortDispatcher = create_asgi_app(settings)
    ctx = app.main.config["RELAY_CONTEXT"]
    if ctx.reads.mux is not None:  # (opened in the lifespan; refused here, in plain words)
        ctx.reads.mux.check_free()
    app.status_ports = {ports[1]}
    # Port 0 (tests) means "any": from here on the settings say which one it is, so `welcome`
    # tells clients the real audio port (the Listen page's HTTP stream link).
    server.port, server.audio_port = ports

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    async def shutdown_trigger() -> None:
        await stop.wait()
        log.info("shutdown_requested", sessions=len(ctx.registry.sessions))
        if ctx.shutting_down is not None:
            ctx.shutting_down.set()

    scheme = "https" if server.certfile else "http"
    log.info(
        "server_listening",
        host=server.host,
        port=ports[0],
        audio_port=ports[1],
        url=f"{scheme}://{server.host}:{ports[0]}/",
    )
    # Not 0.0.0.0: the addresses a phone on the LAN can open (also `python -m relay_app qr`).
    log.info("listen_urls", urls=listen_urls(settings))
    config = hypercorn_config(settings, sockets)
    await serve(app, config, shutdown_trigger=shutdown_trigger)  # type: ignore[arg-type]


def _cert(args: argparse.Namespace) -> int:
    from .server.tls import make_self_signed

    cert, key = make_self_signed(args.host, Path(args.out_dir), args.days)
    print(f"wrote {cert} and {key} for {', '.join(args.host)}")
    print(f'config.json: {{"server": {{"certfile": "{cert}", "keyfile": "{key}"}}}}')
    return 0


def _token(args: argparse.Namespace, settings: Settings) -> int:
    """A token signed with the server's secret, once the server has said it wants one."""
    token, warnings = make_token(
        settings, args.role, args.ttl, stream=args.stream, subject=args.sub, name=args.name
    )
    print(token, flush=True)
    print_warnings(warnings)
    return 0


def _qr(args: argparse.Namespace, settings: Settings) -> int:
    """A QR code of the Listen page's LAN URL, for phones in the room to scan: with an invite
    for --channel when the server wants tokens."""
    print_handout(make_link(settings, args.channel, args.url, args.ttl, invite=False))
    return 0


def _invite(args: argparse.Namespace, settings: Settings) -> int:
    """A Listen link that carries a receive token for one channel, and its QR code: what the
    people in the hall scan (a phone opens it and plays with one tap)."""
    print_handout(make_link(settings, args.channel, args.url, args.ttl, True, args.name))
    return 0


HANDOUTS = {"token": _token, "qr": _qr, "invite": _invite}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m relay_app", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help=CONFIG_HELP)
    # The same option after the command too (`relay_app invite --config ...`): the
    # subcommands' copy leaves the value alone unless it is given there.
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument("--config", default=argparse.SUPPRESS, help=CONFIG_HELP)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", parents=[config], help="serve :8080 and :8081 (the default)")
    cert = sub.add_parser("cert", help="write a self-signed cert.pem/key.pem for LAN HTTPS")
    cert.add_argument("--host", action="append", required=True, help="LAN IP or name (repeatable)")
    cert.add_argument("--out-dir", default=".", help="where to write cert.pem and key.pem")
    cert.add_argument("--days", type=int, default=825, help="validity (days)")
    token = sub.add_parser(
        "token",
        parents=[config],
        help="mint an access token signed with the server's auth.secret",
        description=HANDOUT_DESCRIPTION,
    )
    token.add_argument("--role", choices=ROLES, required=True)
    token.add_argument("--ttl", default="1h", help="lifetime: 90s, 15m, 1h, 7d (default 1h)")
    token.add_argument(
        "--stream",
        help="only this stream_id: what a receiver may play, the channel a sender may "
        "send on and take over",
    )
    token.add_argument("--sub", help="who it is for, in the server's log")
    token.add_argument("--name", help=NAME_HELP)
    qr = sub.add_parser(
        "qr",
        parents=[config],
        help="print a QR code of the Listen page's LAN URL (with an invite when the server "
        "wants tokens)",
        description=HANDOUT_DESCRIPTION,
    )
    qr.add_argument("--channel", help="link straight to this channel (/listen/<channel>)")
    qr.add_argument("--url", help="encode this URL instead (e.g. behind a reverse proxy)")
    qr.add_argument(
        "--ttl", default="8h", help="how long its invite works: 90m, 8h, 2d (default 8h)"
    )
    invite = sub.add_parser(
        "invite",
        parents=[config],
        help="print a Listen link for one channel, with its token, and its QR code",
        description=HANDOUT_DESCRIPTION,
    )
    invite.add_argument("--channel", required=True, help="the channel it plays")
    invite.add_argument("--ttl", default="8h", help="how long it works: 90m, 8h, 2d (default 8h)")
    invite.add_argument("--url", help="the Listen page's URL to use (e.g. behind a proxy)")
    invite.add_argument("--name", help=NAME_HELP)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "cert":
        return _cert(args)
    try:
        settings = load_settings(args.config)
    except ConfigError as error:
        print(f"relay_app: {error}", file=sys.stderr)
        return 2
    if args.command in HANDOUTS:
        try:
            return HANDOUTS[args.command](args, settings)
        except Refused as refused:
            print(f"relay_app: {refused.message}", file=sys.stderr)
            return refused.code
    configure_logging(settings.logging)
    configure_ice(settings.webrtc)
    use_shared_certificate()
    try:
        asyncio.run(_serve(settings))
    except OSError as error:
        print(f"relay_app: cannot listen: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
