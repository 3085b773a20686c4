"""`python -m relay_app token|invite|qr`: what an operator hands out, checked with the server.

A token or a link that the running server will refuse is worse than none: the person it is
for reads "needs an invitation" at the door. So these commands read the server's own
configuration the way the server does (`--config`, `RELAY_CONFIG`, the `RELAY_...`
environment), ask the server at that address (`/health` says whether it requires tokens;
`/stream/status`, with a short-lived token signed by this shell's secret, whether it accepts
them and which channels it has), and then:

- refuse (exit 1, one sentence on stderr) what cannot work: anything while the server
  requires tokens and this shell has no secret, or a secret the server does not share; a
  token when nothing needs one; an invite to a channel the server will not serve;
- print, with a warning on stderr, what may work: when no server answers (not started yet,
  or elsewhere: the warning names the address it tried), or when the server is open although
  this shell has a secret (the links work, and so does listening without them).

Bad input (a duration, a channel name, port 0 in a link) exits 2.
"""

from __future__ import annotations

import json
import re
import ssl
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ..core.auth import Role, mint, parse_ttl
from ..core.config import CHANNEL_NAME, Settings
from ..server.lan import ANY_ADDRESS, listen_urls
from ..server.qr import terminal_qr

PROG = "relay_app"
ASK_TIMEOUT = 2.0  # seconds: a server on this machine or the LAN answers /health in ms
CHECK_TTL = 60  # seconds: the token that asks /stream/status whether the secret is shared
SECRET_HINT = "run with --config <the server's config> or export RELAY_AUTH__SECRET"


