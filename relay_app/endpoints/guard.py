"""The guard: the one doorframe every HTTP and WebSocket route on both ports goes through.

Each entry point grew its own checks, and each copy forgot something (a door that skipped
the per-address cap, one that dropped the token's scope). So a route states what kind of
door it is (`Door`) and the guard does, in this order, what every door needs:

    Host       server.allowed_hosts (DNS rebinding): every request, before any route
    Origin     browser requests that change state (POST/DELETE/PATCH, and every WebSocket)
    token      `Authorization: Bearer` or `?token=`, parsed once into a `Grant` with its scope;
               a token the operator withdrew (Remove) is refused here, at every door; a
               shared invite at a door that holds a connection becomes a pass of that
               connection's own (core/auth.connection_pass)
    admission  one table (the registry's pending and open sessions) and one set of rules:
               max_connections, max_connections_per_address, max_pending_connections;
               page requests per address and second (page_requests_per_second)
    errors     a `RelayError` raised anywhere in a route becomes its status, a JSON body,
               `WWW-Authenticate` (401) and `Retry-After` (503); on a WebSocket, an `error`
               frame and the error's close code

Nothing else in the package reads an Authorization header, counts a connection or builds an
error body. tests/endpoints/test_guard.py walks every app's URL map and fails for a route
that is not guarded.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import math
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import anyio
from quart import Quart, Response, has_request_context, jsonify, request, websocket
from werkzeug.exceptions import HTTPException

from ..core import protocol as p
from ..core.auth import Grant, Role, connection_pass, verify
from ..core.config import Settings
from ..core.errors import AuthError, LimitError, RelayError, http_error_body
from ..core.logs import get_logger
from ..core.people import short_device
from ..core.protocol import Disconnected
from ..streams.context import RelayContext
from ..streams.stream import SessionInfo, SessionRole, new_connection_id

RETRY_AFTER = "5"
# What a person is told when the operator removes them (their token is withdrawn).
REMOVED_WORDS = (
    "The operator removed you from this event: your invitation no longer works. "
    "Ask the organiser if you think this is a mistake."
)
REALM = 'Bearer realm="relay_app"'
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
GUARDED = "__relay_door__"  # set on every guarded view function: the URL-map test reads it
PROXY_HEADERS = ("X-Forwarded-For", "Forwarded", "X-Real-IP", "X-Forwarded-Host")
# Client addresses the page rate remembers at once; past that, the least recently seen go
# first (an address forgotten starts again with a full burst).
RATE_ADDRESSES = 4096
RATE_LOG_INTERVAL = 10.0  # seconds: one `page_rate_limited` line per address at most
log = get_logger("relay_app.guard")


@dataclass(frozen=True)
class Door:
    """What kind of entry point a route is: who may call it and what it holds."""

    name: str
    # Token roles that may use it once auth.secret is set; () needs no token.
    roles: tuple[Role, ...] = ()
    # The token is asked for only with auth.protect_metrics (status and metrics reads).
    only_when_protected: bool = False
    # Holds a connection slot while it runs (a session, a resource, a listener, a call);
    # the role it is listed with in the registry (the admin API's session list).
    holds: SessionRole | None = None
    # Without auth.secret, answers only this machine (loopback): the admin API.
    local_without_secret: bool = False
    # What a token of another role is told: "a receive token <denied>".
    denied: str = "may not use this"
    # Counted against server.page_requests_per_second per client address (429 beyond it).
    rated: bool = False


PAGE = Door("page", rated=True)
HEALTH = Door("health")
# A WHIP/WHEP resource's DELETE and PATCH: its unguessable URL is the capability.
RESOURCE = Door("resource")
STATUS = Door(
    "status",
    roles=("metrics", "receive", "both"),
    only_when_protected=True,
    denied="may not read /stream/status",
)
METRICS = Door(
    "metrics", roles=("metrics",), only_when_protected=True, denied="may not read /metrics"
)
WEBSOCKET = Door(
    "ws",
    roles=("send", "receive", "both", "node"),
    holds="idle",
    denied="cannot open /ws; use a send, receive or both token",
)
WHIP = Door("whip", roles=("send", "both"), holds="sender", denied="may not send (WHIP)")
WHEP = Door("whep", roles=("receive", "both"), holds="receiver", denied="may not receive (WHEP)")
LISTEN = Door("ogg", roles=("receive", "both"), holds="listener", denied="may not listen")
ADMIN = Door(
    "admin",
    roles=("admin",),
    holds="admin",
    local_without_secret=True,
    denied="may not use the admin API",
)


@dataclass(eq=False)
class Entry:
    """What the guard hands a route: who is calling, what their token allows, their slot."""

    remote: str
    # None while auth is off, or (WebSocket only) while the token is still to come in the
    # session's first message (`pending`).
    grant: Grant | None
    # The connection's slot in the registry (doors that hold one), released when the route
    # returns unless the route hands it on (`keep`): a WHIP/WHEP resource or an Ogg
    # response outlives its handler and releases the slot itself.
    info: SessionInfo | None = None
    pending: bool = False
    kept: bool = False

    def keep(self) -> SessionInfo:
        """The slot now belongs to whatever outlives the handler; it must close it."""
        assert self.info is not None
        self.kept = True
        return self.info

    def may_receive(self, stream_id: str) -> bool:
        """For listings and "latest": whether this caller's token reaches `stream_id` (a
        token scoped to one stream sees that one only)."""
        return self.grant is None or self.grant.stream in (None, stream_id)


Handler = Callable[..., Awaitable[Any]]


class Guard:
    """The checks of every door of one server (both ports share it)."""

    def __init__(self, ctx: RelayContext) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self._known_hosts = known_hosts(ctx.settings)
        server = ctx.settings.server
        self._page_rate = (
            RateTable(server.page_requests_per_second, server.page_request_burst)
            if server.page_requests_per_second > 0
            else None
        )
        ctx.revocations.listeners.append(self._end_withdrawn)

    def install(self, app: Quart) -> None:
        """The Host check before every request, and JSON for every error of `app`."""
        app.before_request(self._check_host)
        app.before_websocket(self._check_host)
        app.after_request(_close_after_refused_body)

        @app.errorhandler(HTTPException)
        async def _http_error(error: HTTPException) -> Response:
            code = error.code or 500
            return _json(code, error.description or "", name=error.name)

        @app.errorhandler(RelayError)
        async def _relay_error(error: RelayError) -> Response:
            return self.render(error)

    # Doors ---------------------------------------------------------------------------------
    def door(self, door: Door) -> Callable[[Handler], Handler]:
        """Route decorator: the handler runs with an `Entry` as its first argument only once
        the door's checks pass; its RelayErrors are rendered here."""

        def decorate(handler: Handler) -> Handler:
            @functools.wraps(handler)
            async def guarded(**kwargs: Any) -> Any:
                if has_request_context():
                    return await self._http(door, handler, kwargs)
                return await self._websocket(door, handler, kwargs)

            setattr(guarded, GUARDED, door)
            return guarded

        return decorate

    async def _http(self, door: Door, handler: Handler, kwargs: dict[str, Any]) -> Any:
        entry: Entry | None = None
        try:
            if request.method not in SAFE_METHODS:
                self._check_origin(request.headers.get("Origin"), request.host)
            entry = self._enter(door, request.remote_addr or "", request.headers, request.args)
            return await handler(entry, **kwargs)
        except RelayError as error:
            return self.render(error)
        finally:
            self._leave(entry)

    async def _websocket(self, door: Door, handler: Handler, kwargs: dict[str, Any]) -> Any:
        origin = websocket.headers.get("Origin")
        try:
            self._check_origin(origin, websocket.headers.get("Host", ""))
        except RelayError as error:  # before the handshake: a foreign page cannot open it
            return self.render(error)
        entry: Entry | None = None
        try:
            entry = self._enter(
                door, websocket.remote_addr or "", websocket.headers, websocket.args
            )
        except RelayError as error:
            await self._refuse_websocket(error)
            return None
        try:
            return await handler(entry, **kwargs)
        finally:
            self._leave(entry)

    def _enter(self, door: Door, peer: str, headers: Any, args: Any) -> Entry:
        remote = client_address(peer, headers, self.settings.server.trusted_proxies)
        if door.rated:
            self._check_rate(door, remote)
        if door.local_without_secret and self.settings.auth.secret is None:
            self._check_local(door, peer, headers)
        grant, pending = self._grant(door, headers, args)
        number_by = grant  # (a connection's own pass is never seen again: not remembered)
        if door.holds not in (None, "idle", "admin") and grant is not None:
            # A connection (WHIP/WHEP, Ogg) never holds a shared invite itself: it gets a pass
            # for itself alone, so the operator's Remove ends it and not everyone who scanned
            # the code. (/ws sessions get a pass they keep in their `welcome` instead.)
            grant = connection_pass(grant)
        entry = Entry(remote=remote, grant=grant, pending=pending)
        if door.holds is not None:
            user_agent = headers.get("User-Agent", "")[:200]
            info = SessionInfo(new_connection_id(), remote, user_agent=user_agent, via=door.name)
            info.grant, info.device = grant, short_device(user_agent)
            if door.holds in ("listener", "admin"):  # (the others take a role as they start)
                info.role = door.holds
            if door.holds != "admin":  # (people only: "Listener 7")
                info.number = self.ctx.names.number(number_by)
            self.ctx.registry.admit(info, authenticating=pending)
            entry.info = info
            if door.holds == "admin":  # a call: it holds its slot exactly while it runs
                self.ctx.registry.open_session(info)
        return entry

    def _leave(self, entry: Entry | None) -> None:
        if entry is not None and entry.info is not None and not entry.kept:
            self.ctx.registry.close_session(entry.info.connection_id)

    # Checks --------------------------------------------------------------------------------
    async def _check_host(self) -> Response | None:
        host = (request if has_request_context() else websocket).headers.get("Host", "")
        if host_allowed(host, self._known_hosts):
            return None
        log.warning("host_refused", host=host)
        self.ctx.metrics.count_error("host")
        return _json(403, f"host {host!r} is not served here (server.allowed_hosts)")

    def _check_origin(self, origin: str | None, host: str) -> None:
        if origin_allowed(origin, host, self.settings):
            return
        log.warning("origin_refused", origin=origin)
        self.ctx.metrics.count_error("origin")
        raise AuthError(f"origin {origin} is not allowed (server.allowed_origins)")

    def _check_rate(self, door: Door, remote: str) -> None:
        """LimitError (429) for a client over its page rate: counted every time, logged at
        most once per RATE_LOG_INTERVAL per address (with the refusals since the last line)."""
        rate = self._page_rate
        if rate is None or remote in self.settings.server.trusted_addresses:
            return
        wait, to_log = rate.take(remote, anyio.current_time())
        if not wait:
            return
        self.ctx.metrics.count_error("page_rate")
        if to_log:
            log.warning("page_rate_limited", remote=remote, door=door.name, refused=to_log)
        raise LimitError(
            f"too many page requests from {remote}: {rate.rate:g}/s after a burst of "
            f"{rate.burst:g} (server.page_requests_per_second); try again in a moment",
            http_status=429,
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )

    def _check_local(self, door: Door, peer: str, headers: Any) -> None:
        """Without a secret the admin API trusts only this machine: a direct loopback caller.
        Anything a proxy touched (forwarded headers, or a configured proxy's address) may be
        a LAN client relayed through this machine, so it is refused too; browsers' cross-site
        requests are refused by the Origin check."""
        proxied = peer in self.settings.server.trusted_proxies or any(
            name in headers for name in PROXY_HEADERS
        )
        if not _is_loopback(peer) or proxied:
            where = "through a proxy" if proxied else f"from {peer}"
            raise AuthError(
                f"the {door.name} API answers only direct callers on this machine (loopback, "
                f"no proxy) while auth.secret is not set, not {where}; set auth.secret and use "
                "an admin token (python -m relay_app token --role admin)"
            )

    def _grant(self, door: Door, headers: Any, args: Any) -> tuple[Grant | None, bool]:
        """The caller's grant for `door` (None: no token needed), and whether it is still to
        come (a WebSocket's first message). AuthError: 401 without a valid token, 403 with a
        token whose role may not use this door."""
        secret = self.settings.auth.secret
        if secret is None:
            return None, False
        if not door.roles or (door.only_when_protected and not self.settings.auth.protect_metrics):
            return None, False
        token = bearer_token(headers.get("Authorization", "")) or args.get("token")
        if not token:
            if door.holds == "idle":  # a WebSocket may send its token as its first message
                return None, True
            raise AuthError(
                f"this needs an access token: Authorization: Bearer <token> or ?token=... "
                f"(a {' or '.join(door.roles)} token)",
                http_status=401,
            )
        try:
            grant = verify(secret.get_secret_value(), token)
        except AuthError as error:
            raise AuthError(error.message, http_status=401) from None
        if grant.role not in door.roles:
            article = "an" if grant.role[0] in "aeiou" else "a"
            raise AuthError(f"{article} {grant.role} token {door.denied}")
        self.ctx.revocations.check(grant)  # 403: "This invitation was withdrawn..."
        return grant, False

    def _end_withdrawn(self, ids: dict[str, float], origin: str) -> None:
        """Tokens were just withdrawn (here, or on another node of the cluster): every
        connection holding one ends now, told why (`disconnected`, reason "removed")."""
        held = set(ids)
        for info in [*self.ctx.registry.sessions.values()]:
            grant = info.grant
            if grant is None or info.kick is None or held.isdisjoint(grant.revocation_ids):
                continue
            log.info("session_removed", connection_id=info.connection_id, origin=origin)
            info.kick(Disconnected(reason="removed", message=REMOVED_WORDS))

    # Errors --------------------------------------------------------------------------------
    def render(self, error: RelayError) -> Response:
        """The one HTTP form of a RelayError: status, JSON body, and the headers it implies."""
        headers = dict(error.http_headers)
        if error.http_status == 401:
            headers["WWW-Authenticate"] = REALM
        if error.http_status == 503:
            headers["Retry-After"] = RETRY_AFTER
        return _json(error.http_status, error.message, headers=headers)

    async def _refuse_websocket(self, error: RelayError) -> None:
        """The WebSocket form: accepted, told why in an `error` frame, closed with its code."""
        self.ctx.metrics.count_error(error.kind)
        log.info("connection_refused", kind=error.kind, error=error.message)
        await websocket.accept()
        await websocket.send(p.encode(p.Error(message=error.message)))
        code = int(error.close_code or 1008)
        await websocket.close(code, (error.close_reason or error.message)[:120])


