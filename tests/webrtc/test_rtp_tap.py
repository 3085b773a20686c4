"""rtp_tap.py: the tap's packetizer, and what forward and transcode mode send (the hook into
aiortc it rides on is checked in tests/internals/test_internals.py)."""

from __future__ import annotations

import pytest
from aiortc.rtp import RtpPacket

from relay_app.client import RelayClient, ToneTrack
from relay_app.tools.testing import ServerProcess
from relay_app.webrtc.rtp_tap import OpusPacketizer

pytestmark = pytest.mark.anyio


def test_packetizer_unwraps_timestamps_and_tolerates_reordering() -> None:
    packetizer = OpusPacketizer()
    pts = []
    for timestamp in (0xFFFFF000, 0xFFFFF3C0, 0x00000380, 0xFFFFF780 + 0, 0x00000740):
        rtp = RtpPacket(payload_type=111, timestamp=timestamp, payload=b"\xfc\x01")
        pts.append(packetizer.packet(rtp).pts)
    assert pts == [0, 960, 0x1380, 0x780, 0x1740]


async def test_forward_mode_sends_the_senders_opus_and_transcode_reencodes(
    server: ServerProcess,
) -> None:
    async with RelayClient.connect(server.ws_url) as sender:
        await sender.start_sending(ToneTrack(440))
        async with RelayClient.connect(server.ws_url) as receiver:
            await receiver.start_receiving()
            await receiver.wait_audio(1.0)
            relay = server.metrics()["relay"]
    assert relay["packets_in"] > 0 and relay["packets_out"] > 0
    assert relay["latency"]["count"] > 0
    if relay["mode"] == "forward":
        assert relay["bytes_out"] > 0  # packets went out as the sender's Opus bytes
    else:
        assert relay["bytes_out"] == 0  # frames, re-encoded by each receiver's sender
