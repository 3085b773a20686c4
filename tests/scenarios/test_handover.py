"""Seamless handover: a channel's listeners stay on their connections while its speaker changes.

Interpreters hand a booth over, a hall passes the microphone: every listener of the channel
(WebSocket receivers, a WHEP player, a plain-HTTP Ogg listener) hears the next speaker on the
connection it has, with no new offer, and what it receives stays one stream (the gap between
the last packet of one speaker and the first of the next is measured at the listeners).
"""

from __future__ import annotations

import io
import itertools
import time
from collections.abc import Callable
from typing import Any

import anyio
import av
import numpy as np
import pytest

from relay_app.client import RelayClient, ToneTrack, dominant_frequency
from relay_app.client.whip import whep_play
from relay_app.core import protocol as p
from relay_app.tools.ogg_listener import ogg_listener
from relay_app.tools.testing import ServerProcess
from relay_app.webrtc.rtp_tap import tap_receiver

pytestmark = pytest.mark.anyio

CHANNELS = {"stage": {"label": "Main stage"}}
DROP = 3.0  # seconds a speaker's laptop is off the Wi-Fi before it is back


class Arrivals:
    """When each RTP packet reached a listener, and its sequence numbers and timestamps."""

    def __init__(self, pc: Any) -> None:
        self.packets: list[tuple[float, int, int]] = []
        tap_receiver(pc.getReceivers()[0], self._on_packet)  # (aiortc still decodes them)

    def _on_packet(self, packet: Any, arrival: float) -> None:
        self.packets.append((arrival, packet.sequence_number, packet.timestamp))

    def gap_after(self, moment: float) -> tuple[float, int, int]:
        """The longest silence after `moment` (s), and across it the step in sequence
        numbers and in timestamps (48 kHz units)."""
        later = [(a, s, t) for a, s, t in self.packets if a >= moment - 0.1]
        gaps = [
            (b[0] - a[0], (b[1] - a[1]) & 0xFFFF, (b[2] - a[2]) & 0xFFFFFFFF)
            for a, b in itertools.pairwise(later)
        ]
        return max(gaps)


def tone(audio: np.ndarray, rate: int = 48000) -> float:
    return dominant_frequency(audio.astype(np.float32), rate)


def ogg_tones(body: bytes) -> tuple[float, float, float]:
    """(seconds, Hz of the first second, Hz of the last second) of one Ogg/Opus stream."""
    with av.open(io.BytesIO(bytes(body))) as container:
        audio = np.concatenate([f.to_ndarray().mean(axis=0) for f in container.decode(audio=0)])
    return len(audio) / 48000, tone(audio[:48000]), tone(audio[-48000:])


