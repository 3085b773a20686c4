"""A receiver's media task: subscribe to a stream, offer it, accept the answer, play until the
stream or the connection ends.

Subscribing and registering as a receiver (`_listening`) are sync and undone before the peer
connection closes: a receiver is counted exactly while it listens.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import anyio
from aiortc import RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.sdp import SessionDescription
from anyio.abc import TaskStatus

from ..core import protocol as p
from ..core.errors import MediaFailed, MediaUnavailable, NegotiationError, SessionStateError
from ..streams.finder import next_on_channel
from ..streams.stream import Stream
from ..webrtc.fast_path import DirectSender, Placeholder
from ..webrtc.ice import NoFreeMediaPort
from ..webrtc.peer import Peer, open_peer
from ..webrtc.rtp_tap import negotiated_opus_payload_type
from ..webrtc.sdp import opus_only
from .host import MediaTask, SessionHost, answering, remote_candidates


@dataclass(frozen=True)
class Listen:
    """What `start_receiving` asked for: a stream, and whether to send it level messages."""

    stream: Stream
    levels: bool = False


async def run_receiver(
    host: SessionHost, media: MediaTask, request: Listen, *, task_status: TaskStatus[None]
) -> None:
    """Play `stream`; for a channel, then each next sender on it, until the session stops it.

    A channel's receiver outlives its sender: told `stream_ended` with `waiting`, it waits
    here (no peer connection, not counted as a receiver) for the channel's next stream, then
    gets `stream_started` and a fresh offer on the same socket.
    """
    stream = request.stream
    status: TaskStatus[None] | None = task_status
    while True:
        if await _play(host, media, stream, request.levels, status):
            return  # the listener hung up: the session stays, nothing to tell it
        status = None
        channel = stream.channel
        host.send(
            p.StreamEnded(
                stream_id=stream.stream_id, reason=stream.end_reason, waiting=channel is not None
            )
        )
        if channel is None:
            return
        media.log.info("receiver_waiting", channel=channel)
        stream = await next_on_channel(host.ctx, channel)
        host.send(p.StreamStarted(stream_id=stream.stream_id))


async def _play(
    host: SessionHost,
    media: MediaTask,
    stream: Stream,
    levels: bool,
    task_status: TaskStatus[None] | None,
) -> bool:
    """One peer connection playing `stream` until it ends; True when the listener hung up
    (closed its peer connection), MediaFailed if the media failed."""
    ctx = host.ctx
    media.log = log = media.log.bind(stream_id=stream.stream_id)
    async with open_peer(ctx.settings, ctx.metrics.live, log) as peer:
        media.peer = peer
        try:
            with _listening(host, stream, log, levels, peer) as track:
                await _offer(host, peer, track, stream)
                log.info("receiver_offer_sent")
                if task_status is not None:
                    task_status.started()
                await _accept_answer(host, media, peer, ctx.settings.webrtc.negotiation_timeout)
                await _wait_any(stream.ended.wait, peer.failed.wait)
        finally:
            media.peer = None
    return _ended_by(peer, stream, log)


def _ended_by(peer: Peer, stream: Stream, log: Any) -> bool:
    """Why the playing ended: the stream (False), the listener hanging up (True, logged at
    info: an ordinary end), or a media failure (MediaFailed)."""
    if stream.ended.is_set():
        return False
    if peer.hung_up:
        log.info("receiver_hung_up")
        return True
    raise MediaFailed(f"media {peer.failure}; send start_receiving to try again")


async def run_answering_receiver(
    host: SessionHost,
    media: MediaTask,
    request: tuple[Stream, str],
    *,
    task_status: TaskStatus[None],
) -> None:
    """A receiver whose client makes the offer (a WHEP player): answer it with the stream's
    audio and play until the stream or the connection ends. No re-offer on a channel: a
    WHEP session has no way to carry one, so the player's session ends with the stream."""
    stream, offer = request
    ctx = host.ctx
    media.log = log = media.log.bind(stream_id=stream.stream_id)
    _check_player_offer(offer)
    async with open_peer(ctx.settings, ctx.metrics.live, log) as peer:
        media.peer = peer
        with _listening(host, stream, log, False, peer) as track:
            await _answer(host, peer, track, offer)
            log.info("receiver_answer_sent")
            task_status.started()
            await _wait_any(stream.ended.wait, peer.failed.wait)
    if not _ended_by(peer, stream, log):
        host.send(p.StreamEnded(stream_id=stream.stream_id, reason=stream.end_reason))


def _check_player_offer(sdp: str) -> None:
    try:
        media = SessionDescription.parse(sdp).media
    except Exception as error:  # aiortc's parser raises assorted errors on garbage
        raise NegotiationError(f"invalid SDP offer: {error}") from None
    audio = [m for m in media if m.kind == "audio"]
    if len(audio) != 1:
        raise NegotiationError(f"offer one audio section to play; this offer has {len(audio)}")
    if audio[0].direction not in ("recvonly", "sendrecv", None):
        raise NegotiationError(
            f"a player's audio section must be recvonly or sendrecv, not {audio[0].direction}"
        )


