"""Channels: named streams that keep their name when the sender reconnects."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from relay_app.client import (
    Recorder,
    RelayClient,
    ServerError,
    ToneTrack,
    dominant_frequency,
)
from relay_app.core import protocol as p
from relay_app.core.auth import mint
from relay_app.tools.testing import ServerProcess

from ..helpers import SECRET, serving

pytestmark = pytest.mark.anyio

CHANNELS = {
    "english": {"label": "English interpretation", "description": "Booth 1"},
    "french": {"label": "Interprétation française"},
}


def hears(client: RelayClient, hz: float) -> bool:
    recent = client.recorder.audio(1.0)
    return abs(dominant_frequency(recent, client.recorder.sample_rate) - hz) <= 10


async def test_receivers_keep_their_socket_and_hear_the_next_sender_on_the_channel(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server({"channels": CHANNELS})
    async with (
        RelayClient.connect(server.ws_url) as first,
        RelayClient.connect(server.ws_url) as second,
    ):
        receivers = (first, second)
        for hz in (440, 660):  # the interpreter's laptop drops off and reconnects
            async with RelayClient.connect(server.ws_url) as sender:
                assert await sender.start_sending(ToneTrack(hz), channel="english") == "english"
                for receiver in receivers:
                    if hz == 440:  # picked by name once; it plays on the same connection after
                        assert await receiver.start_receiving("english") == "english"
                    else:
                        assert await receiver.follow_channel(recorder=Recorder()) == "english"
                for receiver in receivers:
                    await receiver.wait_audio(1.5)
                    assert hears(receiver, hz)
                scrape = server.get("/metrics", headers={"Accept": "text/plain"}).text
                assert 'relay_stream_receivers{stream_id="english"} 2.0' in scrape
            for receiver in receivers:
                ended = await receiver.receive(p.StreamEnded)
                # ("track ended" or "sender left": whichever the server notices first)
                assert (ended.stream_id, ended.waiting) == ("english", True)
        server.wait_event("receiver_waiting", channel="english")
        # Waiting, they keep their connections for the channel's next sender.
        assert [r.pc.connectionState for r in receivers if r.pc] == ["connected", "connected"]


async def test_takeover_replaces_the_live_sender_and_its_receivers_follow(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server({"channels": CHANNELS})
    async with (
        RelayClient.connect(server.ws_url) as old,
        RelayClient.connect(server.ws_url) as new,
        RelayClient.connect(server.ws_url) as receiver,
    ):
        await old.start_sending(ToneTrack(440), channel="english")
        await receiver.start_receiving("english")
        with pytest.raises(ServerError, match=r"is busy.*takeover"):
            await new.start_sending(ToneTrack(660), channel="english")
        await new.send(p.Stop())
        await new.expect("stopped")
        assert await new.start_sending(ToneTrack(660), channel="english", takeover=True)
        ended = await old.receive(p.StreamEnded)
        assert (ended.stream_id, ended.reason) == ("english", "taken over")
        assert (await receiver.receive(p.StreamEnded)).reason == "taken over"
        await receiver.follow_channel()
        await receiver.wait_audio(1.5)
        assert hears(receiver, 660)
        # The old sender's session stays usable: it may send again, elsewhere.
        assert await old.start_sending(ToneTrack(440), channel="french") == "french"


@pytest.mark.mode_independent  # the listing: the relay mode does not change it
async def test_channels_are_listed_live_or_not_and_a_quiet_one_says_no_stream(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server({"channels": CHANNELS})
    async with RelayClient.connect(server.ws_url) as client:
        listing = await client.request(p.GetAvailableStreams(), "available_streams")
        assert isinstance(listing, p.AvailableStreams)
        assert [(c.channel, c.label, c.live) for c in listing.channels] == [
            ("english", "English interpretation", False),
            ("french", "Interprétation française", False),
        ]
        with pytest.raises(ServerError, match="No audio stream available"):
            await client.start_receiving("english")
        async with RelayClient.connect(server.ws_url) as sender:
            await sender.start_sending(ToneTrack(440), channel="french")
            status = server.get("/stream/status", status_port=True).json()
            assert status["active_streams"] == ["french"]
            assert status["streams"][0]["channel"] == "french"
            live = {c["channel"]: c["live"] for c in status["channels"]}
            assert live == {"english": False, "french": True}


@pytest.mark.mode_independent  # admission: the relay mode does not change it
async def test_a_busy_channel_refuses_a_second_sender(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server({"channels": CHANNELS})
    async with (
        RelayClient.connect(server.ws_url) as first,
        RelayClient.connect(server.ws_url) as second,
    ):
        await first.start_sending(ToneTrack(440), channel="english")
        with pytest.raises(ServerError, match="channel 'english' is busy"):
            await second.start_sending(ToneTrack(660), channel="english")
        # Another name, or none, is fine for the same client.
        assert await second.start_sending(ToneTrack(660), channel="french") == "french"


@pytest.mark.mode_independent  # admission: the relay mode does not change it
async def test_unlisted_channels_can_be_switched_off_and_reserved_names_are_refused(
    make_server: Callable[..., ServerProcess],
) -> None:
    config = {"channels": CHANNELS, "streams": {"allow_unlisted_channels": False}}
    server = make_server(config)
    async with RelayClient.connect(server.ws_url) as sender:
        with pytest.raises(ServerError, match="not configured"):
            await sender.start_sending(ToneTrack(440), channel="german")
        with pytest.raises(ServerError, match="reserved"):
            await sender.start_sending(ToneTrack(440), channel="stream_abc")
        # The server checks names too (this client would refuse to build the message).
        await sender.send({"type": "start_sending", "sdp": "v=0", "channel": "no spaces"})
        with pytest.raises(ServerError, match="channel"):
            await sender.expect("answer")
        unnamed = await sender.start_sending(ToneTrack(440))
        assert unnamed.startswith("stream_")


async def test_a_token_scoped_to_a_channel_works_before_it_is_live_and_only_for_it(
    tmp_path: Path,
) -> None:
    metrics = {"Authorization": f"Bearer {mint(SECRET, 'metrics', 600)}"}
    config = {"channels": CHANNELS, "auth": {"secret": SECRET}}
    for server in serving(tmp_path, config, metrics):
        await _scoped_receiver(server)


async def _scoped_receiver(server: ServerProcess) -> None:
    english = mint(SECRET, "receive", 600, stream="english")  # minted before anyone sends
    async with RelayClient.connect(server.ws_url, token=english) as receiver:
        listing = await receiver.request(p.GetAvailableStreams(), "available_streams")
        assert isinstance(listing, p.AvailableStreams)
        assert [c.channel for c in listing.channels] == ["english"]
        async with RelayClient.connect(server.ws_url, token=mint(SECRET, "send", 600)) as sender:
            await sender.start_sending(ToneTrack(440), channel="english")
            assert await receiver.start_receiving() == "english"
            await receiver.wait_audio(1.0)
            await receiver.send(p.Stop())
            await receiver.expect("stopped")
            with pytest.raises(ServerError, match="may not receive french"):
                await receiver.start_receiving("french")


async def test_takeover_needs_a_send_token_scoped_to_the_channel(tmp_path: Path) -> None:
    config = {"channels": CHANNELS, "auth": {"secret": SECRET}}
    metrics = {"Authorization": f"Bearer {mint(SECRET, 'metrics', 600)}"}
    for server in serving(tmp_path, config, metrics):
        unscoped, english = mint(SECRET, "send", 600), mint(SECRET, "send", 600, stream="english")
        async with RelayClient.connect(server.ws_url, token=unscoped) as first:
            await first.start_sending(ToneTrack(440), channel="english")
            async with RelayClient.connect(server.ws_url, token=unscoped) as intruder:
                with pytest.raises(ServerError, match="a send token scoped to the channel"):
                    await intruder.start_sending(ToneTrack(660), channel="english", takeover=True)
            async with RelayClient.connect(server.ws_url, token=english) as elsewhere:
                with pytest.raises(ServerError, match="may only send on channel 'english'"):
                    await elsewhere.start_sending(ToneTrack(660), channel="french")
            async with RelayClient.connect(server.ws_url, token=english) as booth:
                await booth.start_sending(ToneTrack(660), channel="english", takeover=True)
                assert (await first.receive(p.StreamEnded)).reason == "taken over"
