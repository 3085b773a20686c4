"""Hardening, round 4: the pages' QR codes and the logs.

A code is built off the event loop that forwards the audio, cached, and refused when it
cannot work (too long, an invite that plays nothing); no token reaches a log line. The
listeners' audio is measured where they hear it: the largest gap between two packets.
"""

from __future__ import annotations

import gc
import itertools
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import httpx
import pytest

from relay_app.client import RelayClient, ToneTrack
from relay_app.core import protocol as p
from relay_app.tools.testing import ServerProcess
from relay_app.webrtc.rtp_tap import tap_receiver

from ..helpers import token

pytestmark = [pytest.mark.anyio, pytest.mark.mode_independent]

CHANNELS = {"english": {"label": "English"}, "francais": {"label": "Français"}}
# The module's server with auth on (conftest.secure_server), access lines logged.
SECURE_CONFIG = {"channels": CHANNELS, "logging": {"access_log": True}}


class Gaps:
    """When each RTP packet reached a listener: its largest silence in a window."""

    def __init__(self, pc: Any) -> None:
        self.arrivals: list[float] = []
        tap_receiver(pc.getReceivers()[0], lambda packet, arrival: self.arrivals.append(arrival))

    def largest(self, since: float, until: float) -> tuple[float, int]:
        """(the largest gap in s, how many gaps were over 100 ms) between since and until."""
        window = [a for a in self.arrivals if since <= a <= until]
        gaps = [b - a for a, b in itertools.pairwise(window)]
        return max(gaps), sum(gap > 0.1 for gap in gaps)


# Run as separate processes: a client thread in the test's own process would take the GIL
# from the listener being measured; niced, as the phones and the attacker are other machines
# on the LAN, not processes taking this one's two cores from the server.
LOOP_QR = """
import sys, time, httpx
base, source, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
transport = httpx.HTTPTransport(local_address=source)
with httpx.Client(transport=transport, timeout=10) as client:
    end, n = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        n += 1
        if n % 2:  # the longest code a QR holds (~100 ms of segno when built on the loop)
            client.get(base + "/qr.svg?channel=english&invite=" + "x" * 2150)
        else:  # a new text each time (the Host names an IP the server accepts): no cache
            host = f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}:8080"
            client.get(base + "/qr.svg?channel=english", headers={"Host": host})
"""

PAGE_LOADS = """
import sys, httpx
base, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
paths = ["/", "/static/style.css", "/static/index.js", "/static/relay.js", "/qr.svg",
         "/qr.svg?channel=english", "/qr.svg?channel=francais", "/manifest.webmanifest",
         "/static/icons/icon-192.png"]
for phone in range(first, first + count):
    transport = httpx.HTTPTransport(local_address=f"127.0.{phone // 250 + 1}.{phone % 250 + 1}")
    with httpx.Client(transport=transport, timeout=10) as client:
        client.head(base + "/qr.svg")
        for path in paths:
            client.get(base + path)
"""


@contextmanager
def clients(*runs: tuple[str, list[str]]) -> Iterator[list[subprocess.Popen[str]]]:
    procs = [
        subprocess.Popen(["nice", "-n", "10", sys.executable, "-c", script, *args])
        for script, args in runs
    ]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


