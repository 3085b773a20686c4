"""rtp_tap.py reaches into aiortc; these fail loudly when an aiortc upgrade breaks the hook."""

from __future__ import annotations

import inspect

import aiortc
import pytest
from aiortc import RTCRtpReceiver, rtcpeerconnection
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtp import RtpPacket

from relay_app.client import RelayClient, ToneTrack
from relay_app.tools.testing import ServerProcess
from relay_app.webrtc.rtp_tap import WRITTEN_FOR_AIORTC, OpusPacketizer

pytestmark = pytest.mark.anyio


def test_aiortc_is_the_version_the_tap_was_written_for() -> None:
    assert aiortc.__version__ == WRITTEN_FOR_AIORTC, (
        f"aiortc {aiortc.__version__} is installed; relay_app/rtp_tap.py was written for "
        f"{WRITTEN_FOR_AIORTC}: re-check the hook, then update WRITTEN_FOR_AIORTC"
    )


def test_receivers_still_get_packets_through_the_hooked_method() -> None:
    parameters = list(inspect.signature(RTCRtpReceiver._handle_rtp_packet).parameters)
    assert parameters == ["self", "packet", "arrival_time_ms"]
    # The DTLS transport looks the method up on the receiver instance for every packet.
    source = inspect.getsource(RTCDtlsTransport)
    assert "receiver._handle_rtp_packet(packet, arrival_time_ms=arrival_time_ms)" in source


def test_forward_mode_can_keep_the_loss_statistics_aiortc_reports_and_route_red() -> None:
    # The tap keeps aiortc's per-source statistics (what its RTCP receiver reports send) ...
    source = inspect.getsource(RTCRtpReceiver)
    assert "self.__remote_streams[packet.ssrc].add(packet)" in source
    assert "fraction_lost=stream.fraction_lost" in source
    # ... and lists RED among the transceiver's codecs, which is what aiortc routes by.
    assert "codecs=transceiver._codecs" in inspect.getsource(rtcpeerconnection)
    assert "payload_types=[codec.payloadType for codec in parameters.codecs]" in (
        inspect.getsource(RTCDtlsTransport)
    )


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
