"""The operator's Disconnect and Remove, and who the console says is connected.

Real servers with auth on, real aiortc clients, every door (/ws, WHEP, Ogg over HTTP, the
admin API). Disconnect tells the person and closes (1000); Remove withdraws what they came in
with for its remaining lifetime, so that no door lets it back in: a device's own pass (what a
page gets for a shared invite), their personal token, or, when asked, the invite itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest
import websockets

from relay_app.client import RelayClient, ToneTrack
from relay_app.client.whip import WhipError, whep_play
from relay_app.core import protocol as p
from relay_app.core.auth import verify
from relay_app.tools.testing import ServerProcess

from ..helpers import SECRET, assert_no_leaks, token

pytestmark = pytest.mark.anyio

CHANNELS = {"english": {"label": "English"}, "french": {"label": "Français"}}
SECURE_CONFIG = {"channels": CHANNELS}  # conftest's secure_server: auth on
ADMIN = {"Authorization": f"Bearer {token('admin', subject='operator')}"}
WITHDRAWN = "This invitation was withdrawn by the operator."
ANDROID = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0 Mobile Safari/537.36"
)


@pytest.fixture(scope="module")
def relay_mode() -> str:
    """Doors, tokens and the admin API: the relay mode does not touch them."""
    return "forward"


@pytest.fixture
def secure(secure_server: ServerProcess) -> Iterator[ServerProcess]:
    yield secure_server
    assert_no_leaks(secure_server)


def rows(server: ServerProcess) -> dict[str, dict[str, Any]]:
    sessions = server.get("/admin/sessions", headers=ADMIN).json()["sessions"]
    return {row["connection_id"]: row for row in sessions}


def invite(server: ServerProcess, channel: str = "english", **extra: Any) -> str:
    made = server.post("/admin/invites", headers=ADMIN, json={"channel": channel, **extra})
    assert made.status_code == 200, made.text
    return str(made.json()["token"])


def admin(server: ServerProcess, connection_id: str, action: str, **body: Any) -> Any:
    return server.post(f"/admin/sessions/{connection_id}/{action}", headers=ADMIN, json=body)


async def ws_refusal(server: ServerProcess, held: str) -> tuple[str, int | None]:
    """What /ws says to `held`: its error frame's message and its close code."""
    async with websockets.connect(f"{server.ws_url}?token={held}") as ws:
        frame = p.parse_server_message(await ws.recv())
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
        assert isinstance(frame, p.Error), frame
        return frame.message, ws.close_code


async def test_the_console_names_who_is_connected_what_they_do_where_and_on_what(
    secure: ServerProcess,
) -> None:
    server = secure
    marie = token("send", stream="english", name="Marie")
    shared = invite(server, name="Press")
    async with (
        RelayClient.connect(server.ws_url, token=marie) as speaker,
        RelayClient.connect(server.ws_url, token=shared, user_agent_header=ANDROID) as press,
        RelayClient.connect(server.ws_url, token=token("receive")) as desk,
        RelayClient.connect(server.ws_url, token=token("receive")) as anonymous,
    ):
        # A page that came with the shared invite gets a pass of its own; others none.
        assert press.welcome.personal_token is not None
        own = verify(SECRET, press.welcome.personal_token)
        assert own.parent == verify(SECRET, shared).token_id and own.name == "Press"
        assert own.stream == "english" and own.expires_at == verify(SECRET, shared).expires_at
        assert speaker.welcome.personal_token is None and desk.welcome.personal_token is None
        await speaker.start_sending(ToneTrack(440), channel="english")
        await press.start_receiving("english")
        # A name the client gives: cleaned (no control or direction characters), cut to 40.
        await desk.send(p.StartReceiving(stream_id="english", name=" Desk\u202e\n 4" + "x" * 60))
        await desk.answer_offer(await desk.receive(p.Offer))
        await anonymous.send(p.StartReceiving(stream_id="french"))
        assert "No audio stream" in (await anonymous.receive(p.Error)).message
        table = rows(server)
        row = table[speaker.connection_id]
        assert (row["name"], row["what"], row["channel_label"]) == ("Marie", "speaking", "English")
        assert row["device"] == "Python client" and row["token"]["kind"] == "token"
        row = table[press.connection_id]
        assert (row["name"], row["what"], row["channel_label"]) == ("Press", "listening", "English")
        assert row["device"] == "Chrome on Android"
        assert row["token"]["kind"] == "pass" and row["token"]["invite_connections"] == 1
        assert table[desk.connection_id]["name"] == "Desk 4" + "x" * 34
        row = table[anonymous.connection_id]
        assert row["name"].startswith("Listener ") and row["what"] == "connected"
        assert row["channel_label"] is None
        assert all(r["bytes_out"] > 0 and r["since"] > 0 for r in table.values())


