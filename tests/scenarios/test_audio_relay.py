"""Audio scenarios from the troubleshooting guide, with real aiortc peers and FFT checks."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest

from relay_app.audio.levels import rms_dbfs
from relay_app.client import RelayClient, ServerError, ToneTrack, dominant_frequency
from relay_app.core import protocol as p
from relay_app.tools.testing import ServerProcess

pytestmark = pytest.mark.anyio

LISTEN_SECONDS = 2.0


async def assert_hears(
    client: RelayClient, frequency: float, seconds: float = LISTEN_SECONDS
) -> None:
    """`seconds` of received audio, not silent, its FFT peak within 10 Hz of `frequency`."""
    await client.wait_audio(seconds + 0.5)
    audio = client.recorder.audio(seconds)
    assert len(audio) >= seconds * client.recorder.sample_rate * 0.99
    assert rms_dbfs(audio) > -30, f"received audio is (nearly) silent: {rms_dbfs(audio):.1f} dBFS"
    peak = dominant_frequency(audio, client.recorder.sample_rate)
    assert abs(peak - frequency) <= 10, f"heard {peak:.1f} Hz, expected {frequency} Hz"


async def test_sender_first_then_three_receivers_hear_tone(server: ServerProcess) -> None:
    async with RelayClient.connect(server.ws_url) as sender:
        stream_id = await sender.start_sending(ToneTrack(440))
        assert stream_id == f"stream_{sender.connection_id}"
        assert server.get("/stream/status", status_port=True).json()["active_streams"] == [
            stream_id
        ]

        async def listen() -> None:
            async with RelayClient.connect(server.ws_url) as receiver:
                assert await receiver.start_receiving() == stream_id
                await assert_hears(receiver, 440)

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(listen)

    # The guide: one relay.subscribe per receiver ("Should see TWO subscribe calls").
    assert len(server.find("relay_subscribe", stream_id=stream_id)) == 3
    sender_id = sender.connection_id
    for event in ("sender_setup", "sender_track_received"):
        server.wait_event(event, connection_id=sender_id)
    for event in ("stream_stored", "visualization_started"):
        server.wait_event(event, stream_id=stream_id)
    assert server.find("receiver_offer_sent", stream_id=stream_id)
    assert server.find("ice_connection_state", role="receiver", state="connected")


async def test_receiver_first_gets_no_stream_then_retry_hears_tone(server: ServerProcess) -> None:
    async with RelayClient.connect(server.ws_url) as receiver:
        await receiver.send({"type": "start_receiving"})
        error = await receiver.expect("error")
        assert error == p.Error(message="No audio stream available")
        server.wait_event("no_stream_for_receiver", connection_id=receiver.connection_id)

        async with RelayClient.connect(server.ws_url) as sender:
            await sender.start_sending(ToneTrack(440))
            # The same socket retries, as the guide's auto-retry snippet does.
            await receiver.start_receiving()
            await assert_hears(receiver, 440)


async def test_two_senders_receivers_choose_stream(server: ServerProcess) -> None:
    async with (
        RelayClient.connect(server.ws_url) as low,
        RelayClient.connect(server.ws_url) as high,
    ):
        low_id = await low.start_sending(ToneTrack(440))
        high_id = await high.start_sending(ToneTrack(880))
        async with RelayClient.connect(server.ws_url) as lister:
            listed = await lister.request({"type": "get_available_streams"}, "available_streams")
            assert isinstance(listed, p.AvailableStreams)
            assert {s.stream_id for s in listed.streams} == {low_id, high_id}

        async def listen(stream_id: str, frequency: float) -> None:
            async with RelayClient.connect(server.ws_url) as receiver:
                assert await receiver.start_receiving(stream_id) == stream_id
                await assert_hears(receiver, frequency)

        async with anyio.create_task_group() as tg:
            tg.start_soon(listen, low_id, 440)
            tg.start_soon(listen, high_id, 880)
            tg.start_soon(listen, high_id, 880)


async def test_sender_leaves_receivers_get_stream_ended(server: ServerProcess) -> None:
    async with (
        RelayClient.connect(server.ws_url) as receiver_a,
        RelayClient.connect(server.ws_url) as receiver_b,
    ):
        async with RelayClient.connect(server.ws_url) as sender:
            stream_id = await sender.start_sending(ToneTrack(440))
            await receiver_a.start_receiving()
            await receiver_b.start_receiving()
            await receiver_a.wait_audio(0.5)
            await receiver_b.wait_audio(0.5)
        # The sender's WebSocket is gone: both receivers are told.
        for receiver in (receiver_a, receiver_b):
            ended = await receiver.expect("stream_ended")
            assert isinstance(ended, p.StreamEnded) and ended.stream_id == stream_id
            await receiver.close_media()
        with anyio.fail_after(2):
            while server.get("/stream/status", status_port=True).json()["active_streams"]:
                await anyio.sleep(0.05)
        assert server.metrics()["active_streams"] == 0
        # A new receiver gets the no-stream error, never a dead track.
        async with RelayClient.connect(server.ws_url) as late:
            with pytest.raises(ServerError, match=r"^No audio stream available$"):
                await late.start_receiving()
            with pytest.raises(ServerError, match="No audio stream available"):
                await late.start_receiving(stream_id)
    server.wait_event("connection_cleanup", connection_id=sender.connection_id)
    server.wait_event("track_ended", stream_id=stream_id)


async def test_audio_goes_on_across_sequence_and_timestamp_wraps_and_a_new_ssrc(
    server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sender's RTP sequence (16 bit) and timestamp (32 bit) wrap while a receiver that
    joined late listens, then the sender switches SSRC (as a browser may on renegotiation):
    the receiver hears the tone before, across and after each."""
    import aiortc.rtcrtpsender as rtcrtpsender

    # Only this test process's (client) senders: the sequence wraps ~1.4 s after the first
    # packet, the timestamp 1.5 s after (48 kHz); the server picks its own numbers.
    monkeypatch.setattr(rtcrtpsender, "random_sequence_number", lambda: 0xFFFF - 70)
    monkeypatch.setattr(rtcrtpsender, "random32", lambda: 0x1_0000_0000 - 48000 * 3 // 2)
    async with RelayClient.connect(server.ws_url) as sender:
        await sender.start_sending(ToneTrack(440))
        await anyio.sleep(0.5)
        async with RelayClient.connect(server.ws_url) as receiver:
            await receiver.start_receiving()  # a late joiner, before either wrap
            await assert_hears(receiver, 440, seconds=2.0)  # spans both wraps
            assert sender.pc is not None
            rtp_sender = sender.pc.getSenders()[0]
            rtp_sender._ssrc = 0x12345678  # a new SSRC mid-stream
            before = receiver.recorder.seconds
            await receiver.wait_audio(before + 1.5)
            await assert_hears(receiver, 440, seconds=1.0)


async def test_stop_ends_media_but_keeps_the_socket(server: ServerProcess) -> None:
    async with RelayClient.connect(server.ws_url) as sender:
        await sender.start_sending(ToneTrack(440))
        await sender.send({"type": "stop"})
        await sender.expect("stopped")
        await sender.close_media()
        assert server.metrics()["active_streams"] == 0
        assert (await sender.request(p.Ping(), "pong")) == p.Pong()
        # The same socket can start again.
        await sender.start_sending(ToneTrack(440))
        assert server.metrics()["active_streams"] == 1


async def test_a_receiver_that_asks_for_levels_gets_them_and_others_do_not(
    server: ServerProcess,
) -> None:
    async with RelayClient.connect(server.ws_url) as sender:
        stream_id = await sender.start_sending(ToneTrack(440, amplitude=0.5))
        async with (
            RelayClient.connect(server.ws_url) as receiver,
            RelayClient.connect(server.ws_url) as quiet,
        ):
            await receiver.start_receiving(visualization=True)
            await quiet.start_receiving()
            await receiver.wait_audio(1.0)
            await quiet.wait_audio(1.0)
            assert not quiet.visualizations  # levels are opt-in for receivers
            with anyio.fail_after(5):
                while len(receiver.visualizations) < 3:
                    await anyio.sleep(0.05)
        level = receiver.visualizations[-1]
        assert level.stream_id == stream_id
        # A 0.5-amplitude sine: peak -6 dBFS, RMS -9 dBFS; upmixing mono to stereo on the way
        # (-3 dB per channel) and Opus move that a little.
        assert -16 < level.rms < -6 and -12 < level.peak < -3
        assert level.rms < level.peak
        assert sender.visualizations


@pytest.fixture
def stale_server(make_server: Callable[..., ServerProcess]) -> ServerProcess:
    return make_server({"streams": {"cleanup_interval": 0.5, "stale_after": 1.5}})


async def test_sender_media_stops_stream_is_swept_as_stale(stale_server: ServerProcess) -> None:
    server = stale_server
    async with RelayClient.connect(server.ws_url) as sender:
        tone = ToneTrack(440)
        stream_id = await sender.start_sending(tone)
        async with RelayClient.connect(server.ws_url) as receiver:
            await receiver.start_receiving()
            await receiver.wait_audio(0.5)
            tone.pause()  # media stops; the WebSocket stays open
            with anyio.fail_after(1.5 + 0.5 + 3):
                ended = await receiver.expect("stream_ended", timeout=10)
            assert isinstance(ended, p.StreamEnded) and ended.stream_id == stream_id
            assert "no audio" in ended.reason
            told = await sender.expect("stream_ended")
            assert isinstance(told, p.StreamEnded) and told.stream_id == stream_id
        event = server.wait_event("stale_stream_cleanup", stream_id=stream_id)
        assert event["message"] == f"Cleaning up stale stream {stream_id}"
        assert server.get("/stream/status", status_port=True).json()["active_streams"] == []
        await sender.close_media()
