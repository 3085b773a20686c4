"""Channels: named streams that keep their name when the sender reconnects (issue 15, part 1)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from relay_app import protocol as p
from relay_app.auth import mint
from relay_app.client import RelayClient, ServerError, ToneTrack, dominant_frequency
from relay_app.testing import ServerProcess

from .conftest import serving

pytestmark = pytest.mark.anyio

CHANNELS = {
    "english": {"label": "English interpretation", "description": "Booth 1"},
    "french": {"label": "Interprétation française"},
}
SECRET = "s3cret-for-channel-tests-0123456789abcdef"


def hears(client: RelayClient, hz: float) -> bool:
    recent = client.recorder.audio(1.0)
    return abs(dominant_frequency(recent, client.recorder.sample_rate) - hz) <= 10


async def test_receivers_pick_a_channel_by_name_and_hear_the_next_sender_on_it(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server({"channels": CHANNELS})
    async with RelayClient.connect(server.ws_url) as receiver:
        for hz in (440, 660):  # the interpreter's laptop reconnects
            async with RelayClient.connect(server.ws_url) as sender:
                assert await sender.start_sending(ToneTrack(hz), channel="english") == "english"
                assert await receiver.start_receiving("english") == "english"
                await receiver.wait_audio(1.5)
                assert hears(receiver, hz)
                scrape = server.get("/metrics", headers={"Accept": "text/plain"}).text
                assert 'relay_stream_receivers{stream_id="english"} 1.0' in scrape
            ended = await receiver.receive(p.StreamEnded)
            assert ended.stream_id == "english"  # same socket, same name: ask again
        server.wait_event("stream_stored", stream_id="english")


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
