"""Hardening, round 4 (media): a speaker's RTP numbers and RED blocks are not taken on faith.

Anyone who may speak (everyone, on an open server) chooses its packets' sequence numbers,
timestamps and RED blocks. Here a real aiortc speaker lies: its client's outgoing RTP is
rewritten right before the client's own SRTP (`Forger`; the client is not what is under
test), and real aiortc listeners on the fast path say what reached them through their own
SRTP (`Heard`): how many packets, with which numbers, and how much redundancy.

Forward mode only (`make_forward_server`): the fast path numbers what listeners receive, and
builds their RED; in transcode mode aiortc's own encoder and sender do both.
"""

from __future__ import annotations

import itertools
import random
import struct
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import aiortc.rtcrtpsender
import anyio
import pylibsrtp
import pytest
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCSessionDescription,
)
from aiortc.rtp import RtcpPacket, RtcpSrPacket, RtpPacket, is_rtcp

from relay_app.client import RelayClient, ToneTrack, dominant_frequency
from relay_app.core import protocol as p
from relay_app.tools.testing import ServerProcess
from relay_app.webrtc.red import build, split
from relay_app.webrtc.rtp_tap import negotiated_opus_payload_type
from relay_app.webrtc.sdp import red_payload_type, with_red

pytestmark = pytest.mark.anyio

M16, M32 = 0xFFFF, 0xFFFFFFFF
FRAME = 960  # 20 ms at 48 kHz
CHANNELS = {"stage": {"label": "Main stage"}}
DTX = b"\xf8"  # an Opus packet of one empty 20 ms frame: the smallest "older" block


def header_length(packet: bytes | bytearray) -> int:
    length = 12 + 4 * (packet[0] & 0x0F)
    if packet[0] & 0x10:  # a header extension (aiortc always sends the MID)
        length += 4 + 4 * int.from_bytes(packet[length + 2 : length + 4], "big")
    return length


class Forger:
    """A speaker whose client lies about its RTP: each packet its aiortc sender makes is
    rewritten right before the client's SRTP (numbers shifted, payload made RED), or held
    back (not sent at all).

    Its own SRTP (libsrtp, like the relay's) still has to carry the lie: it refuses an index
    it estimates "too old", i.e. a step back or, once past 32,768, a step of 32,768 or more.
    The tests' jumps are ones it carries (`refused` stays 0): +40,000 only from a start under
    25,536 (`low_start`), -40,000 (= +25,536), and steps under 32,768.
    """

    def __init__(self, pc: RTCPeerConnection) -> None:
        transport = pc.getSenders()[0].transport
        self._send = transport._send_rtp
        transport._send_rtp = self._send_rtp
        self.sequence = 0  # added to each packet's sequence number
        self.timestamp = 0  # and to its timestamp
        self.timestamp_step = 0  # added to `timestamp` after each packet
        self.held = False  # while set, packets are dropped, never sent
        self.sent = 0
        self.refused = 0  # packets the client's own SRTP would not protect
        self._original = 0  # the newest sequence number the client itself gave
        self._red: list[int] | None = None  # [packets left, RED's and Opus's payload types]

    def jump(self, sequence: int = 0, timestamp: int = 0) -> float:
        """From the next packet on, numbers moved on by this much; returns the moment."""
        self.sequence += sequence
        self.timestamp += timestamp
        return time.monotonic()

    def jump_to(self, sequence: int) -> float:
        """The next packet numbered `sequence`, the ones after it on from there."""
        return self.jump((sequence - self._original - 1 - self.sequence) & M16)

    def red_far_ahead(self, count: int, red: int, opus: int) -> None:
        """The next `count` packets as RED, each 64 sequence numbers after the one before it
        and carrying 63 "older" blocks; after them nothing is sent until `held` is cleared."""
        self._red = [count, red, opus]

    async def _send_rtp(self, data: bytes) -> None:
        if is_rtcp(data):
            await self._send(data)
            return
        if self.held:
            return
        packet = bytearray(data)
        sequence, timestamp = struct.unpack_from("!HI", packet, 2)
        self._original = sequence
        if self._red is not None:
            self._make_red(packet)
        struct.pack_into(
            "!HI", packet, 2, (sequence + self.sequence) & M16, (timestamp + self.timestamp) & M32
        )
        self.timestamp += self.timestamp_step
        try:
            await self._send(bytes(packet))
        except pylibsrtp.Error:  # (aiortc's sender task would end on it)
            self.refused += 1
            return
        self.sent += 1

    def _make_red(self, packet: bytearray) -> None:
        assert self._red is not None
        left, red, opus = self._red
        self.sequence += 63
        self.timestamp += 63 * FRAME
        start = header_length(packet)
        older = [(min(FRAME * back, 0x3FFF), DTX) for back in range(63, 0, -1)]
        packet[1] = (packet[1] & 0x80) | red
        packet[start:] = build(opus, bytes(packet[start:]), older)
        self._red[0] -= 1
        if left == 1:
            self._red, self.held = None, True