async def test_disconnect_tells_the_person_and_closes_their_connection_normally(
    secure: ServerProcess,
) -> None:
    server = secure
    async with (
        RelayClient.connect(server.ws_url, token=token("send")) as speaker,
        RelayClient.connect(server.ws_url, token=invite(server)) as listener,
    ):
        await speaker.start_sending(ToneTrack(440), channel="english")
        await listener.start_receiving("english")
        answer = admin(server, listener.connection_id, "disconnect")
        assert answer.status_code == 200, answer.text
        assert answer.json()["disconnected"] == [listener.connection_id]
        told = await listener.receive(p.Disconnected)
        assert told.reason == "disconnected"
        assert told.message == "The operator disconnected you. Reload this page to connect again."
        await listener.closed.wait()
        assert listener.close_code == 1000
        # Disconnect withdraws nothing: the same pass comes back in.
        assert listener.welcome.personal_token is not None
        async with RelayClient.connect(server.ws_url, token=listener.welcome.personal_token):
            pass
        assert not speaker.closed.is_set()
    assert server.find("admin_session_disconnected", by="operator")


async def test_remove_withdraws_the_pass_at_every_door_and_leaves_the_invite_to_others(
    secure: ServerProcess,
) -> None:
    """A phone that opened the entrance's invite is removed: its pass is refused by /ws,
    WHEP and Ogg with one plain sentence, its Ogg stream ends with it; another phone with the
    same invite plays on, and a new one still gets in."""
    server = secure
    shared = invite(server)
    async with (
        RelayClient.connect(server.ws_url, token=token("send")) as speaker,
        RelayClient.connect(server.ws_url, token=shared) as removed,
        RelayClient.connect(server.ws_url, token=shared) as neighbour,
        httpx.AsyncClient(timeout=10) as http,
    ):
        await speaker.start_sending(ToneTrack(440), channel="english")
        for phone in (removed, neighbour):
            await phone.start_receiving("english")
        held = removed.welcome.personal_token
        assert held is not None
        ogg = await http.send(
            http.build_request("GET", f"{server.status_url}/stream/english.ogg?token={held}"),
            stream=True,
        )
        assert ogg.status_code == 200
        table = rows(server)
        assert table[removed.connection_id]["token"]["invite_connections"] == 3  # (the Ogg too)
        # The device's two connections share one number: one person on the console.
        ogg_row = next(r for r in table.values() if r["via"] == "ogg")
        assert ogg_row["name"] == table[removed.connection_id]["name"]
        answer = admin(server, removed.connection_id, "remove")
        assert answer.status_code == 200, answer.text
        assert answer.json()["withdrawn"] == "pass"
        assert sorted(answer.json()["removed"]) == sorted(
            [removed.connection_id, ogg_row["connection_id"]]
        )
        told = await removed.receive(p.Disconnected)
        assert told.reason == "removed" and "removed you" in told.message
        await removed.closed.wait()
        assert removed.close_code == 1008
        with anyio.fail_after(5), contextlib.suppress(httpx.HTTPError):  # (cut: a reset)
            async for _ in ogg.aiter_bytes():
                pass
        await ogg.aclose()
        # Every door refuses the pass, in the same words.
        assert await ws_refusal(server, held) == (WITHDRAWN, 1008)
        with pytest.raises(WhipError) as whep:
            async with whep_play(f"{server.base_url}/whep/english", token=held):
                pass
        assert whep.value.status == 403 and WITHDRAWN in str(whep.value)
        again = await http.get(f"{server.status_url}/stream/english.ogg?token={held}")
        assert again.status_code == 403 and again.json()["message"] == WITHDRAWN
        # First-message authentication too.
        with pytest.raises(BaseExceptionGroup):
            async with RelayClient.connect(server.ws_url, token=held, token_in_url=False):
                pass
        # The neighbour plays on; the invite still lets a new phone in.
        await neighbour.wait_audio(neighbour.recorder.seconds + 1.0)
        async with RelayClient.connect(server.ws_url, token=shared) as newcomer:
            assert newcomer.welcome.personal_token is not None
    event = server.wait_event("admin_session_removed", removed=removed.connection_id)
    assert event["withdrawn"] == "pass" and event["by"] == "operator"


