"""Structured logs: one JSON object per line on stdout, or a console rendering when asked.

Every event the troubleshooting guide greps for has a stable snake_case name here, and each such
line also carries a `message` in the old wording ("Cleaning up stale stream stream_abc"), so
`docker logs voice-streaming | grep "Cleaning up stale stream"` keeps working beside `jq`.
Standard-library loggers (Hypercorn, aiortc, aioice) are routed through the same renderer.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import time
from collections.abc import MutableMapping
from typing import Any
from urllib.parse import unquote_plus

import structlog

from .config import LoggingSettings

# Event name -> the guide's wording. Fields come from the bound logger and the call.
LEGACY_MESSAGES: dict[str, str] = {
    "sender_setup": "Setting up sender for connection {connection_id}",
    "sender_track_received": "Received audio track from sender {connection_id}",
    "stream_stored": "Stored stream {stream_id} for sender {connection_id}",
    "visualization_started": "Starting visualization task for {stream_id}",
    "receiver_offer_sent": "Sent offer to receiver {connection_id} for stream {stream_id}",
    "ice_connection_state": "ICE connection state for {role} {connection_id}: {state}",
    "relay_subscribe": "relay.subscribe({stream_id}) for receiver {connection_id}",
    "relay_unsubscribe": "relay.unsubscribe({stream_id}) for receiver {connection_id}",
    "connection_cleanup": "Cleaning up connection {connection_id}",
    "track_ended": "Audio track ended for {connection_id}",
    "no_stream_for_receiver": "No audio stream available for receiver {connection_id}",
    "stream_track_ended": "Stream {stream_id} track is ended, cannot receive",
    "stale_stream_cleanup": "Cleaning up stale stream {stream_id}",
}


def _legacy_message(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    template = LEGACY_MESSAGES.get(str(event_dict.get("event")))
    if template is not None and "message" not in event_dict:
        try:
            event_dict["message"] = template.format_map(event_dict)
        except (KeyError, IndexError, ValueError):
            event_dict["message"] = template
    return event_dict


def _tidy_foreign(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Drop what another formatter left on a stdlib record (Hypercorn's stderr handler)."""
    event_dict.pop("color_message", None)
    event_dict.pop("asctime", None)
    if event_dict.get("message") == event_dict.get("event"):
        del event_dict["message"]
    return event_dict


# Every query parameter that carries a token: `/ws?token=`, `?access_token=`, and the
# `invite` the console and the pages put in `/qr.svg?invite=` (a listener's token).
SECRET_PARAMS = ("token", "access_token", "invite")
_SECRET_QUERY = re.compile(
    rf"((?:^|[?&;\s])(?:{'|'.join(SECRET_PARAMS)})=)[^&;\s\"']*", re.IGNORECASE
)
# A signed token wherever else it lands (a header, a URL in an error message): JWTs start
# with the base64 of '{"'.
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")


def redact_query(query: str) -> str:
    """A query string with access tokens replaced: `/ws?token=...` must not land in logs.
    Percent-encoded, as the server reads it (`%74oken=%65yJ...` is a token too)."""
    if "%" in query:
        query = unquote_plus(query)
    return _JWT.sub("REDACTED", _SECRET_QUERY.sub(r"\1REDACTED", query))