class Refused(Exception):
    """What was asked for cannot work; the message says why in one sentence."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass
class Server:
    """What the server at `base` said, if it answered."""

    base: str
    answered: bool = False
    why_not: str = ""  # when it did not answer (or say): a clause saying what happened
    auth_required: bool | None = None  # None: no answer, or one without the field
    secret_refused: str | None = None  # the server's reason for refusing our check token
    labels: dict[str, str] | None = None  # channel name -> label, when it listed them
    warnings: list[str] = field(default_factory=list)

    def where(self) -> str:
        return f"the server at {self.base}"


def server_base(settings: Settings, url: str | None = None) -> str:
    """Where to ask: the origin of `url` (a link handed out, e.g. through a proxy), else the
    configured address (loopback when the server listens on every address)."""
    if url:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc}"
    server = settings.server
    scheme = "https" if server.certfile else "http"
    host = server.host
    if host in ANY_ADDRESS:
        host = "::1" if host == "::" else "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{server.port}"


def _tls(settings: Settings, own: bool) -> ssl.SSLContext:
    """The usual authorities, and the server's own certificate: self-signed for its LAN
    names, so on its own address (`own`, perhaps loopback) the name is not checked."""
    context = ssl.create_default_context()
    if settings.server.certfile:
        context.load_verify_locations(cafile=settings.server.certfile)
        context.check_hostname = not own
    return context


def _get(url: str, settings: Settings, own: bool, token: str | None = None) -> tuple[int, Any]:
    """Status and JSON body of a GET (an HTTP error's too); OSError when nothing answers."""
    headers = {"Accept": "application/json", "User-Agent": "relay_app-cli"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, headers=headers)
    context = _tls(settings, own) if url.startswith("https:") else None
    try:
        with urllib.request.urlopen(request, timeout=ASK_TIMEOUT, context=context) as reply:
            status, text = reply.status, reply.read(65536)
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read(65536)
    try:
        return status, json.loads(text)
    except ValueError:
        return status, None


def _silence(base: str, error: BaseException) -> str:
    """Why no answer came, in words (urllib wraps the socket's error in a URLError)."""
    if isinstance(error, urllib.error.URLError) and isinstance(error.reason, BaseException):
        error = error.reason
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"the server at {base} has a certificate this shell does not trust ({error})"
    if isinstance(error, TimeoutError):
        reason = f"no answer within {ASK_TIMEOUT:g} s"
    elif isinstance(error, ConnectionRefusedError):
        reason = "connection refused"
    else:
        reason = str(error) or type(error).__name__
    return f"no server answers at {base} ({reason})"


def ask(settings: Settings, url: str | None = None) -> Server:
    """Ask the running server whether it wants tokens and whether this shell's secret is its
    secret; never raises for a server that is not there."""
    server = Server(server_base(settings, url))
    if urlsplit(server.base).port == 0:
        server.why_not = "no server to ask: server.port is 0 (any free port) in this configuration"
        return server
    try:
        status, body = _get(f"{server.base}/health", settings, own=url is None)
    except (OSError, ValueError) as error:  # ValueError: a URL urllib cannot open
        server.why_not = _silence(server.base, error)
        return server
    if not isinstance(body, dict) or "status" not in body:
        server.why_not = f"{server.base} answered /health with HTTP {status}, not as relay_app does"
        return server
    server.answered = True
    required = body.get("auth_required")
    server.auth_required = required if isinstance(required, bool) else None
    if server.auth_required is None:
        server.why_not = f"{server.where()} did not say whether it requires tokens"
    secret = settings.auth.secret
    check = None
    if secret is not None:
        check = mint(secret.get_secret_value(), "metrics", CHECK_TTL, subject="relay_app cli")
    try:
        status, body = _get(f"{server.base}/stream/status", settings, url is None, check)
    except (OSError, ValueError):
        return server
    if status == 401 and check is not None and isinstance(body, dict):
        server.secret_refused = str(body.get("message", "access token refused"))
    elif status == 200 and isinstance(body, dict):
        channels = body.get("channels")
        if isinstance(channels, list):
            server.labels = {
                str(c["channel"]): str(c.get("label") or c["channel"])
                for c in channels
                if isinstance(c, dict) and "channel" in c
            }
    return server


def label_of(channel: str, settings: Settings, server: Server) -> str:
    if server.labels and channel in server.labels:
        return server.labels[channel]
    configured = settings.channels.get(channel)
    return configured.label if configured is not None else channel


def _channel_list(settings: Settings, server: Server) -> str:
    """The channels a user can pick, by label, with what to type: for refusals."""
    names = server.labels if server.labels is not None else {}
    names = names or {name: c.label for name, c in settings.channels.items()}
    if not names:
        return "no channel is configured or live yet"
    listed = ", ".join(f"{label} (--channel {name})" for name, label in sorted(names.items()))
    return f"its channels are {listed}"


def require_secret(settings: Settings, server: Server) -> str | None:
    """This shell's secret, checked against the server's answer (Refused when the server
    requires tokens that this shell cannot sign, or refused the ones it signs)."""
    secret = settings.auth.secret
    if server.auth_required and secret is None:
        raise Refused(
            f"{server.where()} requires tokens but this shell has no auth.secret: {SECRET_HINT}"
        )
    if server.secret_refused is not None:
        raise Refused(
            f"{server.where()} refuses tokens signed with this shell's auth.secret "
            f"({server.secret_refused}): this is not the server's secret; {SECRET_HINT} "
            "with the server's"
        )
    if not server.answered:
        consequence = (
            "what is printed here works only if it runs with this shell's auth.secret"
            if secret is not None
            else "if it requires tokens, what is printed here will not work"
        )
        server.warnings.append(
            f"{server.why_not}: {consequence}; if it runs elsewhere, use the same --config or "
            "RELAY_SERVER__PORT as the server"
        )
    elif secret is not None and server.auth_required is False:
        server.warnings.append(
            f"{server.where()} does not require tokens (it runs without auth.secret), though "
            "this shell has one: anyone on the LAN can listen and speak without a token"
        )
    elif server.auth_required is None:
        server.warnings.append(
            f"{server.where()} did not say whether it requires tokens (an older relay_app?)"
        )
    return secret.get_secret_value() if secret is not None else None


def check_channel(channel: str, settings: Settings, server: Server) -> None:
    """Refuse a channel name the server cannot serve; warn about one it has not heard of
    (refused when this shell's configuration, the server's own, opens no unlisted ones:
    /stream/status lists channels but does not say whether others may open)."""
    if re.fullmatch(CHANNEL_NAME, channel) is None or channel.startswith("stream_"):
        raise Refused(
            f"--channel {channel!r} is not a channel name: letters, digits, - and _, at most "
            "32, not starting with stream_",
            code=2,
        )
    if server.labels is None or channel in server.labels:
        return
    if not settings.streams.allow_unlisted_channels:
        raise Refused(
            f"{server.where()} has no channel {channel!r} and opens no others "
            f"(streams.allow_unlisted_channels is false): {_channel_list(settings, server)}"
        )
    server.warnings.append(
        f"{server.where()} has no channel {channel!r} now: the link plays once someone speaks "
        "on it, if the server opens channels it does not list (streams.allow_unlisted_channels)"
        f"; {_channel_list(settings, server)}"
    )


def _ttl(text: str) -> float:
    try:
        return parse_ttl(text)
    except ValueError as error:
        raise Refused(f"--ttl: {error}", code=2) from None


def _until(ttl: float) -> str:
    return time.strftime("%a %H:%M", time.localtime(time.time() + ttl))


def make_token(
    settings: Settings,
    role: Role,
    ttl_text: str,
    stream: str | None = None,
    subject: str | None = None,
    name: str | None = None,
) -> tuple[str, list[str]]:
    """`relay_app token`: the token and what to warn about; `name` names its holder on the
    console."""
    ttl = _ttl(ttl_text)
    server = ask(settings)
    if settings.auth.secret is None and server.answered and server.auth_required is False:
        raise Refused(
            f"tokens are not needed: {server.where()} does not require them (it runs without "
            "auth.secret); to require them, restart it with auth.secret set"
        )
    if settings.auth.secret is None and not server.auth_required:
        raise Refused(
            "this shell has no auth.secret to sign a token with, and nothing says whether one "
            f"is needed ({server.why_not}): {SECRET_HINT}"
        )
    secret = require_secret(settings, server)
    assert secret is not None
    return mint(secret, role, ttl, stream=stream, subject=subject, name=name), server.warnings


@dataclass
class Handout:
    """A link (one per LAN address) and the words above its QR code."""

    caption: str
    urls: list[str]
    warnings: list[str]


def _with_token(url: str, token: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}token={token}"


def make_link(
    settings: Settings,
    channel: str | None,
    url: str | None,
    ttl_text: str,
    invite: bool,
    name: str | None = None,
) -> Handout:
    """`relay_app qr` and `relay_app invite`: the Listen page's link (one channel's, for an
    invite), carrying an invite (a receive token for that channel) whenever a token is
    needed or this shell has a secret to sign one with. Each page that opens it gets a pass
    of its own (so the console's Remove withdraws one phone); `name` names them there."""
    ttl = _ttl(ttl_text)
    if url is None and settings.server.port == 0:
        raise Refused(
            "server.port is 0 in this configuration (the server picks a free port): a link "
            "needs the real one; set server.port, or pass --url",
            code=2,
        )
    server = ask(settings, url)
    secret = require_secret(settings, server)
    if channel is not None:
        check_channel(channel, settings, server)
    open_server = server.answered and server.auth_required is False
    if secret is not None and channel is None and not open_server:
        raise Refused(
            "with auth.secret every code carries an invite, and an invite is for one "
            f"channel: add --channel ({_channel_list(settings, server)})",
            code=2,
        )
    urls = [url] if url else listen_urls(settings, channel)
    label = label_of(channel, settings, server) if channel is not None else None
    if secret is not None and channel is not None:
        token = mint(
            secret, "receive", ttl, stream=channel, subject="invite", name=name, invite=True
        )
        urls = [_with_token(link, token) for link in urls]
        caption = f"Invite to {label}, works until {_until(ttl)}"
    else:
        caption = f"Scan to listen to {label}" if label else "Scan to listen"
    if invite and secret is None:
        caption += " (no token needed: the server is open)" if open_server else " (no token)"
    return Handout(caption, urls, server.warnings)


def print_handout(handout: Handout) -> None:
    """The caption, the code, the links; then the warnings, last, where a code that fills
    the terminal does not scroll them away."""
    print(handout.caption)
    print(terminal_qr(handout.urls[0], colour=sys.stdout.isatty()), end="")
    for url in handout.urls:
        print(url)
    sys.stdout.flush()
    print_warnings(handout.warnings)


def print_warnings(warnings: list[str]) -> None:
    for warning in warnings:
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