async def test_remove_with_the_invite_withdraws_it_for_everyone_who_came_with_it(
    secure: ServerProcess,
) -> None:
    server = secure
    shared = invite(server)
    async with (
        RelayClient.connect(server.ws_url, token=token("send")) as speaker,
        RelayClient.connect(server.ws_url, token=shared) as first,
        RelayClient.connect(server.ws_url, token=shared) as second,
        RelayClient.connect(server.ws_url, token=invite(server)) as other_invite,
    ):
        await speaker.start_sending(ToneTrack(440), channel="english")
        for phone in (first, second, other_invite):
            await phone.start_receiving("english")
        answer = admin(server, first.connection_id, "remove", invite=True)
        assert answer.status_code == 200, answer.text
        assert answer.json()["withdrawn"] == "invite"
        assert sorted(answer.json()["removed"]) == sorted(
            [first.connection_id, second.connection_id]
        )
        for phone in (first, second):
            assert (await phone.receive(p.Disconnected)).reason == "removed"
            await phone.closed.wait()
        assert await ws_refusal(server, shared) == (WITHDRAWN, 1008)
        # No page makes a code of it any more (the entrance display drops a refused code).
        code = server.get(f"/qr.svg?channel=english&invite={shared}")
        assert code.status_code == 400 and code.json()["message"] == f"invite: {WITHDRAWN}"
        assert second.welcome.personal_token is not None
        assert await ws_refusal(server, second.welcome.personal_token) == (WITHDRAWN, 1008)
        # Another invite of the same channel is not touched.
        await other_invite.wait_audio(other_invite.recorder.seconds + 1.0)
        assert not other_invite.closed.is_set()


async def test_remove_withdraws_a_speakers_own_token_and_frees_the_channel(
    secure: ServerProcess,
) -> None:
    server = secure
    marie = token("send", stream="english", name="Marie")
    async with (
        RelayClient.connect(server.ws_url, token=marie) as speaker,
        RelayClient.connect(server.ws_url, token=token("receive")) as listener,
    ):
        await speaker.start_sending(ToneTrack(440), channel="english")
        await listener.start_receiving("english")
        answer = admin(server, speaker.connection_id, "remove")
        assert answer.status_code == 200 and answer.json()["withdrawn"] == "token"
        assert (await speaker.receive(p.Disconnected)).reason == "removed"
        ended = await listener.receive(p.StreamEnded)
        assert ended.waiting
        assert await ws_refusal(server, marie) == (WITHDRAWN, 1008)
        # The channel is free for the next speaker.
        async with RelayClient.connect(server.ws_url, token=token("send")) as next_speaker:
            await next_speaker.start_sending(ToneTrack(660), channel="english")
            await listener.follow_channel()


async def test_bad_requests_get_a_plain_sentence_and_change_nothing(
    secure: ServerProcess, make_forward_server: Callable[..., ServerProcess]
) -> None:
    server = secure
    async with RelayClient.connect(server.ws_url, token=token("receive")) as listener:
        for action in ("disconnect", "remove", "kick"):
            answer = admin(server, "nobody-0000", action)
            assert answer.status_code == 404, answer.text
            assert answer.json()["message"].startswith("Nobody is connected as 'nobody-0000'")
        junk = server.post(
            f"/admin/sessions/{listener.connection_id}/disconnect",
            headers={**ADMIN, "Content-Type": "application/json"},
            content=b"[1, 2",
        )
        assert junk.status_code == 400 and "JSON object" in junk.json()["message"]
        for action in ("disconnect", "remove"):  # bytes that are no UTF-8: a 400, not a 500
            junk = server.post(
                f"/admin/sessions/{listener.connection_id}/{action}",
                headers={**ADMIN, "Content-Type": "application/json"},
                content=b"\xff\xfe{",
            )
            assert junk.status_code == 400 and "JSON object" in junk.json()["message"]
        for ttl in ("9" * 400 + "d", "99999999999999d", "367d"):  # past a year: refused
            made = server.post(
                "/admin/invites", headers=ADMIN, json={"channel": "english", "ttl": ttl}
            )
            assert made.status_code == 400 and "longer than a year" in made.json()["message"]
        not_invited = admin(server, listener.connection_id, "remove", invite=True)
        assert not_invited.status_code == 400
        assert "did not come in with an invite" in not_invited.json()["message"]
        for bad in ({"name": "x" * 41}, {"name": 7}):
            made = server.post("/admin/invites", headers=ADMIN, json={"channel": "english", **bad})
            assert made.status_code == 400 and "at most 40" in made.json()["message"]
        refused = server.post(
            f"/admin/sessions/{listener.connection_id}/remove",
            headers={"Authorization": f"Bearer {token('receive')}"},
        )
        assert refused.status_code == 403
        assert not listener.closed.is_set()  # none of that touched them
        await listener.request(p.Ping(), "pong")
    # Without auth.secret there is nothing to withdraw: said, and nobody is disconnected.
    open_server = make_forward_server({"channels": CHANNELS})
    async with RelayClient.connect(open_server.ws_url) as listener:
        answer = open_server.post(f"/admin/sessions/{listener.connection_id}/remove")
        assert answer.status_code == 409
        assert "runs without access tokens" in answer.json()["message"]
        await listener.request(p.Ping(), "pong")
    assert not [e for e in server.events if "exception" in e]


