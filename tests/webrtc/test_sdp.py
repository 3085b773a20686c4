"""Opus in our SDP: answers and offers ask for in-band FEC, so a browser that sends to us adds
the redundancy a listener's decoder rebuilds a lost packet from, and carry RED over Opus where
the other side has it; codecs are cut to Opus (and RED) where we choose."""

from __future__ import annotations

import pytest

from relay_app.client import RelayClient, ToneTrack
from relay_app.client.whip import whep_play
from relay_app.tools.testing import ServerProcess
from relay_app.webrtc.sdp import (
    negotiated_red,
    opus_only,
    opus_parameters,
    red_payload_type,
    with_opus_fec,
    with_red,
)

CHROMIUM_AUDIO = (
    "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0\r\n"
    "a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1;stereo=1\r\n"
    "a=rtpmap:63 red/48000/2\r\na=fmtp:63 111/111\r\n"
    "a=rtpmap:9 G722/8000\r\na=rtpmap:0 PCMU/8000\r\n"
)


def test_an_answer_asks_for_fec_and_keeps_the_stereo_the_offer_stated() -> None:
    ours = (
        "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\n"
        "a=rtpmap:111 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\n"
    )
    params = opus_parameters(with_opus_fec(ours, remote=CHROMIUM_AUDIO))
    assert params == {"minptime": "10", "useinbandfec": "1", "stereo": "1"}
    assert opus_parameters(with_opus_fec(ours)) == {"minptime": "10", "useinbandfec": "1"}


def test_an_offer_cut_to_opus_keeps_only_opus_and_red_lines() -> None:
    cut = opus_only(CHROMIUM_AUDIO)
    assert "m=audio 9 UDP/TLS/RTP/SAVPF 111 63\r\n" in cut
    assert "G722" not in cut and "PCMU" not in cut
    assert "a=fmtp:111 minptime=10;useinbandfec=1;stereo=1" in cut
    assert "a=rtpmap:63 red/48000/2\r\na=fmtp:63 111/111" in cut


AIORTC_ANSWER = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n"
AIORTC_OFFER = (
    "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 96 0 8\r\na=rtpmap:96 opus/48000/2\r\n"
    "a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
)


def test_an_answer_takes_red_first_under_the_offers_number_only_when_offered() -> None:
    answer = with_red(AIORTC_ANSWER, remote=CHROMIUM_AUDIO)
    # First: a browser sends RED only when the answer prefers it to plain Opus.
    assert "m=audio 9 UDP/TLS/RTP/SAVPF 63 111\r\n" in answer
    assert "a=rtpmap:63 red/48000/2\r\na=fmtp:63 111/111\r\n" in answer
    assert negotiated_red(answer, CHROMIUM_AUDIO) == 63
    without = CHROMIUM_AUDIO.replace("a=rtpmap:63 red/48000/2\r\n", "")
    assert with_red(AIORTC_ANSWER, remote=without) == AIORTC_ANSWER
    assert negotiated_red(AIORTC_ANSWER, CHROMIUM_AUDIO) is None


def test_an_offer_adds_red_after_opus_and_it_counts_only_once_answered() -> None:
    offer = with_red(AIORTC_OFFER)
    assert "m=audio 9 UDP/TLS/RTP/SAVPF 96 0 8 63\r\n" in offer
    assert "a=rtpmap:8 PCMA/8000\r\na=rtpmap:63 red/48000/2\r\na=fmtp:63 96/96\r\n" in offer
    assert red_payload_type(offer) == 63
    answer = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 96 63\r\na=rtpmap:96 opus/48000/2\r\n"
    assert negotiated_red(offer, answer + "a=rtpmap:63 red/48000/2\r\n") == 63
    assert negotiated_red(offer, answer) is None


@pytest.mark.anyio
@pytest.mark.mode_independent  # SDP text: the relay mode does not change it
async def test_senders_and_players_are_answered_with_opus_fec_and_offered_red(
    server: ServerProcess,
) -> None:
    async with RelayClient.connect(server.ws_url) as sender:
        await sender.start_sending(ToneTrack(440), channel="fec")
        assert sender.pc is not None
        answer = sender.pc.remoteDescription.sdp
        assert opus_parameters(answer).get("useinbandfec") == "1", answer
        async with whep_play(f"{server.base_url}/whep/fec") as player:
            answer = player.pc.remoteDescription.sdp
            assert opus_parameters(answer).get("useinbandfec") == "1", answer
        async with RelayClient.connect(server.ws_url) as receiver:
            await receiver.start_receiving("fec")
            await receiver.wait_audio(0.5)
            assert receiver.pc is not None  # (aiortc answers without RED: plain Opus plays)
            assert red_payload_type(receiver.pc.remoteDescription.sdp) == 63