@pytest.mark.serial
async def test_a_takeover_plays_on_every_listeners_connection_within_a_packet_or_two(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server({"channels": CHANNELS})
    async with (
        RelayClient.connect(server.ws_url) as first_speaker,
        RelayClient.connect(server.ws_url) as one,
        RelayClient.connect(server.ws_url) as two,
    ):
        await first_speaker.start_sending(ToneTrack(440), channel="stage")
        receivers = (one, two)
        for receiver in receivers:
            await receiver.start_receiving("stage")
        async with whep_play(f"{server.base_url}/whep/stage") as player:
            with ogg_listener(f"{server.status_url}/stream/stage.ogg") as ogg:
                pcs = [one.pc, two.pc, player.pc]
                arrivals = [Arrivals(pc) for pc in pcs]
                recorders = [one.recorder, two.recorder, player.recorder]
                for recorder in recorders:
                    with anyio.fail_after(10):
                        await recorder.wait_seconds(1.5)
                    assert abs(tone(recorder.audio(1.0)) - 440) <= 10
                async with RelayClient.connect(server.ws_url) as next_speaker:
                    moment = time.monotonic()
                    await next_speaker.start_sending(ToneTrack(660), channel="stage", takeover=True)
                    for receiver in receivers:
                        ended = await receiver.receive(p.StreamEnded)
                        assert (ended.reason, ended.waiting) == ("taken over", True)
                        started = await receiver.receive(p.StreamStarted)
                        assert (started.stream_id, started.label) == ("stage", "Main stage")
                    await anyio.sleep(2.0)
                    for recorder in recorders:
                        assert abs(tone(recorder.audio(1.0)) - 660) <= 10
                    # The same connections, no second offer, one stream each.
                    assert [one.pc, two.pc, player.pc] == pcs
                    for receiver in receivers:
                        assert sum(isinstance(m, p.Offer) for m in receiver.messages) == 1
                    gaps = [listener.gap_after(moment) for listener in arrivals]
                    print("takeover gaps (s, sequence step, timestamp step):", gaps)
                    for seconds, sequence_step, timestamp_step in gaps:
                        assert seconds <= 0.1, gaps
                        assert sequence_step == 1, gaps  # numbered on, not a new source
                        assert 960 <= timestamp_step <= 48000 * 0.2, gaps  # the real pause
            seconds, before, after = ogg_tones(ogg)
            assert seconds >= 3 and abs(before - 440) <= 10 and abs(after - 660) <= 10


@pytest.mark.serial
async def test_a_speaker_back_after_a_drop_plays_on_the_same_connections_after_a_real_pause(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server({"channels": CHANNELS})
    async with RelayClient.connect(server.ws_url) as receiver:
        async with RelayClient.connect(server.ws_url) as speaker:
            await speaker.start_sending(ToneTrack(440), channel="stage")
            await receiver.start_receiving("stage")
            arrivals, pc = Arrivals(receiver.pc), receiver.pc
            await receiver.wait_audio(1.0)
        left = time.monotonic()
        ended = await receiver.receive(p.StreamEnded)
        assert ended.waiting
        await anyio.sleep(DROP)  # the interpreter's laptop drops off the Wi-Fi
        async with RelayClient.connect(server.ws_url) as speaker:
            await speaker.start_sending(ToneTrack(880), channel="stage")
            assert (await receiver.receive(p.StreamStarted)).stream_id == "stage"
            await anyio.sleep(1.5)
            assert abs(tone(receiver.recorder.audio(1.0)) - 880) <= 10
            assert receiver.pc is pc
            seconds, sequence_step, timestamp_step = arrivals.gap_after(left)
            print(
                "reconnect gap (s, sequence step, timestamp step):",
                seconds,
                sequence_step,
                timestamp_step,
            )
            assert DROP <= seconds < DROP + 3 and sequence_step == 1
            if server.config["relay"]["mode"] == "forward":  # (transcode: aiortc's encoder)
                assert abs(timestamp_step / 48000 - seconds) < 0.5  # the pause, timestamped
    assert sum(isinstance(m, p.Offer) for m in receiver.messages) == 1


@pytest.mark.mode_independent  # the waiting and its end: the relay mode does not change them
async def test_a_channel_left_empty_past_its_wait_lets_its_listeners_go(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server({"channels": CHANNELS, "streams": {"channel_wait_timeout": 2}})
    async with RelayClient.connect(server.ws_url) as receiver:
        async with RelayClient.connect(server.ws_url) as speaker:
            await speaker.start_sending(ToneTrack(440), channel="stage")
            await receiver.start_receiving("stage")
            async with whep_play(f"{server.base_url}/whep/stage") as player:
                with ogg_listener(f"{server.status_url}/stream/stage.ogg") as ogg:
                    await receiver.wait_audio(1.0)
                    await speaker.close_media()  # the speaker hangs up; nobody follows
                    assert (await receiver.receive(p.StreamEnded)).waiting
                    ended = await receiver.receive(p.StreamEnded, timeout=10)
                    assert not ended.waiting and "no sender for 2 s" in ended.reason
                    with anyio.fail_after(10):
                        while player.pc.connectionState not in ("closed", "failed"):
                            await anyio.sleep(0.2)
                    await anyio.sleep(0.5)
                assert ogg[-27 + 5] & 0x04  # the last page ends the stream (EOS flag)
        server.wait_event("receiver_wait_ended", channel="stage")
