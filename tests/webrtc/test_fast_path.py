"""relay.fast_path: every receiver's copy of a packet sent in one pass from the
sender's packet handler. Real peers hear the tone; the aiortc internals it uses are checked so
that an upgrade fails here, loudly, instead of in a hall."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import aioice
import anyio
import pytest
from aiortc import RTCPeerConnection
from aiortc.rtcdtlstransport import RTCDtlsTransport, State
from aiortc.rtcrtpsender import RTCRtpSender

from relay_app.client import Recorder, RelayClient, ToneTrack, dominant_frequency
from relay_app.tools.testing import ServerProcess
from relay_app.webrtc.fast_path import _SENDER, Placeholder

pytestmark = pytest.mark.anyio


async def test_the_aiortc_and_aioice_internals_it_uses_are_still_there() -> None:
    assert aioice.__version__ == "0.13.0"
    pc = RTCPeerConnection()
    try:
        sender = pc.addTransceiver(Placeholder(), direction="sendonly").sender
        for counter in ("octet_count", "packet_count", "rtp_timestamp", "ntp_timestamp"):
            assert hasattr(sender, _SENDER + counter), counter
        assert hasattr(sender, "_ssrc")
        # A receiver's RTCP reports of loss are kept under this id (reported_loss reads them).
        assert hasattr(sender, _SENDER + "stats")
        assert '"remote-inbound-rtp_" + str(id(self))' in inspect.getsource(RTCRtpSender)
        # The header-extension map is set when sending starts; RTCP reports read the counters.
        assert "self.__rtp_header_extensions_map" in inspect.getsource(RTCRtpSender)
        assert "self.__octet_count" in inspect.getsource(
            RTCRtpSender._send_rtcp_sr
            if hasattr(RTCRtpSender, "_send_rtcp_sr")
            else RTCRtpSender._run_rtcp
        )
        dtls = sender.transport
        assert isinstance(dtls, RTCDtlsTransport) and dtls._state == State.NEW
        assert "self._tx_srtp" in inspect.getsource(RTCDtlsTransport)
        assert hasattr(dtls.transport._connection, "_nominated")
        source = inspect.getsource(aioice.Connection)
        assert "self._nominated" in source and "send_data" in source
    finally:
        await pc.close()


async def test_fast_path_receivers_hear_the_sender_and_leave_nothing_behind(
    make_forward_server: Callable[..., ServerProcess],
) -> None:
    server = make_forward_server({"relay": {"fast_path": True}})
    async with RelayClient.connect(server.ws_url) as sender:
        await sender.start_sending(ToneTrack(440))
        async with (
            RelayClient.connect(server.ws_url) as first,
            RelayClient.connect(server.ws_url) as second,
        ):
            await first.start_receiving()
            await first.wait_audio(1.0)
            await second.start_receiving(recorder=Recorder())  # a late joiner
            for receiver in (first, second):
                await receiver.wait_audio(1.5)
                heard = dominant_frequency(receiver.recorder.audio(1.0), 48000)
                assert abs(heard - 440) <= 10, heard
            relay = server.metrics()["relay"]
            assert relay["packets_out"] > 0 and relay["latency"]["count"] > 0
            assert server.metrics()["active_receivers"] == 2
        with anyio.fail_after(5):  # only the sender's own level tap is left
            while server.metrics()["live"]["relay_subscriptions"] > 1:
                await anyio.sleep(0.1)
