"""Opus in our SDP: answers and offers ask for in-band FEC, so a browser that sends to us adds
the redundancy a listener's decoder rebuilds a lost packet from (the first step against Wi-Fi
loss); codecs are cut to Opus where we choose."""

from __future__ import annotations

import pytest

from relay_app.client import RelayClient, ToneTrack
from relay_app.client.whip import whep_play
from relay_app.tools.testing import ServerProcess
from relay_app.webrtc.sdp import opus_only, opus_parameters, with_opus_fec

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


def test_an_offer_cut_to_opus_keeps_only_opus_lines() -> None:
    cut = opus_only(CHROMIUM_AUDIO)
    assert "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n" in cut
    assert "G722" not in cut and "PCMU" not in cut and "red/" not in cut
    assert "a=fmtp:111 minptime=10;useinbandfec=1;stereo=1" in cut


@pytest.mark.anyio
@pytest.mark.mode_independent  # SDP text: the relay mode does not change it
async def test_senders_and_players_are_answered_with_opus_fec(server: ServerProcess) -> None:
    async with RelayClient.connect(server.ws_url) as sender:
        await sender.start_sending(ToneTrack(440), channel="fec")
        assert sender.pc is not None
        answer = sender.pc.remoteDescription.sdp
        assert opus_parameters(answer).get("useinbandfec") == "1", answer
        async with whep_play(f"{server.base_url}/whep/fec") as player:
            answer = player.pc.remoteDescription.sdp
            assert opus_parameters(answer).get("useinbandfec") == "1", answer