@dataclass
class _Bucket:
    tokens: float
    updated: float
    refused: int = 0  # refusals not yet logged
    logged: float | None = None  # when the last refusal was logged


class RateTable:
    """A token bucket per client address: `rate` requests a second after a burst of `burst`.

    Holds at most `size` addresses, least recently seen first: a new one forgets those whose
    bucket has refilled (idle for burst/rate seconds: forgetting them changes nothing), then,
    if still full, the least recently seen; so an address can only gain by being forgotten
    while thousands of others are busy.
    """

    def __init__(self, rate: float, burst: int, size: int = RATE_ADDRESSES) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.size = size
        self._buckets: dict[str, _Bucket] = {}  # least recently seen first

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, address: str, now: float) -> tuple[float, int]:
        """One request from `address` at `now`: (0, 0) when it may go ahead. Refused: the
        seconds until it could, and the refusals to log now (this one and those since the
        last line), or 0 within RATE_LOG_INTERVAL of that line."""
        bucket = self._buckets.pop(address, None)
        if bucket is None:
            self._make_room(now)
            bucket = _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        self._buckets[address] = bucket
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0, 0
        wait = (1 - bucket.tokens) / self.rate
        bucket.refused += 1
        if bucket.logged is not None and now - bucket.logged < RATE_LOG_INTERVAL:
            return wait, 0
        refused, bucket.refused, bucket.logged = bucket.refused, 0, now
        return wait, refused

    def _make_room(self, now: float) -> None:
        refilled = self.burst / self.rate
        while self._buckets:  # (in the order of `updated`: each take moves its bucket last)
            oldest = next(iter(self._buckets))
            full = len(self._buckets) >= self.size
            if not full and now - self._buckets[oldest].updated < refilled:
                return
            del self._buckets[oldest]