def _redact(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return redact_query(value) if ("=" in value or "eyJ" in value) else value
    if depth < 3 and isinstance(value, dict):
        return {key: _redact(item, depth + 1) for key, item in value.items()}
    if depth < 3 and isinstance(value, list | tuple):
        return [_redact(item, depth + 1) for item in value]
    return value


def _redact_secrets(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """The last step before rendering, for every line (ours, Hypercorn's, aiortc's): no
    token in a query parameter or as a bare JWT survives, whichever field it came in."""
    for key, value in event_dict.items():
        event_dict[key] = _redact(value)
    return event_dict


def _http_access(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Hypercorn's access lines as fields (`http_access`), not a preformatted string."""
    record = event_dict.get("_record")
    atoms = event_dict.pop("positional_args", None)  # ProcessorFormatter(pass_foreign_args)
    if record is None or record.name != "hypercorn.access" or not isinstance(atoms, dict):
        return event_dict
    event_dict["event"] = "http_access"
    event_dict.update(
        client=atoms.get("h"),
        method=atoms.get("m"),
        path=atoms.get("U"),
        query=redact_query(atoms.get("q") or "") or None,
        status=int(atoms["s"]) if str(atoms.get("s", "")).isdigit() else atoms.get("s"),
        protocol=atoms.get("H"),
        duration_ms=round(int(atoms.get("D", 0)) / 1000, 3),
        user_agent=atoms.get("{user-agent}i"),
    )
    return event_dict


class RepeatFilter(logging.Filter):
    """At most one line per message template per REPEAT_WINDOW from chatty libraries; the
    next one after the window says how many were left out (`repeated`)."""

    REPEAT_WINDOW = 10.0

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self._prefixes = prefixes
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self._prefixes):
            return True
        key = (record.name, str(record.msg))
        now = time.monotonic()
        last, skipped = self._seen.get(key, (-self.REPEAT_WINDOW, 0))
        if now - last < self.REPEAT_WINDOW:
            self._seen[key] = (last, skipped + 1)
            return False
        if len(self._seen) > 1000:  # bounded: templates are few, but never trust that
            self._seen.clear()
        self._seen[key] = (now, 0)
        if skipped:
            record.repeated = skipped
        return True


def _connection_end_filter(record: logging.LogRecord) -> bool:
    """Drop asyncio's "Exception in callback StreamReaderProtocol..." for a connection task
    that was cancelled: Python 3.11's start_server callback calls task.exception() on a
    cancelled task (fixed in 3.12), so every connection Hypercorn cancels at shutdown would
    log a CancelledError traceback that is no error."""
    error = record.exc_info[1] if record.exc_info else None
    if record.name != "asyncio" or error is None:
        return True
    message = str(record.msg % record.args if record.args else record.msg)
    if isinstance(error, asyncio.CancelledError) and "StreamReaderProtocol" in message:
        return False
    # A connection the kernel cut (server.dead_peer_timeout: a client that stopped taking
    # data) ends Hypercorn's close with ETIMEDOUT, which it does not expect: the connection
    # is gone as intended, so this is no error; it is logged as what it is.
    if isinstance(error, TimeoutError) and "client_connected_cb" in message:
        record.msg, record.args, record.exc_info, record.exc_text = (
            "connection_cut: the client stopped taking data (server.dead_peer_timeout)",
            None,
            None,
            None,
        )
        record.levelno, record.levelname = logging.INFO, "INFO"
    return True


def configure_logging(settings: LoggingSettings, stream: Any = None) -> None:
    """Route structlog and stdlib logging to one line-buffered renderer on stdout."""
    stream = stream or sys.stdout
    if hasattr(stream, "reconfigure"):
        # Line buffering makes each JSON line visible at once in `docker logs` and pipes,
        # without PYTHONUNBUFFERED.
        stream.reconfigure(line_buffering=True)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _legacy_message,
        _tidy_foreign,
    ]
    renderer: Any
    if settings.format == "json":
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[_http_access, structlog.stdlib.ExtraAdder(), *shared],
        pass_foreign_args=True,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _redact_secrets,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level)
    # aiortc and aioice are chatty at INFO/DEBUG about every packet and check.
    quiet = logging.WARNING if settings.level != "DEBUG" else logging.INFO
    for name in ("aiortc", "aioice", "av"):
        logging.getLogger(name).setLevel(quiet)
    # A sender of garbage makes aiortc warn once per packet ("failed to decode").
    for handler_ in root.handlers:
        handler_.addFilter(RepeatFilter(("aiortc", "aioice", "av")))
        handler_.addFilter(_connection_end_filter)
    logging.getLogger("hypercorn.access").disabled = not settings.access_log
    for name in ("hypercorn.error", "hypercorn.access", "quart.app", "quart.serving"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True


def get_logger(name: str = "relay_app", **context: Any) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger.bind(**context) if context else logger
