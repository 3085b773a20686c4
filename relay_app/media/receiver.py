"""A receiver's media task: subscribe to a stream, offer it (or answer a player's offer), play
until the listener leaves; on a channel, each next sender on the same peer connection.

Being fed by a stream and counted as its receiver (`_attached`: its output in the stream's
outputs) are sync and undone before the peer connection closes or follows the channel's next
sender: a receiver is counted exactly while it listens. What the peer connection sends
(plane/outputs.Sending) outlives the channel's senders: its sequence numbers and timestamps
go on across a handover (fast_path.py, plane/timeline.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import anyio
from aiortc import RTCSessionDescription
from aiortc.sdp import SessionDescription
from anyio.abc import TaskStatus

from ..core import protocol as p
from ..core.errors import MediaFailed, MediaUnavailable, NegotiationError, SessionStateError
from ..plane.outputs import Sending
from ..streams.finder import next_on_channel
from ..streams.stream import Stream
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
    """Play `stream`; for a channel, then each next sender on it, on the same peer connection,
    until the session stops it (`_follow_channel`)."""
    stream, ctx = request.stream, host.ctx
    media.log = log = media.log.bind(stream_id=stream.stream_id)
    async with _peer(host, media, stream) as (peer, sending):
        with _attached(host, stream, log, request.levels, sending):
            await _offer(host, peer, sending, stream)
            log.info("receiver_offer_sent")
            task_status.started()
            await _accept_answer(host, media, peer, ctx.settings.webrtc.negotiation_timeout)
            await _wait_any(stream.ended.wait, peer.failed.wait)
        await _follow_channel(host, media, peer, sending, stream, request.levels)


async def run_answering_receiver(
    host: SessionHost,
    media: MediaTask,
    request: tuple[Stream, str],
    *,
    task_status: TaskStatus[None],
) -> None:
    """A receiver whose client makes the offer (a WHEP player): answer it with the stream's
    audio and play, a channel's next senders too, on the same peer connection."""
    stream, offer = request
    media.log = log = media.log.bind(stream_id=stream.stream_id)
    _check_player_offer(offer)
    async with _peer(host, media, stream) as (peer, sending):
        with _attached(host, stream, log, False, sending):
            await _answer(host, peer, sending, offer)
            log.info("receiver_answer_sent")
            task_status.started()
            await _wait_any(stream.ended.wait, peer.failed.wait)
        await _follow_channel(host, media, peer, sending, stream, False)


@asynccontextmanager
async def _peer(
    host: SessionHost, media: MediaTask, stream: Stream
) -> AsyncIterator[tuple[Peer, Sending]]:
    """The receiver's one peer connection and what it sends, for the whole session (how:
    the stream's strategy says, plane/factory.py)."""
    ctx = host.ctx
    async with open_peer(ctx.settings, ctx.metrics.live, media.log) as peer:
        media.peer = peer
        sending = stream.strategy.sending(peer, ctx.metrics)
        try:
            # Once connected, nothing its sockets bring (RTCP reports, STUN) is urgent.
            with ctx.reads.watching(peer.pc, lambda: peer.connected):
                yield peer, sending
        finally:
            sending.stop()
            media.peer = None


async def _follow_channel(
    host: SessionHost, media: MediaTask, peer: Peer, sending: Sending, stream: Stream, levels: bool
) -> None:
    """After `stream` ended: a channel's receiver stays on its peer connection and plays each
    next sender (a takeover, a reconnect, the next speaker after a pause), told by
    `stream_ended` (waiting) and `stream_started`, never a new offer; an unnamed stream's
    receiver, or one whose channel stays empty past streams.channel_wait_timeout, is done."""
    settings = host.ctx.settings
    while True:
        if _ended_by(peer, stream, media.log):
            return  # the listener hung up: the session stays, nothing to tell it
        channel = stream.channel
        host.send(
            p.StreamEnded(
                stream_id=stream.stream_id,
                reason=stream.end_reason,
                waiting=channel is not None,
                message=stream.told_to_listeners(),
                by=stream.end_by,
            )
        )
        if channel is None:
            return
        media.log.info("receiver_waiting", channel=channel)
        following = await _next_sender(host, channel, peer, settings.streams.channel_wait_timeout)
        if following is None:
            if not _ended_by(peer, stream, media.log):
                waited = settings.streams.channel_wait_timeout
                media.log.info("receiver_wait_ended", channel=channel, waited=waited)
                host.send(
                    p.StreamEnded(
                        stream_id=channel,
                        reason=f"no sender for {waited:g} s",
                        waiting=False,
                        message=f"Nobody has spoken on {stream.label or channel} for a while.",
                    )
                )
            return
        stream = following
        media.log = log = media.log.bind(stream_id=stream.stream_id)
        host.send(p.StreamStarted(stream_id=stream.stream_id, label=stream.label))
        with _attached(host, stream, log, levels, sending):
            log.info("receiver_followed", channel=channel)
            await _wait_any(stream.ended.wait, peer.failed.wait)