class Heard:
    """Every packet a listener's connection accepted (after its SRTP), in order of arrival:
    (arrival, sequence number, timestamp, older blocks in its RED). Wraps the receiver outside
    whatever the client does with it."""

    def __init__(self, pc: RTCPeerConnection, red: int | None = None) -> None:
        self.packets: list[tuple[float, int, int, int]] = []
        self._red = red
        self._receiver = pc.getReceivers()[0]
        self._inner = self._receiver._handle_rtp_packet
        self._receiver._handle_rtp_packet = self._handle

    def _record(self, packet: RtpPacket) -> list[bytes] | None:
        blocks = split(packet.payload) if packet.payload_type == self._red else None
        older = len(blocks) - 1 if blocks is not None else 0
        self.packets.append((time.monotonic(), packet.sequence_number, packet.timestamp, older))
        return [b.payload for b in blocks] if blocks is not None else None

    async def _handle(self, packet: RtpPacket, arrival_time_ms: int) -> None:
        self._record(packet)
        await self._inner(packet, arrival_time_ms=arrival_time_ms)

    def since(self, moment: float) -> list[tuple[float, int, int, int]]:
        return [packet for packet in self.packets if packet[0] >= moment]

    async def wait_packets(self, moment: float, count: int, what: str, timeout: float = 8) -> None:
        """`count` packets arrive after `moment` (they take count x 20 ms to be sent)."""
        with anyio.move_on_after(timeout):
            while len(self.since(moment)) < count:
                await anyio.sleep(0.05)
        heard = len(self.since(moment))
        assert heard >= count, f"{what}: heard {heard} of the next {count} packets"

    def assert_one_stream(self, moment: float, what: str) -> None:
        """From shortly before `moment` on: sequence numbers that go on by one (a small gap
        at most: loss) and timestamps that go on by a plausible step (under half a second)."""
        packets = [packet for packet in self.packets if packet[0] >= moment - 0.2]
        steps = [((b[1] - a[1]) & M16, (b[2] - a[2]) & M32) for a, b in itertools.pairwise(packets)]
        odd = [step for step in steps if not (1 <= step[0] <= 3 and 0 < step[1] <= 24000)]
        assert not odd, f"{what}: (sequence, timestamp) steps a listener saw: {odd[:5]}"


class LossyHeard(Heard):
    """A RED listener on a bad link: every 4th packet is lost before the client sees it, and
    what arrives is played from its primary block without repair, so its receiver reports
    tell the relay it loses ~25 %."""

    def __init__(self, pc: RTCPeerConnection, red: int) -> None:
        super().__init__(pc, red)
        self._opus = negotiated_opus_payload_type(pc)

    async def _handle(self, packet: RtpPacket, arrival_time_ms: int) -> None:
        blocks = self._record(packet)
        if len(self.packets) % 4 == 0 or not blocks:
            return
        packet.payload_type, packet.payload = self._opus, blocks[-1]
        # aiortc's own handling (its jitter buffer, its loss statistics), not the client's RED.
        await RTCRtpReceiver._handle_rtp_packet(self._receiver, packet, arrival_time_ms)


class SenderReports:
    """When each RTCP sender report reached a listener's connection."""

    def __init__(self, pc: RTCPeerConnection) -> None:
        self.at: list[float] = []
        transport = pc.getReceivers()[0].transport
        inner = transport._handle_rtcp_data

        async def handle(data: bytes) -> None:
            with_report = any(isinstance(r, RtcpSrPacket) for r in RtcpPacket.parse(data))
            if with_report:
                self.at.append(time.monotonic())
            await inner(data)

        transport._handle_rtcp_data = handle


