"""The speakers of an event with auth on: a speaker who vanishes, a takeover, the booth.

A laptop that freezes or leaves the Wi-Fi says no goodbye: its packets stop. The channel's
listeners are told within 2 s and the channel is free for the next speaker after
streams.speaker_lost_after (5 s by default; LOST_AFTER here). A speaker takes a channel over,
or waits for their turn and is handed it (by the live speaker or the operator): make before
break, every message in names and labels. Real server, real aiortc peers; the pages are
tested in tests/browser/.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import pytest

from relay_app.client import RelayClient, ToneTrack, dominant_frequency
from relay_app.client.relay_client import ServerError
from relay_app.core import protocol as p
from relay_app.tools.testing import REPO, ServerProcess

from ..helpers import SECRET, assert_no_leaks, serving, token
from .test_handover import Arrivals

pytestmark = pytest.mark.anyio

CHANNELS = {
    "english": {"label": "English"},
    "french": {"label": "Français"},
    "floor": {"label": "Floor"},
}
ADMIN = {"Authorization": f"Bearer {token('admin')}"}
# streams.speaker_lost_after in these tests: shorter than the default, still well after the
# listeners' notice (1 s), so that a replacement is refused in between.
LOST_AFTER = 3.0


@pytest.fixture(scope="module")
def booth_server(tmp_path_factory: pytest.TempPathFactory, relay_mode: str) -> Iterator[Any]:
    config = {
        "relay": {"mode": relay_mode},
        "auth": {"secret": SECRET},
        "channels": CHANNELS,
        # (an event's channels, no others)
        "streams": {"allow_unlisted_channels": False, "speaker_lost_after": LOST_AFTER},
    }
    metrics = {"Authorization": f"Bearer {token('metrics')}"}
    yield from serving(tmp_path_factory.mktemp("booth"), config, metrics)


@pytest.fixture
def server(booth_server: ServerProcess) -> Iterator[ServerProcess]:
    yield booth_server
    assert_no_leaks(booth_server)


def speaker(name: str, channel: str = "english") -> str:
    return token("send", stream=channel, name=name)


async def notice(client: RelayClient, kind: type[Any], timeout: float = 10) -> Any:
    """The first notice of `kind` (speaker_lost, speaker_back, booth) the client got."""
    with anyio.fail_after(timeout):
        while True:
            found = [n for n in client.notices if isinstance(n, kind)]
            if found:
                client.notices.remove(found[0])
                return found[0]
            await anyio.sleep(0.02)


def channel_row(server: ServerProcess, channel: str) -> dict[str, Any]:
    rows = server.get("/admin/channels", headers=ADMIN).json()["channels"]
    return next(row for row in rows if row["channel"] == channel)


def tone_of(client: RelayClient) -> float:
    return dominant_frequency(client.recorder.audio(1.0), client.recorder.sample_rate)


@pytest.mark.serial
async def test_a_speaker_whose_packets_stop_is_announced_at_once_and_freed_in_time(
    server: ServerProcess,
) -> None:
    listen = token("receive", stream="english")
    async with (
        RelayClient.connect(server.ws_url, token=speaker("Marie")) as marie,
        RelayClient.connect(server.ws_url, token=listen) as listener,
    ):
        tone = ToneTrack(440)
        await marie.start_sending(tone, channel="english")
        await listener.start_receiving("english")
        await listener.wait_audio(1.0)
        row = channel_row(server, "english")
        assert (row["speaking"], row["speaker_lost"], row["silent_since"]) == ("Marie", False, None)
        tone.pause()  # the laptop freezes: no packet, no goodbye; the WebSocket stays open
        stopped = time.monotonic()
        lost = await notice(listener, p.SpeakerLost)
        told_after = time.monotonic() - stopped
        assert told_after <= 2.0, told_after
        assert lost.label == "English" and lost.since <= time.time() - 0.9
        assert lost.message.startswith("The speaker's connection dropped.")
        row = channel_row(server, "english")
        assert row["live"] and row["speaker_lost"] and row["level_dbfs"] is None
        assert 0.9 <= time.time() - row["silent_since"] <= 3
        # A replacement speaker is told who is (still) there, in names and labels.
        async with RelayClient.connect(server.ws_url, token=speaker("Paul")) as paul:
            with pytest.raises(ServerError, match=r"^Marie is already speaking on English"):
                await paul.start_sending(ToneTrack(660), channel="english")
            ended = await listener.receive(p.StreamEnded, timeout=10)
            freed_after = time.monotonic() - stopped
            print(f"speaker_lost after {told_after:.2f} s, freed after {freed_after:.2f} s")
            assert LOST_AFTER - 0.5 <= freed_after <= LOST_AFTER + 1.0, freed_after
            assert (ended.reason, ended.waiting) == ("speaker connection lost", True)
            assert ended.message is not None and "connection dropped" in ended.message
            told = await marie.receive(p.StreamEnded)
            assert told.message is not None and "freed for the next speaker" in told.message
            # Free: the next speaker needs no takeover, and the listener follows on its
            # connection, as on any handover.
            await paul.start_sending(ToneTrack(660), channel="english")
            started = await listener.receive(p.StreamStarted)
            assert started.label == "English"
            await anyio.sleep(1.5)
            assert abs(tone_of(listener) - 660) <= 10
            assert sum(isinstance(m, p.Offer) for m in listener.messages) == 1
    server.wait_event("speaker_lost_stream_ended", stream_id="english")


@pytest.mark.serial
async def test_a_speaker_back_within_the_setting_keeps_the_channel(server: ServerProcess) -> None:
    async with (
        RelayClient.connect(server.ws_url, token=speaker("Marie")) as marie,
        RelayClient.connect(server.ws_url, token=token("receive")) as listener,
    ):
        tone = ToneTrack(440)
        await marie.start_sending(tone, channel="english")
        await listener.start_receiving("english")
        await listener.wait_audio(1.0)
        tone.pause()
        await notice(listener, p.SpeakerLost)
        tone.resume()  # the Wi-Fi comes back before the channel is given away
        back = await notice(listener, p.SpeakerBack)
        assert back.label == "English"
        assert not channel_row(server, "english")["speaker_lost"]
        await anyio.sleep(LOST_AFTER + 1.0)
        assert not [m for m in listener.messages if isinstance(m, p.StreamEnded)]
        assert abs(tone_of(listener) - 440) <= 10


@contextmanager
def whip_publisher(url: str, bearer: str) -> Iterator[subprocess.Popen[str]]:
    """A WHIP publisher (relay_app/client/whip.py, a 440 Hz tone) in a process of its own,
    publishing when the block starts; killed (and first continued) when it ends."""
    script = (
        "import anyio, sys\n"
        "from relay_app.client import ToneTrack\n"
        "from relay_app.client.whip import whip_publish\n"
        "from relay_app.webrtc.ice import use_host_addresses\n"
        "use_host_addresses(['127.0.0.1'])\n"
        "async def main():\n"
        "    async with whip_publish(sys.argv[1], ToneTrack(440), sys.argv[2]):\n"
        "        print('publishing', flush=True)\n"
        "        await anyio.sleep(120)\n"
        "anyio.run(main)\n"
    )
    command = [sys.executable, "-c", script, url, bearer]
    publisher = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert publisher.stdout is not None and publisher.stdout.readline() == "publishing\n"
        yield publisher
    finally:
        publisher.send_signal(signal.SIGCONT)
        publisher.kill()
        publisher.wait(10)


@pytest.mark.serial
@pytest.mark.mode_independent  # the speaker's side and the notices (audio: the test above)
async def test_a_vanished_whip_publisher_frees_its_channel(server: ServerProcess) -> None:
    """A WHIP publisher in its own process, stopped with SIGSTOP: its listeners are told and
    the channel is freed as for a WebSocket speaker."""
    url = f"{server.base_url}/whip/english"
    with whip_publisher(url, speaker("OBS in the booth")) as publisher:
        async with RelayClient.connect(server.ws_url, token=token("receive")) as listener:
            await listener.start_receiving("english")
            await listener.wait_audio(1.0)
            publisher.send_signal(signal.SIGSTOP)
            stopped = time.monotonic()
            await notice(listener, p.SpeakerLost)
            assert time.monotonic() - stopped <= 2.0
            ended = await listener.receive(p.StreamEnded)
            assert ended.reason == "speaker connection lost" and ended.waiting
            assert time.monotonic() - stopped <= LOST_AFTER + 1.0
            async with RelayClient.connect(server.ws_url, token=speaker("Paul")) as paul:
                await paul.start_sending(ToneTrack(660), channel="english")
                await listener.receive(p.StreamStarted)
        server.wait_event("connection_cleanup", via="whip")


@pytest.mark.mode_independent  # the messages: the relay mode does not change it
async def test_a_takeover_names_who_took_over_and_refuses_a_token_not_scoped_to_it(
    server: ServerProcess,
) -> None:
    async with (
        RelayClient.connect(server.ws_url, token=speaker("Marie")) as marie,
        RelayClient.connect(server.ws_url, token=token("receive")) as listener,
    ):
        await marie.start_sending(ToneTrack(440), channel="english")
        await listener.start_receiving("english")
        await listener.wait_audio(1.0)
        # A speaker's token for all channels may speak, not take one over: a sentence, the
        # session stays, the live speaker plays on.
        async with RelayClient.connect(server.ws_url, token=token("send", name="Eve")) as eve:
            with pytest.raises(ServerError) as refused:
                await eve.start_sending(ToneTrack(660), channel="english", takeover=True)
            assert refused.value.message.startswith("Taking over English needs an invitation")
            assert (await eve.request(p.Ping(), "pong")).type == "pong"
        assert channel_row(server, "english")["speaking"] == "Marie"
        assert not [m for m in marie.messages if isinstance(m, p.StreamEnded)]
        async with RelayClient.connect(server.ws_url, token=speaker("Paul")) as paul:
            await paul.start_sending(ToneTrack(660), channel="english", takeover=True)
            ended = await marie.receive(p.StreamEnded)
            assert (ended.reason, ended.message, ended.by) == (
                "taken over",
                "Paul took over English.",
                "Paul",
            )
            moved = await listener.receive(p.StreamEnded)
            assert moved.waiting and moved.message == "Paul took over English."
            assert (await listener.receive(p.StreamStarted)).label == "English"


@pytest.mark.serial
async def test_a_booth_partner_waits_hears_the_channel_and_is_handed_it_in_one_tap(
    server: ServerProcess,
) -> None:
    async with (
        RelayClient.connect(server.ws_url, token=speaker("Marie")) as marie,
        RelayClient.connect(server.ws_url, token=token("receive")) as listener,
        RelayClient.connect(server.ws_url, token=speaker("Paul")) as paul,
        RelayClient.connect(server.ws_url, token=speaker("Paul")) as pauls_ear,
    ):
        await marie.start_sending(ToneTrack(440), channel="english")
        assert (await notice(marie, p.Booth)).speaking == "Marie"
        await listener.start_receiving("english")
        await paul.send(p.WaitToSpeak(channel="english"))
        booth = await notice(paul, p.Booth)
        assert (booth.label, booth.speaking, booth.waiting) == ("English", "Marie", ["Paul"])
        assert (await notice(marie, p.Booth)).waiting == ["Paul"]
        assert channel_row(server, "english")["waiting"][0]["name"] == "Paul"
        rows = server.get("/admin/sessions", headers=ADMIN).json()["sessions"]
        assert next(r for r in rows if r["connection_id"] == paul.connection_id)["role"] == (
            "waiting"
        )
        # The partner hears the active interpreter (their Speak page's second session).
        await pauls_ear.start_receiving("english")
        await pauls_ear.wait_audio(1.0)
        assert abs(tone_of(pauls_ear) - 440) <= 10
        arrivals = Arrivals(listener.pc)
        await listener.wait_audio(1.0)
        await marie.send(p.HandOver())  # one tap
        turn = await paul.receive(p.YourTurn)
        assert (turn.channel, turn.label, turn.by) == ("english", "English", "Marie")
        moment = time.monotonic()
        await paul.start_sending(ToneTrack(660), channel="english", takeover=True)
        ended = await marie.receive(p.StreamEnded)
        assert ended.message == "Paul took over English." and ended.by == "Paul"
        assert (await listener.receive(p.StreamEnded)).message == "Paul took over English."
        await listener.receive(p.StreamStarted)
        await anyio.sleep(1.5)
        assert abs(tone_of(listener) - 660) <= 10
        seconds, sequence_step, _ = arrivals.gap_after(moment)
        print(f"hand-over gap at the listener: {seconds * 1000:.0f} ms")
        assert seconds <= 0.1 and sequence_step == 1
        booth = await notice(paul, p.Booth)
        while booth.speaking != "Paul" or booth.waiting:
            booth = await notice(paul, p.Booth)


@pytest.mark.mode_independent  # the messages: the relay mode does not change it
async def test_the_operator_hands_over_to_a_waiting_speaker_and_bad_requests_change_nothing(
    server: ServerProcess,
) -> None:
    async with (
        RelayClient.connect(server.ws_url, token=speaker("Marie")) as marie,
        RelayClient.connect(server.ws_url, token=speaker("Paul")) as paul,
    ):
        await marie.start_sending(ToneTrack(440), channel="english")
        handover = "/admin/channels/english/handover"
        nobody = server.post(handover, headers=ADMIN, json={})
        assert nobody.status_code == 409
        assert nobody.json()["message"] == "Nobody is waiting to speak on English."
        await paul.send(p.WaitToSpeak(channel="english"))
        await notice(paul, p.Booth)
        unknown = server.post("/admin/channels/klingon/handover", headers=ADMIN, json={})
        assert unknown.status_code == 404
        assert unknown.json()["message"] == "There is no channel called 'klingon'."
        stranger = server.post(handover, headers=ADMIN, json={"to": marie.connection_id})
        assert (
            stranger.status_code == 409
            and "not waiting to speak on English" in (stranger.json()["message"])
        )
        listener_token = server.post(
            handover, headers={"Authorization": f"Bearer {token('receive')}"}, json={}
        )
        assert listener_token.status_code == 403
        assert channel_row(server, "english")["speaking"] == "Marie"
        done = server.post(handover, headers=ADMIN, json={"to": paul.connection_id})
        assert done.status_code == 200 and done.json()["name"] == "Paul"
        turn = await paul.receive(p.YourTurn)
        assert turn.by == "the operator"
        await paul.start_sending(ToneTrack(660), channel="english", takeover=True)
        assert (await marie.receive(p.StreamEnded)).message == "Paul took over English."
    server.wait_event("admin_channel_handed_over", channel="english")


@pytest.mark.mode_independent  # the messages: the relay mode does not change it
async def test_waiting_and_handing_over_refuse_bad_requests_in_a_sentence(
    server: ServerProcess,
) -> None:
    async with RelayClient.connect(server.ws_url, token=token("send", name="Eve")) as eve:
        with pytest.raises(ServerError, match=r"^Taking over English needs an invitation"):
            await eve.request(p.WaitToSpeak(channel="english"), "booth")
        with pytest.raises(ServerError, match="not speaking on a channel"):
            await eve.request(p.HandOver(), "your_turn")
        with pytest.raises(ServerError, match="is not configured"):
            await eve.request({"type": "wait_to_speak", "channel": "klingon"}, "booth")
        with pytest.raises(ServerError, match="invalid 'wait_to_speak' message"):
            await eve.request({"type": "wait_to_speak", "channel": "../x"}, "booth")
        assert (await eve.request(p.Ping(), "pong")).type == "pong"  # the session stays
    async with RelayClient.connect(server.ws_url, token=speaker("Marie")) as marie:
        await marie.start_sending(ToneTrack(440), channel="english")
        with pytest.raises(ServerError, match=r"^Nobody is waiting to speak on English"):
            await marie.request(p.HandOver(), "your_turn")
        with pytest.raises(ServerError, match="this connection is sender"):
            await marie.request(p.WaitToSpeak(channel="english"), "booth")
        assert channel_row(server, "english")["speaking"] == "Marie"


@pytest.mark.mode_independent
async def test_a_speakers_token_hears_the_configured_channels_for_the_booth(
    server: ServerProcess,
) -> None:
    async with (
        RelayClient.connect(server.ws_url, token=speaker("Floor", "floor")) as floor,
        RelayClient.connect(server.ws_url, token=speaker("Marie", "french")) as ear,
    ):
        await floor.start_sending(ToneTrack(880), channel="floor")
        listing = await ear.request(p.GetAvailableStreams(), "available_streams")
        assert isinstance(listing, p.AvailableStreams)
        assert [c.channel for c in listing.channels] == ["english", "floor", "french"]
        await ear.start_receiving("floor")  # the return channel, while speaking on french
        await ear.wait_audio(1.0)
        assert abs(tone_of(ear) - 880) <= 10
        await ear.send(p.Stop())
        await ear.expect("stopped")
    async with RelayClient.connect(server.ws_url, token=token("send", name="Eve")) as eve:
        unnamed = await eve.start_sending(ToneTrack(440))
        async with RelayClient.connect(server.ws_url, token=speaker("Marie", "french")) as ear:
            with pytest.raises(ServerError, match="may not receive"):  # (not a channel)
                await ear.start_receiving(unnamed)
