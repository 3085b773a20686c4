"""Hardening, round 4, the guard: forwarded addresses behind the documented nginx and behind a
proxy that appends, and a client looping page requests.

The nginx test runs the server block of docs/deployment.md exactly as written there (only its
upstream and listen ports changed) in Debian's nginx. Attackers connect from 127.0.0.2, the
proxies from 127.0.0.1 (nginx, as documented) and 127.0.0.4 (a proxy that appends, as HAProxy's
`option forwardfor` does); `server.trusted_addresses` is emptied, so every per-address rule
applies. Forged addresses are from the documentation ranges and are only ever written into
headers.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import pytest
import websockets
from anyio.abc import SocketStream
from werkzeug.datastructures import Headers

from relay_app.client import RelayClient, ToneTrack
from relay_app.endpoints.guard import RateTable, client_address
from relay_app.tools.testing import REPO, ServerProcess, free_port

from ..helpers import SECRET, assert_no_leaks, finish_server, need, token

pytestmark = pytest.mark.anyio

ATTACKER = "127.0.0.2"
APPENDING_PROXY = "127.0.0.4"
CAP = 10  # server.max_connections_per_address, its default
ATTEMPTS = 15
DEPLOYMENT = REPO / "docs" / "deployment.md"


@pytest.fixture(scope="module")
def relay_mode() -> str:
    """Doors and addresses: the relay mode does not touch them."""
    return "forward"


def forged(i: int) -> str:
    return f"198.51.100.{i + 1}"


# A raw HTTP/1.1 client: every header line exactly as a proxy writes it ----------------------
@dataclass
class Answer:
    status: int
    head: str
    body: bytes


async def send_request(
    port: int, source: str, path: str, headers: list[tuple[str, str]]
) -> tuple[SocketStream, Answer]:
    """Connect from `source` to 127.0.0.1:`port`, send one GET with `headers` (repeated names
    stay separate lines), and read the answer's head (and body, unless it is a 200 that goes
    on: an Ogg stream). The connection stays open: a listener holds its slot while it lasts."""
    stream = await anyio.connect_tcp("127.0.0.1", port, local_host=source)
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{name}: {value}" for name, value in headers]
    await stream.send(("\r\n".join(lines) + "\r\n\r\n").encode())
    data = b""
    with anyio.fail_after(15):
        while b"\r\n\r\n" not in data:
            data += await stream.receive()
        head, _, body = data.partition(b"\r\n\r\n")
        text = head.decode("latin-1")
        status = int(text.split()[1])
        length = re.search(r"(?im)^content-length:\s*(\d+)", text)
        if status != 200 and length is not None:
            while len(body) < int(length.group(1)):
                body += await stream.receive()
    return stream, Answer(status, text, body)


async def hold_listeners(
    server: ServerProcess, port: int, source: str, shapes: list[list[tuple[str, str]]]
) -> tuple[list[SocketStream], list[Answer]]:
    """One Ogg listener per header shape, all held open at once (each admitted one is counted
    by the server before the next asks)."""
    streams, answers = [], []
    for headers in shapes:
        stream, answer = await send_request(port, source, "/stream/latest.ogg", headers)
        streams.append(stream)
        answers.append(answer)
        await wait_listeners(server, sum(a.status == 200 for a in answers))
    return streams, answers


async def close_all(streams: list[SocketStream]) -> None:
    for stream in streams:
        await stream.aclose()


def refusal(answer: Answer) -> str:
    assert answer.status == 503, answer.head
    return str(json.loads(answer.body)["message"])


# Debian's nginx, running the documented block ------------------------------------------------
def documented_nginx_block() -> str:
    """The one ```nginx fence of docs/deployment.md, as written there."""
    fences = re.findall(r"^```nginx\n(.*?)^```", DEPLOYMENT.read_text(), re.M | re.S)
    assert len(fences) == 1, f"docs/deployment.md should hold one nginx block, not {len(fences)}"
    return str(fences[0])


def for_this_test(block: str, listen_port: int, upstream_port: int) -> str:
    """The documented block with only its ports changed: nginx on 127.0.0.1:`listen_port`, the
    relay on 127.0.0.1:`upstream_port`."""
    block, listens = re.subn(
        r"(?m)^(\s*)listen\s+80;", rf"\1listen 127.0.0.1:{listen_port};", block
    )
    assert listens == 1, "the documented block should listen on port 80, once"
    block, upstreams = re.subn(
        r"proxy_pass http://127\.0\.0\.1:8080;",
        f"proxy_pass http://127.0.0.1:{upstream_port};",
        block,
    )
    assert upstreams >= 2, "the documented block should proxy / and /ws to 127.0.0.1:8080"
    return block


@contextmanager
def nginx(tmp_path: Path, upstream_port: int) -> Iterator[int]:
    """Debian's nginx with its own prefix, config, pid file and logs in `tmp_path`, serving the
    documented block on a free loopback port (yielded); stopped by its own PID."""
    debian = Path("/usr/sbin/nginx")  # (not on every PATH)
    binary = str(debian) if debian.exists() else need("nginx")
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    port = free_port()
    server_block = for_this_test(documented_nginx_block(), port, upstream_port)
    temp = {name: prefix / name for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    # As root, nginx's workers would switch to `nobody`, who cannot enter pytest's tmp_path.
    user = "user root;\n" if os.geteuid() == 0 else ""
    config = prefix / "nginx.conf"
    config.write_text(
        f"{user}daemon off;\nworker_processes 1;\npid {prefix / 'nginx.pid'};\n"
        f"error_log {prefix / 'error.log'} warn;\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        f"    access_log {prefix / 'access.log'};\n"
        + "".join(f"    {name}_temp_path {path};\n" for name, path in temp.items())
        + server_block
        + "}\n"
    )
    proc = subprocess.Popen(
        [binary, "-p", f"{prefix}/", "-c", str(config), "-e", str(prefix / "error.log")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 10
        while not (prefix / "nginx.pid").exists() or not _accepts(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                log = (prefix / "error.log").read_text() if (prefix / "error.log").exists() else ""
                raise RuntimeError(
                    f"nginx did not start: {proc.stdout and proc.stdout.read()} {log}"
                )
            time.sleep(0.05)
        assert int((prefix / "nginx.pid").read_text()) == proc.pid
        yield port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # nginx's fast shutdown
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _accepts(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@asynccontextmanager
async def speaking(server: ServerProcess, with_token: bool = True) -> AsyncIterator[str]:
    send = token("send") if with_token else None
    async with RelayClient.connect(server.ws_url, token=send) as sender:
        yield await sender.start_sending(ToneTrack(440))


# Behind the documented nginx -------------------------------------------------------------------
@pytest.fixture
def documented_relay(tmp_path: Path) -> Iterator[ServerProcess]:
    """The relay configured as docs/deployment.md says for nginx (auth on: its baseline and
    leak check read /metrics with a metrics token)."""
    config = {
        "server": {"trusted_proxies": ["127.0.0.1"], "trusted_addresses": []},
        "auth": {"secret": SECRET},
        "relay": {"mode": "forward"},
        "channels": {"english": {"label": "English"}},
    }
    server = ServerProcess(tmp_path, config).start()
    try:
        server.headers = {"Authorization": f"Bearer {token('metrics')}"}
        server.take_baseline()
        yield server
        assert_no_leaks(server)
        finish_server(server)
    finally:
        server.stop()


async def test_behind_the_documented_nginx_a_forged_forwarded_address_gets_no_extra_slots(
    documented_relay: ServerProcess, tmp_path: Path
) -> None:
    """A client that writes its own `X-Forwarded-For` on each request through the documented
    nginx is still one address: the cap holds on every location, and the logs name it."""
    server = documented_relay
    listen = ("Authorization", f"Bearer {token('receive')}")
    with nginx(tmp_path, server.port) as port:
        async with speaking(server):
            # `location /`: an Ogg listener per request, each naming another address; the
            # last sends two header lines, the second itself a list: nginx must drop them all.
            shapes = [[listen, ("X-Forwarded-For", forged(i))] for i in range(ATTEMPTS)]
            shapes[-1][1:] = [("X-Forwarded-For", forged(20)), ("X-Forwarded-For", "a, b")]
            streams, answers = await hold_listeners(server, port, ATTACKER, shapes)
            try:
                admitted = sum(a.status == 200 for a in answers)
                assert admitted == CAP, f"{admitted} of {ATTEMPTS} admitted through location /"
                for answer in answers[CAP:]:
                    assert f"too many connections from {ATTACKER}" in refusal(answer)
            finally:
                await close_all(streams)
            await wait_listeners(server, 0)
            # `location /ws`: the same for WebSocket sessions.
            welcomed = await hold_websockets(f"ws://127.0.0.1:{port}/ws?token={token('receive')}")
            assert welcomed == CAP, f"{welcomed} of {ATTEMPTS} admitted through location /ws"
        # A browser's same-origin requests pass the Origin check on both locations.
        origin = f"http://127.0.0.1:{port}"
        admin = {"Authorization": f"Bearer {token('admin')}", "Origin": origin}
        async with httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(local_address=ATTACKER)
        ) as browser:
            for action in ("lock", "unlock"):
                url = f"{origin}/admin/channels/english/{action}"
                answer = await browser.post(url, headers=admin)
                assert answer.status_code == 200, answer.text
        url = f"ws://127.0.0.1:{port}/ws?token={token('receive')}"
        async with websockets.connect(url, origin=websockets.Origin(origin)) as page:
            assert json.loads(await page.recv())["type"] == "welcome"
    # Every line the server logged names the client nginx saw, never what it wrote.
    remotes = {str(e["remote"]) for e in server.events if "remote" in e}
    assert not [r for r in remotes if r.startswith("198.51.100.") or r in "ab"], remotes
    assert len(server.find("http_listener_started", remote=ATTACKER)) == CAP
    assert len(server.find("client_connected", remote=ATTACKER)) == CAP


async def hold_websockets(url: str) -> int:
    """Open ATTEMPTS WebSockets from ATTACKER at once, each forging another address; how many
    were welcomed (the rest are told the per-address cap)."""
    welcomed = 0
    async with AsyncExitStack() as stack:
        for i in range(ATTEMPTS):
            headers = [("X-Forwarded-For", forged(i))]
            ws = await stack.enter_async_context(
                websockets.connect(url, local_addr=(ATTACKER, 0), additional_headers=headers)
            )
            first = json.loads(await ws.recv())
            if first["type"] == "welcome":
                welcomed += 1
            else:
                assert f"too many connections from {ATTACKER}" in first["message"], first
    return welcomed


async def wait_listeners(server: ServerProcess, count: int) -> None:
    """Until the server counts `count` Ogg listeners."""
    with anyio.fail_after(15):
        while server.metrics()["live"]["http_listeners"] != count:
            await anyio.sleep(0.05)


# Behind a proxy that appends its own header line -------------------------------------------------
async def test_behind_a_proxy_that_appends_the_client_is_the_last_address_it_did_not_write(
    make_forward_server: Callable[..., ServerProcess],
) -> None:
    """HAProxy's `option forwardfor` adds its own `X-Forwarded-For` line after the client's;
    chained proxies append to a list. The client is the rightmost address, across every
    line, that no trusted proxy wrote, however many lines the client sent before it."""
    second = "127.0.0.5"  # a second proxy in the chain, in front of the first
    server = make_forward_server(
        {"server": {"trusted_proxies": [APPENDING_PROXY, second], "trusted_addresses": []}}
    )
    xff = "X-Forwarded-For"
    shapes = []
    for i in range(ATTEMPTS):
        shapes.append(
            [
                # one forged line, then the proxy's
                [(xff, forged(i)), (xff, ATTACKER)],
                # a forged list, then the proxy's line
                [(xff, f"{forged(i)}, {forged(i + 20)}"), (xff, ATTACKER)],
                # two proxies: the front one wrote the client, the one that connects wrote it
                [(xff, forged(i)), (xff, f"{ATTACKER}, {second}")],
            ][i % 3]
        )
    async with speaking(server, with_token=False):
        streams, answers = await hold_listeners(server, server.port, APPENDING_PROXY, shapes)
        try:
            admitted = sum(a.status == 200 for a in answers)
            assert admitted == CAP, f"{admitted} of {ATTEMPTS} admitted"
            for answer in answers[CAP:]:
                assert f"too many connections from {ATTACKER}" in refusal(answer)
        finally:
            await close_all(streams)
        await wait_listeners(server, 0)
    assert len(server.find("http_listener_started", remote=ATTACKER)) == CAP
    remotes = {str(e["remote"]) for e in server.events if "remote" in e}
    assert not [r for r in remotes if r.startswith("198.51.100.")], remotes


def test_the_client_address_is_read_from_every_forwarded_line() -> None:
    """`client_address` with the header object the web framework hands the guard."""
    proxies = ["127.0.0.1", "10.0.0.2"]

    def address(peer: str, *lines: str) -> str:
        return client_address(peer, Headers([("X-Forwarded-For", line) for line in lines]), proxies)

    assert address("127.0.0.1", "198.51.100.1", "192.0.2.7") == "192.0.2.7"
    assert address("127.0.0.1", "198.51.100.1, 192.0.2.7", "10.0.0.2") == "192.0.2.7"
    assert address("127.0.0.1", " 198.51.100.1 ,, ", "192.0.2.7 , 10.0.0.2") == "192.0.2.7"
    assert address("127.0.0.1", "2001:db8::1") == "2001:db8::1"
    assert address("127.0.0.1") == "127.0.0.1"  # nothing forwarded: the proxy itself
    assert address("127.0.0.1", "10.0.0.2") == "127.0.0.1"  # only proxies
    assert address("127.0.0.1", "192.0.2.7", "garbage") == "127.0.0.1"  # a proxy writing junk
    assert address("192.0.2.9", "198.51.100.1") == "192.0.2.9"  # not a proxy: ignored


# A client looping page requests ------------------------------------------------------------------
# The On air page with a few channels, as Chromium loads it (its /stream/status and WebSocket
# go through other doors).
PAGE_LOAD = [
    "/",
    "/static/style.css",
    "/static/index.js",
    "/static/relay.js",
    "/static/icons/icon-192.png",
    "/manifest.webmanifest",
    *(f"/qr.svg?channel=channel{i}" for i in range(6)),
    "/listen",
    "/static/receiver.js",
    "/static/phone.js",
]
BURST, RATE = 100, 10.0  # server.page_request_burst and page_requests_per_second, defaults


def http_from(address: str) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(local_address=address)
    return httpx.AsyncClient(transport=transport, timeout=10)


async def test_a_client_looping_page_requests_is_held_to_its_rate_and_others_are_served(
    make_forward_server: Callable[..., ServerProcess],
) -> None:
    """With the defaults: a few page loads in a row all pass, a loop is refused (429, JSON,
    Retry-After) beyond the burst at the configured rate, logged once and counted; another
    address, and another client behind a trusted proxy, are served meanwhile."""
    server = make_forward_server(
        {
            "server": {"trusted_addresses": [], "trusted_proxies": [APPENDING_PROXY]},
            "channels": {f"channel{i}": {"label": f"Channel {i}"} for i in range(6)},
        }
    )
    statuses: list[int] = []
    refused: list[httpx.Response] = []
    async with http_from(ATTACKER) as attacker, http_from("127.0.0.3") as neighbour:
        started = time.monotonic()
        for _ in range(5):  # five loads of the page in a row, as a user reloading would
            for path in PAGE_LOAD:
                statuses.append((await attacker.get(server.base_url + path)).status_code)
        assert statuses == [200] * len(statuses), statuses
        for i in range(400):  # then a loop
            answer = await attacker.get(server.base_url + PAGE_LOAD[i % len(PAGE_LOAD)])
            statuses.append(answer.status_code)
            if answer.status_code == 429:
                refused.append(answer)
        elapsed = time.monotonic() - started
        admitted = statuses.count(200)
        assert statuses.count(429) == len(refused) == len(statuses) - admitted
        assert BURST <= admitted <= BURST + RATE * elapsed + 1, (admitted, elapsed)
        assert statuses[:BURST] == [200] * BURST
        body = refused[-1].json()
        assert body["status"] == 429 and "server.page_requests_per_second" in body["message"]
        assert f"from {ATTACKER}" in body["message"]
        assert int(refused[-1].headers["Retry-After"]) >= 1
        # Nobody else is held up by it.
        for path in ("/", "/qr.svg"):
            assert (await neighbour.get(server.base_url + path)).status_code == 200
        # A rate, not a ban: a moment later the looping client is served again.
        await anyio.sleep(0.5)
        assert (await attacker.get(server.base_url + "/")).status_code == 200
    # Behind a trusted proxy each forwarded client has its own rate.
    async with http_from(APPENDING_PROXY) as proxy:
        looping = {"X-Forwarded-For": "192.0.2.10"}
        answers = [
            await proxy.get(server.base_url + "/", headers=looping) for _ in range(BURST + 50)
        ]
        # (not necessarily the last: on a busy machine the loop is slow enough to earn a
        # request or two back by its end)
        held = [answer for answer in answers if answer.status_code == 429]
        assert held and "from 192.0.2.10" in held[-1].json()["message"]
        other = await proxy.get(server.base_url + "/", headers={"X-Forwarded-For": "192.0.2.11"})
        assert other.status_code == 200
    errors = server.metrics()["errors"]
    assert errors["page_rate"] >= len(refused) + 1, errors
    # One line per RATE_LOG_INTERVAL (10 s), not one a request.
    lines = server.find("page_rate_limited", remote=ATTACKER)
    assert 1 <= len(lines) <= 1 + elapsed // 10 and lines[0]["refused"] == 1, lines


def test_the_page_rate_table_stays_bounded_and_keeps_refusing_a_busy_address() -> None:
    table = RateTable(rate=2.0, burst=4, size=3)
    assert [table.take("a", 0.0) for _ in range(4)] == [(0.0, 0)] * 4  # the burst
    assert table.take("a", 0.0) == (pytest.approx(0.5), 1)  # refused: logged
    assert table.take("a", 0.0) == (pytest.approx(0.5), 0)  # refused: not logged again
    assert table.take("a", 1.0) == (0.0, 0)  # two more a second later
    for i in range(10_000):  # thousands of other addresses, once each, while "a" loops
        table.take(f"10.0.{i // 256}.{i % 256}", 1.0)
        table.take("a", 1.0)
    assert len(table) == 3
    wait, to_log = table.take("a", 1.2)
    assert wait > 0 and to_log == 0  # still refused (never forgotten), no second line yet
    assert [table.take("a", 20.0)[0] for _ in range(4)] == [0.0] * 4  # refilled
    wait, to_log = table.take("a", 20.0)
    assert wait > 0 and to_log > 10_000  # the next line counts every refusal since the last
    table.take("b", 20.0)
    assert len(table) == 2  # the others had refilled: forgotten as soon as one more came