async def start_red_speaker(client: RelayClient, track: ToneTrack) -> tuple[int, int]:
    """`client.start_sending(track)`, but offering RED as browsers do; the payload types of
    RED and Opus the server answered with."""
    client.pc = pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver(track, direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    await client.send(p.StartSending(sdp=with_red(pc.localDescription.sdp)))
    answer = await client.receive(p.AnswerOut)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer.sdp, type="answer"))
    await client.receive(p.StreamStarted)
    red = red_payload_type(answer.sdp)
    assert red is not None, "the server did not take RED from a speaker offering it"
    return red, negotiated_opus_payload_type(pc)


@pytest.fixture
def low_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """This test process's speakers (aiortc clients) start their sequence numbers at 1000:
    from there their own SRTP carries a jump of +40,000 (a start above 25,535 could not)."""
    monkeypatch.setattr(aiortc.rtcrtpsender, "random_sequence_number", lambda: 1000)


def srtp_failures(server: ServerProcess) -> int:
    return int(server.metrics()["relay"]["drops"].get("receiver_srtp_failed", 0))


def assert_tone(client: RelayClient, hz: float) -> None:
    heard = dominant_frequency(client.recorder.audio(1.0), client.recorder.sample_rate)
    assert abs(heard - hz) <= 10, heard


async def test_a_speakers_sequence_jump_is_rebased_and_listeners_hear_the_next_packets(
    make_forward_server: Callable[..., ServerProcess], low_start: None
) -> None:
    """The speaker's numbers jump forward by 40,000 (its timestamp by 2**31 with them), back by
    40,000, forward by 32,000 and on to just before a 16-bit wrap: every listener, with RED
    and without, hears the next 100 packets, numbered on by one with plausible timestamps.
    Before, each listener's numbers jumped with the speaker's; after +40,000 the relay's own
    SRTP refused every copy ("index too old") to a listener whose index was past 32,768, for
    ~25,000 packets (8.5 minutes)."""
    server = make_forward_server()
    async with (
        RelayClient.connect(server.ws_url) as speaker,
        RelayClient.connect(server.ws_url) as plain,
        RelayClient.connect(server.ws_url) as with_red,
    ):
        await speaker.start_sending(ToneTrack(440))
        assert speaker.pc is not None
        forger = Forger(speaker.pc)
        with_red.red = True
        heard = []
        for listener in (plain, with_red):
            await listener.start_receiving()
            assert listener.pc is not None
            red = red_payload_type(listener.pc.remoteDescription.sdp) if listener.red else None
            heard.append(Heard(listener.pc, red))
        for listener in (plain, with_red):
            await listener.wait_audio(1.0)
        failed = srtp_failures(server)
        jumps: list[tuple[str, Callable[[], float]]] = [
            ("+40000", lambda: forger.jump(40000, 2**31 + 12345)),
            ("-40000", lambda: forger.jump(-40000)),
            ("+32000", lambda: forger.jump(32000, -(2**30))),
            ("a 16-bit wrap", lambda: forger.jump_to(M16 - 20)),  # (+32,000 or so again)
        ]
        for what, jump in jumps:
            moment = jump()
            for listener in heard:
                await listener.wait_packets(moment, 100, what)
                listener.assert_one_stream(moment, what)
        assert forger.refused == 0
        assert srtp_failures(server) == failed
        for listener in (plain, with_red):
            assert_tone(listener, 440)


async def test_after_a_speakers_jump_the_next_speaker_is_heard_on_the_same_connections(
    make_forward_server: Callable[..., ServerProcess], low_start: None
) -> None:
    """A channel's speaker jumps by 40,000 and then hands over to a well-behaved one: its
    listeners hear the next speaker's next 100 packets, numbered on from the last they got.
    Before, the handover numbered on from the jumped numbers: 0 of 100 where the relay's SRTP
    had refused them."""
    server = make_forward_server({"channels": CHANNELS})
    async with (
        RelayClient.connect(server.ws_url) as first,
        RelayClient.connect(server.ws_url) as one,
        RelayClient.connect(server.ws_url) as two,
    ):
        await first.start_sending(ToneTrack(440), channel="stage")
        assert first.pc is not None
        forger = Forger(first.pc)
        heard = []
        for listener in (one, two):
            await listener.start_receiving("stage")
            assert listener.pc is not None
            heard.append(Heard(listener.pc))
        for listener in (one, two):
            await listener.wait_audio(1.0)
        jumped = forger.jump(40000)
        await anyio.sleep(1.0)
        assert forger.refused == 0 and forger.sent > 0
        async with RelayClient.connect(server.ws_url) as second:
            moment = time.monotonic()
            await second.start_sending(ToneTrack(660), channel="stage", takeover=True)
            for listener in (one, two):
                assert (await listener.receive(p.StreamEnded)).waiting
                await listener.receive(p.StreamStarted)
            for listener in heard:
                await listener.wait_packets(moment, 100, "after the handover")
                listener.assert_one_stream(jumped, "across the jump and the handover")
            for listener in (one, two):
                assert_tone(listener, 660)