async def _answer(host: SessionHost, peer: Peer, track: Any, offer: str) -> None:
    """Answer a player's offer with `track`, Opus only (forward mode sends Opus packets)."""
    pc = peer.pc
    offer = opus_only(remote_candidates(host, offer))
    with answering():
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        pc.addTrack(track)
        for transceiver in pc.getTransceivers():
            # Liberal in what a player offers: a sendrecv offer (what `addTransceiver("audio")`
            # makes) is answered sendonly, a valid answer that never reads the player's media;
            # a video section (players that offer video first) is answered inactive.
            transceiver.direction = "sendonly" if transceiver.kind == "audio" else "inactive"
        await pc.setLocalDescription(await pc.createAnswer())
    negotiated_opus_payload_type(pc)  # NegotiationError when the offer had no Opus
    host.send(p.AnswerOut(sdp=peer.local_sdp))


@contextmanager
def _listening(
    host: SessionHost, stream: Stream, log: Any, levels: bool, peer: Peer
) -> Iterator[MediaStreamTrack]:
    """Subscribed to the stream and counted as its receiver, for exactly this block.

    Sync on both sides: entered before the offer, left before the peer connection closes.
    """
    if host.ctx.settings.relay.fast_path and stream.packets is not None:
        with (
            _direct(host, stream, peer) as placeholder,
            _counted(host, stream, log, levels, lambda: None),
        ):
            yield placeholder
        return
    source = stream.receiver_source
    try:
        track = source.subscribe()
    except MediaStreamError:  # it ended between start_receiving and this task's start
        raise SessionStateError(p.NO_STREAM_MESSAGE + f" ({stream.stream_id} has ended)") from None
    with _counted(host, stream, log, levels, lambda: source.unsubscribe(track)):
        yield track


@contextmanager
def _direct(host: SessionHost, stream: Stream, peer: Peer) -> Iterator[Placeholder]:
    """A fast-path receiver (relay.fast_path): the sender's packet handler sends to it."""
    if stream.ended.is_set() or (stream.packets is not None and stream.packets.closed):
        # (it ended between start_receiving and this task's start)
        raise SessionStateError(p.NO_STREAM_MESSAGE + f" ({stream.stream_id} has ended)")
    live = host.ctx.metrics.live
    placeholder = Placeholder()
    peer.red = host.ctx.settings.relay.red  # the DirectSender writes RED where it is accepted
    stream.direct[host.connection_id] = DirectSender(peer, host.ctx.metrics)
    live.relay_subscriptions += 1
    try:
        yield placeholder
    finally:
        stream.direct.pop(host.connection_id, None)
        live.relay_subscriptions -= 1
        placeholder.stop()


@contextmanager
def _counted(
    host: SessionHost, stream: Stream, log: Any, levels: bool, release: Callable[[], None]
) -> Iterator[None]:
    """Counted as the stream's receiver for this block; `release` undoes the subscription."""
    registry = host.ctx.registry
    try:
        levels_to = host.send_or_drop if levels else None
        registry.add_receiver(stream, host.info, levels_to, host.ctx.settings.streams.max_receivers)
    except BaseException:
        release()
        raise
    log.info("relay_subscribe", receivers=len(stream.receivers))
    try:
        yield
    finally:
        registry.remove_receiver(stream, host.info)
        release()
        log.info("relay_unsubscribe")


async def _offer(host: SessionHost, peer: Peer, track: Any, stream: Stream) -> None:
    # sendonly: a receiver's client has nothing to send, and any track it did send would be
    # decoded into a queue nobody reads.
    peer.pc.addTransceiver(track, direction="sendonly")
    try:
        await peer.pc.setLocalDescription(await peer.pc.createOffer())
    except NoFreeMediaPort as error:
        raise MediaUnavailable(str(error.strerror or error)) from None
    host.send(p.Offer(sdp=peer.local_sdp, stream_id=stream.stream_id))


def _check_answer(sdp: str) -> None:
    try:
        media = SessionDescription.parse(sdp).media
    except Exception as error:  # aiortc's parser raises assorted errors on garbage
        raise NegotiationError(f"cannot use this answer: {error}") from None
    sending = [m.direction for m in media if m.direction in ("sendrecv", "sendonly")]
    if len(media) != 1 or sending:
        found = f"{len(media)} section(s)" + (f", {', '.join(sending)}" if sending else "")
        raise NegotiationError(
            "cannot use this answer: a receiver answers with one recvonly (or inactive) "
            f"audio section; this one has {found}"
        )


async def _accept_answer(host: SessionHost, media: MediaTask, peer: Peer, timeout: float) -> None:
    with anyio.move_on_after(timeout):
        answer = await media.wait_answer()
        sdp = remote_candidates(host, answer.sdp)
        _check_answer(sdp)
        try:
            await peer.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        except Exception as error:  # aiortc raises ValueError, KeyError, ... on a bad answer
            raise NegotiationError(f"cannot use this answer: {error}") from None
        return
    raise NegotiationError(f"no answer to the offer within {timeout:g} s")


async def _wait_any(*waits: Callable[[], Awaitable[Any]]) -> None:
    """Return as soon as one of the waits returns; the others are cancelled."""
    async with anyio.create_task_group() as tg:

        async def _one(wait: Callable[[], Awaitable[Any]]) -> None:
            await wait()
            tg.cancel_scope.cancel()

        for wait in waits:
            tg.start_soon(_one, wait)