class OggListener:
    """A player on the plain-HTTP door (VLC, an `<audio>`): reads everything until cut."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.status: int | None = None
        self.received = 0
        self.ended = anyio.Event()

    async def run(self) -> None:
        try:
            async with (
                httpx.AsyncClient(timeout=httpx.Timeout(10, read=None)) as client,
                client.stream("GET", self.url) as response,
            ):
                self.status = response.status_code
                async for chunk in response.aiter_bytes():
                    self.received += len(chunk)
        except httpx.HTTPError:
            pass  # (cut: a reset, or a chunked body that never finished)
        finally:
            self.ended.set()

    async def wait_more(self, size: int = 2000, timeout: float = 10) -> None:
        """Until `size` more bytes of audio came: it still plays."""
        start = self.received
        with anyio.fail_after(timeout):
            while self.received < start + size:
                assert not self.ended.is_set(), "the Ogg response ended"
                await anyio.sleep(0.05)


async def new_row(server: ServerProcess, via: str, known: set[str]) -> dict[str, Any]:
    """The console's row of the connection that just came in by door `via`."""
    with anyio.fail_after(10):
        while True:
            fresh = [
                r
                for r in rows(server).values()
                if r["via"] == via and r["connection_id"] not in known
            ]
            if fresh:
                assert len(fresh) == 1, fresh
                known.add(fresh[0]["connection_id"])
                return fresh[0]
            await anyio.sleep(0.05)


async def wait_gone(server: ServerProcess, connection_id: str) -> None:
    with anyio.fail_after(10):
        while connection_id in rows(server):
            await anyio.sleep(0.05)


async def test_an_invite_sent_again_mid_session_keeps_the_pass_so_remove_ends_that_device_only(
    secure: ServerProcess,
) -> None:
    """A listener sends the shared invite again as a mid-session `auth`: the session keeps
    the pass it got in its `welcome` (the console lists the pass, not the invite), and
    Remove withdraws that pass alone. A session that came with a token of its own and
    switches to the invite gets a pass for itself alone: never the invite itself."""
    server = secure
    shared = invite(server)
    async with (
        RelayClient.connect(server.ws_url, token=token("send")) as speaker,
        RelayClient.connect(server.ws_url, token=shared) as phone,
        RelayClient.connect(server.ws_url, token=shared) as neighbour,
        RelayClient.connect(server.ws_url, token=token("receive", stream="english")) as desk,
    ):
        await speaker.start_sending(ToneTrack(440), channel="english")
        for listener in (phone, neighbour, desk):
            await listener.start_receiving("english")
        before = rows(server)[phone.connection_id]
        for client in (phone, desk):
            answer = await client.request(p.Auth(token=shared), "authenticated")
            assert answer == p.Authenticated(role="receive", stream="english")
        table = rows(server)
        row = table[phone.connection_id]
        assert row["token"]["kind"] == "pass" and not row["token"]["connection_only"]
        assert (row["name"], row["token"]["connections"]) == (before["name"], 1)
        assert table[desk.connection_id]["token"]["kind"] == "pass"
        assert table[desk.connection_id]["token"]["connection_only"]
        assert row["token"]["invite_connections"] == 3  # (phone, neighbour, desk)
        answer = admin(server, phone.connection_id, "remove")
        assert answer.status_code == 200, answer.text
        assert (answer.json()["withdrawn"], answer.json()["removed"]) == (
            "pass",
            [phone.connection_id],
        )
        assert (await phone.receive(p.Disconnected)).reason == "removed"
        await phone.closed.wait()
        assert phone.welcome.personal_token is not None
        assert await ws_refusal(server, phone.welcome.personal_token) == (WITHDRAWN, 1008)
        answer = admin(server, desk.connection_id, "remove")
        assert answer.status_code == 200, answer.text
        assert answer.json()["removed"] == [desk.connection_id]
        assert (await desk.receive(p.Disconnected)).reason == "removed"
        await desk.closed.wait()
        # The neighbour with the same invite plays on, and the invite still lets people in.
        await neighbour.wait_audio(neighbour.recorder.seconds + 1.0)
        assert not neighbour.closed.is_set()
        async with RelayClient.connect(server.ws_url, token=shared) as newcomer:
            assert newcomer.welcome.personal_token is not None