@contextmanager
def no_collections_here() -> Iterator[None]:
    """The speaker and the listener run in this (test) process: a garbage collection would
    stop both for a moment and show as the server's gap (one of 185 ms in a clean-clone
    run). None during the measured window (the heap was collected and frozen before the
    test: conftest's `_frozen_heap`)."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.serial
async def test_looping_qr_codes_and_200_page_loads_leave_every_listener_gap_short(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server({"channels": CHANNELS})
    base = server.base_url
    async with (
        RelayClient.connect(server.ws_url) as speaker,
        RelayClient.connect(server.ws_url) as listener,
    ):
        await speaker.start_sending(ToneTrack(440), channel="english")
        await listener.start_receiving("english")
        gaps = Gaps(listener.pc)
        await listener.wait_audio(1.0)
        quiet = time.monotonic()
        await anyio.sleep(2)
        quiet_gap, _ = gaps.largest(quiet, time.monotonic())

        attack = [(LOOP_QR, [base, source, "8"]) for source in ("127.0.0.2", "127.0.0.3")]
        loads = [(PAGE_LOADS, [base, str(first), "100"]) for first in (0, 100)]
        with clients(*attack, *loads) as procs, no_collections_here():
            await anyio.sleep(1)  # the clients' own start-up (Python, httpx)
            start = time.monotonic()
            await anyio.sleep(6)
            loaded_gap, over_100 = gaps.largest(start, time.monotonic())
            for proc in procs[2:]:  # the page loads finish; the loops are cut
                with anyio.fail_after(60):
                    while proc.poll() is None:
                        await anyio.sleep(0.2)
                assert proc.returncode == 0
    print(f"largest gap: quiet {quiet_gap * 1000:.0f} ms, loaded {loaded_gap * 1000:.0f} ms")
    # Measured on an otherwise idle 2-core machine: 25-27 ms (the target is 40); before, with
    # codes built on the loop, 139-210 ms with 21-42 gaps over 100 ms in 6 s. The bound leaves
    # room for a machine busy with other work, and still fails at once on a code built on
    # the loop.
    assert loaded_gap <= 0.080, (quiet_gap, loaded_gap, over_100)
    assert over_100 == 0


async def test_the_same_code_is_built_once_and_then_served_from_the_cache(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server({"channels": CHANNELS})
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        first = time.monotonic()
        reply = await client.get("/qr.svg?channel=english")
        built = time.monotonic() - first
        assert reply.status_code == 200 and reply.content.startswith(b"<svg")
        again = time.monotonic()
        for _ in range(20):
            assert (await client.get("/qr.svg?channel=english")).content == reply.content
        cached = (time.monotonic() - again) / 20
    assert cached < max(built, 0.05), (built, cached)


@pytest.mark.parametrize("length", [2150, 4000, 20_000])
async def test_an_oversized_invite_is_refused_with_a_plain_json_error(
    secure_server: ServerProcess, length: int
) -> None:
    server = secure_server
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        reply = await client.get(f"/qr.svg?channel=english&invite={'x' * length}")
    assert reply.status_code in (400, 414), reply.text
    body = reply.json()
    assert body["status"] == reply.status_code and "characters" in body["message"]
    assert not [e for e in server.events if "exception" in e]


async def test_a_code_is_made_only_of_an_invite_that_plays_the_channel(
    secure_server: ServerProcess,
) -> None:
    server = secure_server
    good = token("receive", stream="english", invite=True)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        reply = await client.get("/qr.svg", params={"channel": "english", "invite": good})
        assert reply.status_code == 200
        assert reply.headers["X-Url"].endswith(f"/listen/english?token={good}")
        for invite, why in [
            ("junk", "invalid"),
            (token("receive", stream="francais", invite=True), "does not play english"),
            (token("receive", ttl=-5, invite=True), "expired"),
            (token("send"), "does not play"),
            (token("both", stream="english"), "only an invitation"),
            (token("receive", stream="english"), "only an invitation"),
        ]:
            reply = await client.get("/qr.svg", params={"channel": "english", "invite": invite})
            assert reply.status_code == 400, (why, reply.text)
            assert why in reply.json()["message"]
        reply = await client.get("/qr.svg", params={"channel": "<script>"})
        assert reply.status_code == 400 and "channel" in reply.json()["message"]


async def test_no_invite_or_token_reaches_a_log_line(secure_server: ServerProcess) -> None:
    server = secure_server
    invite = token("receive", stream="english", invite=True)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        reply = await client.get("/qr.svg", params={"channel": "english", "invite": invite})
        assert reply.is_success
        await client.get("/qr.svg", params={"channel": "english", "invite": "not-a-token-secret"})
        await client.get(f"/listen/english?token={invite}")
        await client.get(f"/?access_token={invite}")
    with anyio.fail_after(10):
        while len([e for e in server.find("http_access") if e["path"] != "/metrics"]) < 4:
            await anyio.sleep(0.1)
    lines = "\n".join(server.lines)
    assert invite not in lines and invite.split(".")[1] not in lines
    assert "not-a-token-secret" not in lines
    assert "invite=REDACTED" in lines


async def test_a_takeover_whose_offer_fails_leaves_the_live_speaker_named_in_the_console(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server({"channels": CHANNELS})
    async with (
        RelayClient.connect(server.ws_url) as speaker,
        RelayClient.connect(server.ws_url) as intruder,
    ):
        await speaker.start_sending(ToneTrack(440), channel="english")
        bad = p.StartSending(sdp="v=0\r\nnot an offer\r\n", channel="english", takeover=True)
        await intruder.send(bad)
        refused = await intruder.receive(p.Error)
        assert "offer" in refused.message
        sessions = server.get("/admin/sessions").json()["sessions"]
        rows = {row["connection_id"]: row for row in sessions}
        assert rows[speaker.connection_id]["stream_id"] == "english"
        assert rows[speaker.connection_id]["channel"] == "english"
        assert rows[intruder.connection_id]["role"] == "idle"
        # The speaker plays on and its channel is still its own: a plain start is busy.
        await intruder.send(p.StartSending(sdp=bad.sdp, channel="english"))
        assert "busy" in (await intruder.receive(p.Error)).message


async def test_codes_are_made_only_of_channels_that_exist_and_one_address_cannot_take_every_build(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server({"channels": CHANNELS, "server": {"trusted_addresses": []}})
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        made_up = await client.get("/qr.svg", params={"channel": "nowhere"})
        assert made_up.status_code == 404 and "no channel" in made_up.json()["message"]
    # Forty different codes at once from one address: two are built at a time for it, 16
    # more wait their turn, the rest are refused at once (503), and another address's code
    # is made meanwhile.
    hosts = [f"10.0.0.{n}:8080" for n in range(40)]
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
    async with (
        httpx.AsyncClient(base_url=server.base_url, timeout=10, transport=transport) as flood,
        httpx.AsyncClient(base_url=server.base_url, timeout=10) as other,
    ):
        statuses: list[int] = []

        async def one(host: str) -> None:
            answer = await flood.get("/qr.svg?channel=english", headers={"Host": host})
            statuses.append(answer.status_code)

        async with anyio.create_task_group() as group:
            for host in hosts:
                group.start_soon(one, host)
            answer = await other.get("/qr.svg?channel=francais")
        assert answer.status_code == 200
    assert statuses.count(503) >= 40 - 2 - 16, statuses
    assert set(statuses) <= {200, 503}, statuses