def client_address(peer: str, headers: Any, trusted_proxies: list[str]) -> str:
    """The client's address: the connection's own, or, when it comes from a trusted proxy,
    the last address in `X-Forwarded-For` that is not one of the proxies (what the proxy saw;
    earlier entries are whatever the client claimed).

    Every `X-Forwarded-For` line counts, in order, as one list: a proxy that appends may add
    its own line after the client's (HAProxy's `option forwardfor`) instead of extending it,
    and the client may send as many lines as it likes before it.
    """
    if peer not in trusted_proxies:
        return peer
    lines = headers.getlist("X-Forwarded-For")
    hops = [hop.strip() for line in lines for hop in line.split(",") if hop.strip()]
    for hop in reversed(hops):
        if hop not in trusted_proxies:
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # a proxy that writes garbage: count it as itself
    return peer


def bearer_token(authorization: str) -> str | None:
    """The token of an `Authorization: Bearer <token>` header; None for anything else."""
    scheme, _, token = authorization.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


async def _close_after_refused_body(response: Response) -> Response:
    """An error answer to a request with a body says `Connection: close`.

    Refused before its body was read (at a door, or by a route that does not exist), the
    request leaves Hypercorn closing the connection after the answer without saying so; a
    keep-alive client then sends its next request into it and hears "server disconnected
    without sending a response". Said in the answer, the client opens a new one.
    """
    if response.status_code >= 400 and (
        request.content_length or "Transfer-Encoding" in request.headers
    ):
        response.headers["Connection"] = "close"
    return response


