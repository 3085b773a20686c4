"""relay.fast_path: every receiver's copy of a packet sent in one pass from the
sender's packet handler. Real peers hear the tone and get its reports (what it reaches for in
aiortc, aioice, pylibsrtp and asyncio is checked in tests/internals/test_internals.py)."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest

from relay_app.client import Recorder, RelayClient, ToneTrack, dominant_frequency
from relay_app.tools.testing import ServerProcess

pytestmark = pytest.mark.anyio


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
