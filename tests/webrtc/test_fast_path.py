"""relay.fast_path: every receiver's copy of a packet sent in one pass from the
sender's packet handler. Real peers hear the tone; the aiortc internals it uses are checked so
that an upgrade fails here, loudly, instead of in a hall."""

from __future__ import annotations

import asyncio
import importlib.metadata
import inspect
from collections.abc import Callable

import aioice
import anyio
import pylibsrtp
import pytest
from aiortc import RTCPeerConnection
from aiortc.rtcdtlstransport import RTCDtlsTransport, State
from aiortc.rtcrtpsender import RTCRtpSender

from relay_app.client import Recorder, RelayClient, ToneTrack, dominant_frequency
from relay_app.tools.testing import ServerProcess
from relay_app.webrtc.fast_path import _SENDER, InPlaceSrtp, Placeholder

pytestmark = pytest.mark.anyio


async def test_the_aiortc_and_aioice_internals_it_uses_are_still_there() -> None:
    assert aioice.__version__ == "0.13.0"
    pc = RTCPeerConnection()
    try:
        sender = pc.addTransceiver(Placeholder(), direction="sendonly").sender
        # Its sender reports: aiortc's loop is looked up on the instance when sending starts
        # (take_reports replaces it), stop() waits for these events; what the reports and
        # aiortc's round-trip estimate read.
        assert "asyncio.ensure_future(self._run_rtcp())" in inspect.getsource(RTCRtpSender)
        for name in ("rtcp_started", "rtcp_exited", "cname", "lsr", "lsr_time"):
            assert hasattr(sender, _SENDER + name), name
        for counter in ("octet_count", "packet_count"):
            assert hasattr(sender, _SENDER + counter), counter
        assert hasattr(sender, "_ssrc")
        # A receiver's RTCP reports of loss are kept under this id (reported_loss reads them).
        assert hasattr(sender, _SENDER + "stats")
        assert '"remote-inbound-rtp_" + str(id(self))' in inspect.getsource(RTCRtpSender)
        # The header-extension map is set when sending starts.
        assert "self.__rtp_header_extensions_map" in inspect.getsource(RTCRtpSender)
        dtls = sender.transport
        assert isinstance(dtls, RTCDtlsTransport) and dtls._state == State.NEW
        assert "self._tx_srtp" in inspect.getsource(RTCDtlsTransport)
        # libsrtp protects in the session's own buffer (InPlaceSrtp), pylibsrtp 1.0.0's parts.
        assert importlib.metadata.version("pylibsrtp") == "1.0.0"
        process = inspect.getsource(pylibsrtp.Session)
        for part in (
            'self._cdata = ffi.new("char[]", 1500)',
            "self._buffer = ffi.buffer(",
            "self._srtp[0], self._cdata, len_p",
        ):
            assert part in process, part
        assert hasattr(dtls.transport._connection, "_nominated")
        # The nominated pair's socket, written to directly.
        assert "self._sock.sendto(data, addr)" in inspect.getsource(
            asyncio.selector_events._SelectorDatagramTransport
        )
        source = inspect.getsource(aioice.Connection)
        assert "self._nominated" in source and "send_data" in source
    finally:
        await pc.close()


async def test_fast_path_receivers_hear_the_sender_get_its_reports_and_leave_nothing_behind(
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
                # The relay's sender report, sent with its first packet (then every ~5 s).
                assert receiver.pc is not None
                (track,) = receiver.pc.getReceivers()
                stats = [s for s in (await track.getStats()).values()]
                reports = [s for s in stats if s.type == "remote-outbound-rtp"]
                assert reports and reports[0].packetsSent >= 1 and reports[0].bytesSent > 0
            relay = server.metrics()["relay"]
            assert relay["packets_out"] > 0 and relay["latency"]["count"] > 0
            assert server.metrics()["active_receivers"] == 2
        with anyio.fail_after(5):  # only the sender's own level tap is left
            while server.metrics()["live"]["relay_subscriptions"] > 1:
                await anyio.sleep(0.1)


def test_srtp_in_place_is_what_the_receiver_unprotects_and_long_packets_are_refused() -> None:
    key = bytes(range(30))
    tx = pylibsrtp.Session(pylibsrtp.Policy(key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
    rx = pylibsrtp.Session(pylibsrtp.Policy(key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND))
    protect = InPlaceSrtp(tx)
    for sequence in range(3):
        header = bytearray(b"\x80\x6f" + sequence.to_bytes(2, "big") + bytes(8))
        payload = bytes([sequence]) * (100 + sequence)
        assert rx.unprotect(bytes(protect.protect(header, payload))) == header + payload
    with pytest.raises(ValueError, match="too long"):
        protect.protect(bytearray(b"\x80\x6f\x00\x03" + bytes(8)), bytes(1500))
