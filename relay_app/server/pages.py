"""The web client: On air, Speak, Listen, the console and the entrance display, their static
files and QR code, and the headers that keep them to this server."""

from __future__ import annotations

import re
from importlib.resources import files
from urllib.parse import quote, urlsplit

from quart import Quart, Response, request, send_from_directory

from ..core.auth import Revocations, verify
from ..core.config import CHANNEL_NAME, Settings
from ..core.errors import AuthError, NoStreamError, ProtocolError
from ..endpoints.guard import PAGE, Entry, Guard
from .lan import listen_urls
from .qr import MAX_TEXT, QrCodes, QrTooLong

# The package's own data, wherever the package is installed or its modules move.
STATIC = files("relay_app") / "static"

# The web client loads only its own scripts and styles and talks only to this server.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "media-src 'self' blob: mediastream:; connect-src 'self' ws: wss:; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Permissions-Policy": "microphone=(self), camera=(), geolocation=()",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def page_routes(app: Quart, settings: Settings, guard: Guard) -> None:
    @app.after_request
    async def _security_headers(response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    async def page(name: str, content_type: str | None = None) -> Response:
        response = await send_from_directory(str(STATIC), name)
        if content_type is not None:
            response.content_type = content_type
        return response

    @app.get("/static/<path:filename>")
    @guard.door(PAGE)
    async def _static(entry: Entry, filename: str) -> Response:
        return await page(filename)

    @app.get("/")
    @guard.door(PAGE)
    async def _index(entry: Entry) -> Response:
        return await page("index.html")

    @app.get("/manifest.webmanifest")  # at the root: its scope may then be the whole site
    @guard.door(PAGE)
    async def _manifest(entry: Entry) -> Response:
        return await page("manifest.webmanifest", "application/manifest+json")

    @app.get("/admin")
    @guard.door(PAGE)  # the page only; everything it shows comes from the admin API
    async def _console(entry: Entry) -> Response:
        return await page("admin.html")

    @app.get("/entrance")
    @guard.door(PAGE)  # the page only; its codes' invites come from the admin API
    async def _entrance(entry: Entry) -> Response:
        return await page("entrance.html")

    @app.get("/send")
    @guard.door(PAGE)
    async def _send_page(entry: Entry) -> Response:
        return await page("send.html")

    @app.get("/listen")
    @app.get("/listen/<channel>")  # a link to one channel: the page reads it from its path
    @guard.door(PAGE)
    async def _listen_page(entry: Entry, channel: str | None = None) -> Response:
        return await page("listen.html")

    qr_route(app, settings, guard)


def qr_route(app: Quart, settings: Settings, guard: Guard) -> None:
    """`/qr.svg`: a phone's way in, as a code (the pages and the console show it)."""
    codes = QrCodes()  # built in a worker process, cached; the worker stops with the server

    @app.after_serving
    async def _stop_codes() -> None:
        codes.close()

    @app.get("/qr.svg")
    @guard.door(PAGE)
    async def _qr(entry: Entry) -> Response:
        """The Listen page's URL as a QR code (the home page shows it): the address this
        browser used, unless that is this machine's own (localhost), then the LAN one."""
        channel = request.args.get("channel") or None
        if channel is not None and _CHANNEL.fullmatch(channel) is None:
            raise ProtocolError("channel: use letters, digits, - and _ (at most 32)")
        if channel is not None and not _exists(channel, settings, guard):
            raise NoStreamError(f"There is no channel called {channel!r}.")
        url = phone_url(request.host, channel, settings)
        invite = request.args.get("invite")  # an invite's token (the console made it)
        withdrawn = guard.ctx.revocations
        if invite and (token := checked_invite(invite, channel, settings, withdrawn)):
            url += f"?token={quote(token)}"
        svg = await codes.svg(url, entry.remote)
        return Response(svg, content_type="image/svg+xml", headers={"X-Url": url})


_CHANNEL = re.compile(CHANNEL_NAME)


def _exists(channel: str, settings: Settings, guard: Guard) -> bool:
    """A code only of a channel a phone could play: configured, or live now (an unlisted
    channel, a speaker's unnamed stream); not of any name a client makes up."""
    return channel in settings.channels or channel in guard.ctx.registry.streams


def checked_invite(
    invite: str, channel: str | None, settings: Settings, withdrawn: Revocations | None = None
) -> str:
    """An invite's token, if a phone scanning it could play with it: signed by this
    server, unexpired, an invitation, and a listener's for this channel. A code that leads to
    "this page needs an invitation" helps nobody, and a checked token is one an attacker
    cannot vary at will to make the server build code after code. With auth off no token is
    needed: none is encoded."""
    if len(invite) > MAX_TEXT:
        raise QrTooLong(f"invite: at most {MAX_TEXT} characters")
    secret = settings.auth.secret
    if secret is None:
        return ""
    try:
        grant = verify(secret.get_secret_value(), invite)
        if withdrawn is not None:  # (withdrawn by the operator: it would say so to every phone)
            withdrawn.check(grant)
    except AuthError as error:
        raise ProtocolError(f"invite: {error.message}") from None
    if not grant.allows_receiving(channel or grant.stream):
        raise ProtocolError(f"invite: this token does not play {channel or 'streams'}")
    # Only a token made to be handed out goes into a code others scan: a speaker's (`both`)
    # would let whoever scans it speak, a device's own pass would be cut for all of them by
    # the operator's Remove.
    if grant.role != "receive" or not grant.invite:
        raise ProtocolError(
            "invite: only an invitation goes into a QR code (python -m relay_app invite, or "
            "the console's Invite), not a speaker's or a device's own token"
        )
    return invite


def phone_url(host_header: str, channel: str | None, settings: Settings) -> str:
    host = urlsplit(f"//{host_header}").hostname or ""
    if host in ("localhost", "") or host.startswith("127.") or host == "::1":
        return listen_urls(settings, channel)[0]
    scheme = "https" if settings.server.certfile else "http"
    path = "/listen" + (f"/{quote(channel)}" if channel else "")
    return f"{scheme}://{host_header}{path}"