async def _next_sender(
    host: SessionHost, channel: str, peer: Peer, timeout: float
) -> Stream | None:
    """The channel's next stream; None if the listener left or none came within `timeout`."""
    found: Stream | None = None

    async def find() -> None:
        nonlocal found
        found = await next_on_channel(host.ctx, channel)

    async def keep_heard() -> None:
        # Nothing is sent while the channel is empty, so the listener's reports about it stop;
        # ICE consent (which fails the connection) is its liveness meanwhile.
        while True:
            peer.last_heard = anyio.current_time()
            await anyio.sleep(1)

    with anyio.move_on_after(timeout):
        await _wait_any(find, peer.failed.wait, keep_heard)
    peer.last_heard = anyio.current_time()
    return found


def _ended_by(peer: Peer, stream: Stream, log: Any) -> bool:
    """Why the playing ended: the stream (False), the listener hanging up (True, logged at
    info: an ordinary end), or a media failure (MediaFailed)."""
    if not peer.failed.is_set() and stream.ended.is_set():
        return False
    if peer.hung_up:
        log.info("receiver_hung_up")
        return True
    raise MediaFailed(f"media {peer.failure}; send start_receiving to try again")


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


async def _answer(host: SessionHost, peer: Peer, sending: Sending, offer: str) -> None:
    """Answer a player's offer with what `sending` sends, Opus only (forward mode sends
    Opus packets)."""
    pc = peer.pc
    offer = opus_only(remote_candidates(host, offer))
    with answering():
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        pc.addTrack(sending.track)
        sending.added()
        for transceiver in pc.getTransceivers():
            # Liberal in what a player offers: a sendrecv offer (what `addTransceiver("audio")`
            # makes) is answered sendonly, a valid answer that never reads the player's media;
            # a video section (players that offer video first) is answered inactive.
            transceiver.direction = "sendonly" if transceiver.kind == "audio" else "inactive"
        await pc.setLocalDescription(await pc.createAnswer())
    negotiated_opus_payload_type(pc)  # NegotiationError when the offer had no Opus
    host.send(p.AnswerOut(sdp=peer.local_sdp))


@contextmanager
def _attached(
    host: SessionHost, stream: Stream, log: Any, levels: bool, sending: Sending
) -> Iterator[None]:
    """Fed by `stream` and counted as its receiver, for exactly this block: its output is in
    the stream's outputs (the handover's re-pointing: `Sending.output`).

    Sync on both sides: entered before the offer (or on a channel's next sender), left before
    the peer connection closes or follows the next sender.
    """
    if stream.ended.is_set() or stream.outputs.closed:
        # (it ended between start_receiving and this task's start)
        raise SessionStateError(p.NO_STREAM_MESSAGE + f" ({stream.stream_id} has ended)")
    registry = host.ctx.registry
    output = sending.output(host.connection_id)
    output.levels = host.send_or_drop if levels else None
    output.tell = host.send  # every listener hears of its speaker vanishing (sender.py)
    try:
        registry.add_receiver(stream, host.info, output, host.ctx.settings.streams.max_receivers)
    except BaseException:
        output.close()
        raise
    log.info("relay_subscribe", receivers=stream.receivers)
    if stream.lost_since is not None:
        host.send(stream.lost_notice())
    try:
        yield
    finally:
        registry.remove_receiver(stream, output)
        log.info("relay_unsubscribe")


async def _offer(host: SessionHost, peer: Peer, sending: Sending, stream: Stream) -> None:
    # sendonly: a receiver's client has nothing to send, and any track it did send would be
    # decoded into a queue nobody reads.
    peer.pc.addTransceiver(sending.track, direction="sendonly")
    sending.added()
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