WRAP_AFTER = 150  # packets (3 s) from a speaker's first to its sequence numbers' wrap


@asynccontextmanager
async def numbers_near_the_wrap(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    """A speaker started in this block numbers its packets from WRAP_AFTER before 65,535 and
    timestamps them from 50 packets' worth later before 2**32: both wrap a few seconds in,
    as any long stream's do. Its SSRC stays random: aiortc draws it, then (once its packets
    start, which the block waits for) the timestamps' origin."""
    draws = [random.getrandbits(32), random.getrandbits(32), M32 + 1 - (WRAP_AFTER + 50) * FRAME]
    with monkeypatch.context() as near:
        near.setattr(aiortc.rtcrtpsender, "random_sequence_number", lambda: M16 + 1 - WRAP_AFTER)
        near.setattr(aiortc.rtcrtpsender, "random32", lambda: draws.pop(0))
        yield
        with anyio.fail_after(5):
            while draws:
                await anyio.sleep(0.01)


async def test_a_speakers_numbers_wrapping_run_on_smoothly_for_listeners_and_past_a_takeover(
    make_forward_server: Callable[..., ServerProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A speaker's sequence numbers wrap (65,535 -> 0) 3 s in and its timestamps (2**32 -> 0)
    a second later, while listeners with RED and without listen; then a speaker whose
    numbers wrap likewise takes the channel over. Every listener's numbers go on by one and
    its timestamps by a packet throughout (a wrap is neither a jump nor a restart), and the
    relay's SRTP refuses nothing."""
    server = make_forward_server({"channels": CHANNELS})
    async with (
        RelayClient.connect(server.ws_url) as first,
        RelayClient.connect(server.ws_url) as plain,
        RelayClient.connect(server.ws_url) as with_red,
    ):
        async with numbers_near_the_wrap(monkeypatch):
            await first.start_sending(ToneTrack(440), channel="stage")
        started = time.monotonic()
        with_red.red = True
        heard = []
        for listener in (plain, with_red):
            await listener.start_receiving("stage")
            assert listener.pc is not None
            red = red_payload_type(listener.pc.remoteDescription.sdp) if listener.red else None
            heard.append(Heard(listener.pc, red))
        failed = srtp_failures(server)
        for listener in heard:  # up to a second past both wraps
            await listener.wait_packets(started, WRAP_AFTER + 100, "across the wraps")
            listener.assert_one_stream(started, "across the wraps")
        for listener in (plain, with_red):
            assert_tone(listener, 440)
        async with RelayClient.connect(server.ws_url) as second:
            moment = time.monotonic()
            async with numbers_near_the_wrap(monkeypatch):
                await second.start_sending(ToneTrack(660), channel="stage", takeover=True)
            for listener in heard:
                await listener.wait_packets(moment, WRAP_AFTER + 100, "the next speaker's wraps")
                listener.assert_one_stream(started, "the wraps, the takeover, its wraps")
            for listener in (plain, with_red):
                assert_tone(listener, 660)
        assert srtp_failures(server) == failed


async def test_red_blocks_far_ahead_are_not_rebuilt_and_do_not_multiply_at_listeners(
    make_forward_server: Callable[..., ServerProcess],
) -> None:
    """30 RED datagrams, each 64 sequence numbers after the one before with 63 "older"
    blocks: at most what RED really reaches (two packets back, what a browser sends) is
    rebuilt, one packet in is at most three out, and the loss counts stay put. Before, each
    became 64 packets at every listener and packets_repaired went from 0 to 1,890."""
    server = make_forward_server()
    async with (
        RelayClient.connect(server.ws_url) as speaker,
        RelayClient.connect(server.ws_url) as plain,
        RelayClient.connect(server.ws_url) as with_red,
    ):
        red, opus = await start_red_speaker(speaker, ToneTrack(440))
        assert speaker.pc is not None
        forger = Forger(speaker.pc)
        with_red.red = True
        heard = []
        for listener in (plain, with_red):
            await listener.start_receiving()
            assert listener.pc is not None
            heard.append(Heard(listener.pc))
        for listener in (plain, with_red):
            await listener.wait_audio(1.0)
        forger.held = True
        await anyio.sleep(0.5)  # what was sent before has reached every listener
        before = server.metrics()["relay"]
        forger.red_far_ahead(30, red, opus)
        forger.held = False
        with anyio.fail_after(5):
            while not forger.held:  # (set again after the 30th)
                await anyio.sleep(0.05)
        await anyio.sleep(1.0)
        after = server.metrics()["relay"]
        counts = ("packets_in", "packets_out", "packets_repaired", "packets_lost")
        delta = {name: after[name] - before[name] for name in counts}
        print("30 RED datagrams 64 ahead, at the relay:", delta)
        assert delta["packets_in"] <= 30 * 3, delta
        assert delta["packets_out"] <= 2 * 30 * 3, delta
        assert delta["packets_repaired"] <= 30 * 2, delta
        assert delta["packets_lost"] <= 30 * 2, delta
        forger.held = False  # the speaker goes on as before: every listener hears it
        moment = time.monotonic()
        for listener in heard:
            await listener.wait_packets(moment, 100, "after the RED datagrams")
            listener.assert_one_stream(moment, "after the RED datagrams")


async def test_timestamps_jumping_half_their_range_per_packet_bring_no_report_per_packet(
    make_forward_server: Callable[..., ServerProcess],
) -> None:
    """Each of the speaker's timestamps is 2**31 - 960 after the one before (just under half
    their range: ahead, not behind): a listener's timestamps still go on plausibly, and its
    sender reports stay one every few seconds. Before, the relay's timeline ran 2**31 ahead per
    packet, and every packet brought every listener a sender report too."""
    server = make_forward_server()
    async with (
        RelayClient.connect(server.ws_url) as speaker,
        RelayClient.connect(server.ws_url) as listener,
    ):
        await speaker.start_sending(ToneTrack(440))
        assert speaker.pc is not None
        forger = Forger(speaker.pc)
        await listener.start_receiving()
        assert listener.pc is not None
        heard, reports = Heard(listener.pc), SenderReports(listener.pc)
        await listener.wait_audio(1.0)
        moment = time.monotonic()
        forger.timestamp_step = 2**31 - 2 * FRAME  # (each packet's own 20 ms on top)
        await heard.wait_packets(moment, 100, "timestamps jumping")
        forger.timestamp_step = 0
        heard.assert_one_stream(moment, "timestamps jumping")
        during = [at for at in reports.at if at >= moment]
        assert len(during) <= 2, f"{len(during)} sender reports in 100 packets"
        assert_tone(listener, 440)


async def test_red_for_a_listener_on_a_bad_link_does_not_double_every_other_listeners(
    make_forward_server: Callable[..., ServerProcess],
) -> None:
    """One RED listener reports ~25 % loss: it gets two packets of redundancy, the other RED
    listener of the stream, which loses nothing, keeps getting one. Before, the worst
    listener's loss set the redundancy of all."""
    server = make_forward_server()
    async with (
        RelayClient.connect(server.ws_url) as speaker,
        RelayClient.connect(server.ws_url) as clean,
        RelayClient.connect(server.ws_url) as lossy,
    ):
        await speaker.start_sending(ToneTrack(440))
        clean.red = lossy.red = True
        await clean.start_receiving()
        await lossy.start_receiving()
        assert clean.pc is not None and lossy.pc is not None
        red = red_payload_type(clean.pc.remoteDescription.sdp)
        assert red is not None
        heard_clean, heard_lossy = Heard(clean.pc, red), LossyHeard(lossy.pc, red)
        await clean.wait_audio(1.0)
        with anyio.fail_after(15):  # its reports (every ~1 s) reach the relay
            while not any(older == 2 for *_, older in heard_lossy.packets[-10:]):
                await anyio.sleep(0.1)
        moment = time.monotonic()
        await heard_clean.wait_packets(moment, 100, "beside a lossy listener")
        blocks = {older for *_, older in heard_clean.since(moment)}
        assert blocks == {1}, f"older blocks per packet where nothing is lost: {blocks}"
        assert_tone(clean, 440)