def _json(code: int, message: str, name: str | None = None, headers: Any = None) -> Response:
    response = jsonify(http_error_body(code, message, name))
    response.status_code = code
    response.headers.update(headers or {})
    return response


def _is_loopback(remote: str) -> bool:
    try:
        return ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


def origin_allowed(origin: str | None, host: str, settings: Settings) -> bool:
    """Cross-site protection: a browser page from elsewhere may not open /ws or POST here.

    Clients that send no Origin (Python, curl) pass: Origin is what browsers add, and what a
    malicious page cannot forge. Default: only the server's own origin (same host:port).
    """
    if origin is None:
        return True
    allowed = settings.server.allowed_origins
    if allowed is not None:
        return "*" in allowed or origin.rstrip("/") in {o.rstrip("/") for o in allowed}
    return urlsplit(origin).netloc.lower() == host.lower()


def known_hosts(settings: Settings) -> set[str] | None:
    """Host names a request may name (None: any). IP literals always pass (see host_allowed)."""
    allowed = settings.server.allowed_hosts
    if allowed is not None:
        return None if "*" in allowed else {host.lower() for host in allowed}
    hostname = socket.gethostname()
    names = {"localhost", hostname, f"{hostname}.local", socket.getfqdn(), settings.server.host}
    return {name.lower() for name in names if name}


