"""`hypercorn -c hypercorn.toml relay_app.asgi:app`: settings from config.json and the env.

hypercorn.toml's `bind` must name server.port and server.audio_port (8080 and 8081 by default):
the app routes by the port a request arrived on, so a bind on another port would serve the
wrong app or nothing. Hypercorn does not tell the app its binds, so this module reads them the
way Hypercorn does (its `-c`/`--bind` arguments, which a spawned worker inherits in sys.argv) and
refuses to start on a mismatch, naming both sides. `python -m relay_app` (make run) binds the
ports from the settings itself.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hypercorn.config import Config

from .core.config import ConfigError, Settings, load_settings
from .core.logs import configure_logging
from .server.app import create_asgi_app
from .server.websocket import bound_websocket_streams
from .webrtc.dtls import use_shared_certificate
from .webrtc.ice import configure_ice


def hypercorn_binds(argv: list[str]) -> list[str] | None:
    """The binds a `hypercorn` command line serves, or None when this is not one."""
    program = Path(argv[0]) if argv else Path()
    if program.name != "hypercorn" and program.parts[-2:] != ("hypercorn", "__main__.py"):
        return None
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-c", "--config")
    parser.add_argument("-b", "--bind", action="append", default=[])
    parser.add_argument("--insecure-bind", action="append", default=[])
    args, _ = parser.parse_known_args(argv[1:])
    config = _hypercorn_config(args.config)
    binds = args.bind or list(config.bind)
    return binds + (args.insecure_bind or list(config.insecure_bind))


def _hypercorn_config(path: str | None) -> Config:
    """Hypercorn's own config loading, as its CLI does it."""
    if path is None:
        return Config()
    if path.startswith("python:"):
        return Config.from_object(path[len("python:") :])
    if path.startswith("file:"):
        return Config.from_pyfile(path[len("file:") :])
    return Config.from_toml(path)


def bind_port(bind: str) -> int | None:
    """The TCP port of a Hypercorn bind (`host:port`, `[::]:port`); None for unix:/fd://."""
    if bind.startswith(("unix:", "fd://")):
        return None
    host, _, port = bind.rpartition(":")
    return int(port) if host and port.isdigit() else None


def check_binds(settings: Settings, binds: list[str]) -> None:
    """Raise ConfigError unless the TCP binds are exactly server.port and server.audio_port."""
    ports = {port for port in map(bind_port, binds) if port is not None}
    wanted = {settings.server.port, settings.server.audio_port}
    if ports and ports != wanted:
        raise ConfigError(
            f"hypercorn binds {', '.join(binds)} (hypercorn.toml `bind` or --bind) do not match "
            f"server.port={settings.server.port} and server.audio_port="
            f"{settings.server.audio_port} (config.json or RELAY_SERVER__PORT / "
            "RELAY_SERVER__AUDIO_PORT); the app routes requests by port, so make them the same"
        )


def _load() -> Settings:
    try:
        settings = load_settings()
        binds = hypercorn_binds(sys.argv)
        if binds is not None:
            check_binds(settings, binds)
    except ConfigError as error:
        print(f"relay_app: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    return settings


settings = _load()
configure_logging(settings.logging)
configure_ice(settings.webrtc)
use_shared_certificate()
app = create_asgi_app(settings)
# `python -m relay_app` sets Hypercorn's websocket_max_message_size itself; here it comes from
# hypercorn.toml (or Hypercorn's 16 MiB default, without one): the app's limit holds either way.
bound_websocket_streams(2 * settings.server.max_message_bytes)
