"""A sender's media task: check the offer, answer it, tap its RTP, register the stream, serve it.

The task tree under the session's media task (see session.py for the rest):

    run_sender
    └── serve_stream        until the stream ends (sender left, track ended, ICE, stale,
        │                   speaker lost)
        ├── drain           transcode: the decoded track -> the frame feed (meter and
        │                   receivers); forward: nothing is decoded there (it only sees the
        │                   track end): every output is fed by the packet path as packets
        │                   arrive (plane/path.py), the meter one decode in N
        ├── ice_watch       ends the stream when the sender's connection fails
        ├── watch_speaker   no packet for 1 s: its listeners are told (speaker_lost); for
        │                   streams.speaker_lost_after: it ends and the channel is free
        └── visualize       levels -> the sender and its receivers (droppable messages)
        (a recorded stream feeds its channel's recording, whose writer runs in ROOT:
        audio/recorder.py; and while nobody listens, the sender's sockets are read in
        batches: batched_reads.py)

The stream is registered only after the answer has left and unregistered in a `finally`
before the peer connection closes, so no receiver ever finds a dying stream.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import anyio
from aiortc import RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import SessionDescription
from anyio.abc import TaskStatus
from av import AudioFrame

from ..audio.levels import EveryNth, levels
from ..audio.recording import recording_path
from ..core import protocol as p
from ..core.errors import NegotiationError
from ..core.logs import get_logger
from ..plane.outputs import RecordingOutput
from ..plane.path import frame_path, tap_stream
from ..streams.stream import UNNAMED_PREFIX, EndCause, Stream, name_of, new_stream
from ..webrtc.fanout import pump
from ..webrtc.peer import Peer, open_peer
from ..webrtc.rtp_tap import audio_receiver, negotiated_opus_payload_type, receive_red
from .booth import tell_booth
from .host import MediaTask, SessionHost, answering, remote_candidates


def check_offer(sdp: str, video_ignored: bool = False) -> None:
    """Refuse, before any peer connection exists, an offer that is not one audio track.

    One: the server taps and drains one track per sender; aiortc would decode any other into
    a queue nobody reads (10 audio sections grew RSS by ~10 MB/s). With `video_ignored`
    (WHIP: OBS always offers video), video sections pass and are answered `inactive`.
    """
    try:
        media = SessionDescription.parse(sdp).media
    except Exception as error:  # aiortc's parser raises assorted errors on garbage
        raise NegotiationError(f"invalid SDP offer: {error}") from None
    kinds = {m.kind for m in media}
    if "audio" not in kinds:
        raise NegotiationError("the offer has no audio track (no m=audio section)")
    if (count := sum(1 for m in media if m.kind == "audio")) > 1:
        raise NegotiationError(f"send one audio track: the offer has {count} m=audio sections")
    if others := sorted(kinds - {"audio", "video"} if video_ignored else kinds - {"audio"}):
        raise NegotiationError(
            f"only audio is relayed; remove these from the offer: {', '.join(others)}"
        )


async def run_sender(
    host: SessionHost, media: MediaTask, sdp: str, *, task_status: TaskStatus[None]
) -> None:
    ctx = host.ctx
    log = media.log
    log.info("sender_setup")
    host.info.tell = host.send  # (the booth's messages: booth.py)
    check_offer(sdp, video_ignored=host.video_ignored)
    async with open_peer(ctx.settings, ctx.metrics.live, log) as peer:
        media.peer = peer
        peer.red = ctx.settings.relay.red  # the tap reads RED, whatever the relay mode
        stream = await _answer_offer(host, peer, sdp)
        host.send(p.AnswerOut(sdp=peer.local_sdp))
        task_status.started()
        log.info("sender_track_received")
        media.log = log = log.bind(stream_id=stream.stream_id)
        try:
            ctx.registry.add_stream(stream)
            ctx.metrics.streams_total += 1
            log.info("stream_stored", mode=ctx.settings.relay.mode)
            host.send(p.StreamStarted(stream_id=stream.stream_id, label=stream.label))
            tell_booth(ctx, stream.channel)
            await serve_stream(host, peer, stream, log)
        finally:
            # Sync bookkeeping first, so no receiver can find a dying stream.
            stream.end(EndCause.SENDER_LEFT)
            stream.take_over()  # (never audible: the one it took over stops too)
            ctx.registry.remove_stream(stream, host.info)
            stream.close_relays()
            log.info("track_ended", reason=stream.end_reason)
            tell_booth(ctx, stream.channel)
    if stream.end_cause is not EndCause.SENDER_LEFT:
        # Ended by something other than this sender leaving: tell the sender why.
        message, by = stream.told_to_sender(), stream.end_by
        host.send(
            p.StreamEnded(
                stream_id=stream.stream_id, reason=stream.end_reason, message=message, by=by
            )
        )


async def _answer_offer(host: SessionHost, peer: Peer, sdp: str) -> Stream:
    """Answer the offer and tap its audio; the answer is not sent yet."""
    tracks: list[Any] = []
    peer.pc.on("track", tracks.append)
    sdp = remote_candidates(host, sdp)
    with answering():
        await peer.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        for transceiver in peer.pc.getTransceivers():
            if transceiver.kind != "audio":  # (WHIP only) no video is received or decoded
                transceiver.direction = "inactive"
        await peer.pc.setLocalDescription(await peer.pc.createAnswer())
    audio = [track for track in tracks if track.kind == "audio"]
    if not audio:
        raise NegotiationError("the offer has no audio track (no m=audio section)")
    opus = negotiated_opus_payload_type(peer.pc)
    settings, metrics = host.ctx.settings.relay, host.ctx.metrics
    stream_id = host.info.stream_id or f"{UNNAMED_PREFIX}{host.connection_id}"
    channel = None if stream_id.startswith(UNNAMED_PREFIX) else stream_id
    stream = new_stream(
        settings,
        metrics,
        stream_id=stream_id,
        channel=channel,
        clock=host.ctx.registry.clock(channel),
        sender_id=host.connection_id,
        source=audio[0],
    )
    stream.speaker = name_of(host.info)
    # Tapped before the answer leaves, so that no packet arrives untapped.
    visualization = host.ctx.settings.visualization
    meter_every = visualization.downsample if visualization.enabled else None
    receiver = audio_receiver(peer.pc, audio[0])
    red = peer.red_payload_type
    if red is not None:
        receive_red(peer.pc, red)
    tap_stream(receiver, metrics, stream, opus, red, peer, meter_every)
    _record(host, stream)  # (last: nothing after it can fail before close_relays gives it back)
    return stream


def _record(host: SessionHost, stream: Stream) -> None:
    """Its recording, when its channel is recorded: the channel's, which a previous speaker
    may have begun (audio/recorder.py)."""
    settings = host.ctx.settings
    channel = settings.channels.get(stream.channel) if stream.channel is not None else None
    if not settings.recording.records(channel):
        return
    path = recording_path(Path(settings.recording.directory), stream.stream_id, stream.started_at)
    log = get_logger(connection_id=host.connection_id, role="sender", stream_id=stream.stream_id)
    recorder = host.ctx.recorder
    recording = recorder.recording(path, log, stream.channel)
    if recording is not None:
        release = functools.partial(recorder.release, recording, stream.channel)
        stream.outputs.add(RecordingOutput(recording, release))


async def serve_stream(host: SessionHost, peer: Peer, stream: Stream, log: Any) -> None:
    """Drain, watch and visualize the stream until it ends, whoever ends it."""
    metrics = host.ctx.metrics

    async def drain() -> None:
        # (transcode: the one decode per stream, aiortc's decoder thread, feeds the frames)
        await pump(stream.source, frame_path(metrics, stream))
        # The sender stopped its track or closed its connection: it is leaving, not stale
        # (the guide's "Cleaning up stale stream" stays for streams that really went stale).
        stream.end(EndCause.TRACK_ENDED)
        log.info("sender_track_ended", reason=stream.end_reason)

    async def ice_watch() -> None:
        await peer.failed.wait()
        if peer.hung_up:
            stream.end(EndCause.SENDER_LEFT)
            log.info("sender_left", reason=peer.failure)
            return
        stream.end(EndCause.CONNECTION_FAILED, f"sender {peer.failure}")
        log.warning("stale_stream_cleanup", reason=peer.failure)

    async with anyio.create_task_group() as tg:
        tg.start_soon(drain)
        tg.start_soon(ice_watch)
        tg.start_soon(watch_speaker, stream, host.ctx.settings.streams.speaker_lost_after, log)
        if host.ctx.settings.visualization.enabled:
            tg.start_soon(visualize, host, stream, log)
        with host.ctx.reads.watching(peer.pc, lambda: unheard(stream)):
            await stream.ended.wait()
        tg.cancel_scope.cancel()


SPEAKER_QUIET = 1.0  # seconds without a packet before the listeners are told (speaker_lost)
WATCH_STEP = 0.25  # seconds between looks while the speaker is lost or not yet heard


async def watch_speaker(stream: Stream, lost_after: float, log: Any) -> None:
    """A speaker who vanishes (a laptop that froze or left the Wi-Fi: nothing says goodbye,
    and ICE takes ~30 s to fail) is noticed from the packets: the packet path sets
    `last_audio_at` per packet, and this looks at it (about once a second while they come).

    After SPEAKER_QUIET without one, every WebSocket listener of the stream is told
    `speaker_lost` (and `speaker_back` if packets return); after `lost_after`
    (streams.speaker_lost_after) the stream ends ("speaker connection lost"): the channel is
    free for the next speaker and its listeners wait for them on their connections, as on
    any handover. Not before the first packet: until then streams.stale_after applies.
    Costs nothing per packet or per listener but the notices themselves.
    """
    while True:
        now = anyio.current_time()
        if stream.audio_bytes == 0:
            await anyio.sleep(WATCH_STEP)
            continue
        quiet = now - stream.last_audio_at
        if quiet >= lost_after:
            log.warning("speaker_lost_stream_ended", silent_seconds=round(quiet, 1))
            stream.end(EndCause.SPEAKER_LOST)
            return
        if stream.lost_since is not None and stream.last_audio_at > stream.lost_since:
            stream.lost_since = None
            log.info("speaker_back")
            back = p.SpeakerBack(stream_id=stream.stream_id, label=stream.label)
            for tell in stream.outputs.told():
                tell(back)
        elif stream.lost_since is None and quiet >= SPEAKER_QUIET:
            stream.lost_since = stream.last_audio_at
            told = stream.outputs.told()
            log.warning("speaker_lost", silent_seconds=round(quiet, 1), listeners=len(told))
            lost = stream.lost_notice()
            for tell in told:
                tell(lost)
        if stream.lost_since is None:  # (packets come: look again when one could be late)
            due = stream.last_audio_at + min(SPEAKER_QUIET, lost_after)
            await anyio.sleep(max(WATCH_STEP, due - now))
        else:  # (lost: look for their return, and end it on time)
            await anyio.sleep(min(WATCH_STEP, stream.last_audio_at + lost_after - now))


def unheard(stream: Stream) -> bool:
    """Nobody needs the stream's packets the moment they arrive: it is audible (a takeover
    happens at the first packet, so that one is never late) and has no listener, WebRTC or
    plain-HTTP. Its level meter, recording and liveness are as well served in batches."""
    return stream.audio_bytes > 0 and not stream.outputs.heard() and stream.replaces is None


async def visualize(host: SessionHost, stream: Stream, log: Any) -> None:
    """Levels of every Nth decoded frame, to the sender and each receiver (droppable)."""
    downsample = host.ctx.settings.visualization.downsample
    meter = stream.strategy.meter(host.ctx.metrics, downsample)
    stream.outputs.add(meter)
    log.info("visualization_started")
    tap = EveryNth(meter.every)
    try:
        while True:
            frame = await meter.track.recv()
            if not tap() or not isinstance(frame, AudioFrame):
                continue
            rms, peak = levels(frame.to_ndarray())
            stream.level = rms  # (the operator console's meter reads the newest)
            text = p.encode(p.Visualization(stream_id=stream.stream_id, rms=rms, peak=peak))
            host.send_or_drop(text)
            for send_or_drop in stream.outputs.levels():  # (those that asked for levels)
                send_or_drop(text)
    except MediaStreamError:
        pass  # the relay closed: the stream is over
    finally:
        stream.outputs.remove(meter)