def malformed_host(host_header: str) -> bool:
    """A Host header that names no host at all ("[::1", "[zz]:1", a label over 63 characters):
    refused before the web framework parses it (it would fail with a 500)."""
    try:
        urlsplit(f"//{host_header}").port  # noqa: B018 (parsing is the check)
        host_header.encode("idna")
    except (ValueError, UnicodeError):
        return True
    return False


async def refuse_malformed_host(scope: dict[str, Any], send: Any) -> bool:
    """The guard's first check, at the ASGI level of both ports: answers 400 and says True
    for a request whose Host is malformed. (The rest of the Host check runs in `Guard`.)"""
    if scope["type"] not in ("http", "websocket"):
        return False
    headers = dict(scope.get("headers") or [])
    host = headers.get(b"host", b"").decode("latin-1")
    if not malformed_host(host):
        return False
    log.warning("host_refused", host=host[:100], reason="malformed")
    body = json.dumps(http_error_body(400, f"malformed Host header {host[:100]!r}")).encode()
    start = {"status": 400, "headers": [(b"content-type", b"application/json")]}
    if scope["type"] == "http":
        await send({"type": "http.response.start", **start})
        await send({"type": "http.response.body", "body": body})
    elif "websocket.http.response" in scope.get("extensions", {}):
        await send({"type": "websocket.http.response.start", **start})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008})
    return True


def host_allowed(host_header: str, known: set[str] | None) -> bool:
    """DNS rebinding needs a name the attacker controls: an IP literal cannot be one, so any
    IP passes, and a name must be one this server knows it has (or is configured with)."""
    if known is None:
        return True
    host = urlsplit(f"//{host_header}").hostname or ""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return host.lower() in known