async def test_remove_of_an_ogg_or_whep_player_with_the_shared_invite_ends_that_connection_only(
    secure: ServerProcess,
) -> None:
    """Players that cannot keep a pass (an Ogg player, a WHEP player) came with the shared
    invite itself: each holds a pass of its own connection, so Remove ends that one, and
    another Ogg listener, the WHEP player and a page with the same invite play on. The
    player coming back with the invite gets in again (the console's dialog says so); the
    dialog's Withdraw the invite still ends everyone who came with it, on every door."""
    server = secure
    shared = invite(server)
    ogg_url = f"{server.status_url}/stream/english.ogg?token={shared}"
    known: set[str] = set()
    async with (
        RelayClient.connect(server.ws_url, token=token("send")) as speaker,
        RelayClient.connect(server.ws_url, token=shared) as page,
        anyio.create_task_group() as tg,
    ):
        await speaker.start_sending(ToneTrack(440), channel="english")
        await page.start_receiving("english")
        removed_ogg, other_ogg = OggListener(ogg_url), OggListener(ogg_url)
        tg.start_soon(removed_ogg.run)
        removed_row = await new_row(server, "ogg", known)
        tg.start_soon(other_ogg.run)
        other_row = await new_row(server, "ogg", known)
        async with whep_play(f"{server.base_url}/whep/english", token=shared) as player:
            whep_row = await new_row(server, "whep", known)
            with anyio.fail_after(10):
                await player.recorder.wait_seconds(1.0)
            for ogg in (removed_ogg, other_ogg):
                await ogg.wait_more()
                assert ogg.status == 200
            for row in (removed_row, other_row, whep_row):
                assert row["token"]["kind"] == "pass" and row["token"]["connection_only"]
                assert row["token"]["connections"] == 1
            assert rows(server)[whep_row["connection_id"]]["token"]["invite_connections"] == 4
            # Remove one Ogg listener: it alone ends.
            answer = admin(server, removed_row["connection_id"], "remove")
            assert answer.status_code == 200, answer.text
            assert answer.json()["withdrawn"] == "pass"
            assert answer.json()["removed"] == [removed_row["connection_id"]]
            with anyio.fail_after(5):
                await removed_ogg.ended.wait()
            await other_ogg.wait_more()
            await page.wait_audio(page.recorder.seconds + 0.5)
            await player.recorder.wait_seconds(player.recorder.seconds + 0.5)
            # Remove the WHEP player: it alone ends.
            answer = admin(server, whep_row["connection_id"], "remove")
            assert answer.status_code == 200, answer.text
            assert answer.json()["removed"] == [whep_row["connection_id"]]
            await wait_gone(server, whep_row["connection_id"])
            await anyio.sleep(0.5)  # (what was on its way)
            heard = player.recorder.seconds
            await other_ogg.wait_more()
            await page.wait_audio(page.recorder.seconds + 1.0)
            assert player.recorder.seconds - heard < 0.2, "the removed WHEP player still hears"
        assert not page.closed.is_set() and not other_ogg.ended.is_set()
        # Coming back with the invite gets in: the Remove was of that connection only.
        back = OggListener(ogg_url)
        tg.start_soon(back.run)
        back_row = await new_row(server, "ogg", known)
        await back.wait_more()
        # Withdraw the invite: everyone who came with it ends, on every door.
        answer = admin(server, other_row["connection_id"], "remove", invite=True)
        assert answer.status_code == 200, answer.text
        assert answer.json()["withdrawn"] == "invite"
        ended = {other_row["connection_id"], back_row["connection_id"], page.connection_id}
        assert set(answer.json()["removed"]) == ended
        assert (await page.receive(p.Disconnected)).reason == "removed"
        await page.closed.wait()
        with anyio.fail_after(5):
            await other_ogg.ended.wait()
            await back.ended.wait()
        async with httpx.AsyncClient(timeout=10) as http:
            refused = await http.get(ogg_url)
        assert refused.status_code == 403 and refused.json()["message"] == WITHDRAWN
        with pytest.raises(WhipError) as whep:
            async with whep_play(f"{server.base_url}/whep/english", token=shared):
                pass
        assert whep.value.status == 403 and WITHDRAWN in str(whep.value)
        assert not speaker.closed.is_set()
    event = server.wait_event("admin_session_removed", removed=whep_row["connection_id"])
    assert event["withdrawn"] == "pass" and event["connections"] == 1
