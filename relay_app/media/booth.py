"""The interpreters' booth: speakers waiting for their turn on a channel, and the hand-over.

An interpreter's booth partner is a session that waits on the channel (`wait_to_speak`):
its role is "waiting" while `run_waiting` runs, as the media task of its session (one at a
time, ended by `stop`, by a start_sending or by the session's end), so it holds no media and
costs the channel's listeners nothing. The live speaker (`hand_over`) or the operator (POST
/admin/channels/<channel>/handover) tells a waiting speaker `your_turn`; their client then
takes the channel over (start_sending with takeover), make before break: the channel's
listeners hear the old speaker until the new one's first packet (plane/path.py).

The channel's speaker and its waiting speakers are told `booth` (who speaks, who waits)
whenever that changes. What a speaker hears in the booth (the floor, or the interpreter they
relay) is an ordinary listener: a second WebSocket session of the Speak page, which a send
token may open on any configured channel (`check_booth_receiving`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio
from anyio.abc import TaskStatus

from ..core import protocol as p
from ..core.auth import Grant
from ..core.config import Settings
from ..core.errors import SessionStateError
from ..streams.context import RelayContext
from ..streams.stream import UNNAMED_PREFIX, SessionInfo, name_of
from .host import MediaTask, SessionHost, check_may_take_over, label_of

OPERATOR = "the operator"  # who hands over from the console (`your_turn`'s `by`)


def check_waiting(message: p.WaitToSpeak, grant: Grant | None, ctx: RelayContext) -> None:
    """What `wait_to_speak` must pass: the channel is open to senders here, and (auth on) its
    token may take the channel over when its turn comes (a send token scoped to it)."""
    ctx.registry.check_channel_open(message.channel)
    if grant is not None:
        check_may_take_over(grant, message.channel, ctx.settings)
        grant.check_sending(message.channel, takeover=True)


async def run_waiting(
    host: SessionHost, media: MediaTask, message: p.WaitToSpeak, *, task_status: TaskStatus[None]
) -> None:
    """Wait on the channel until the session stops it (its media task: see session.py)."""
    ctx, info, channel = host.ctx, host.info, message.channel
    media.log = media.log.bind(stream_id=channel)
    info.tell = host.send  # (your_turn, booth)
    info.role, info.stream_id, info.waiting_since = "waiting", channel, time.time()
    task_status.started()
    media.log.info("speaker_waiting", channel=channel)
    tell_booth(ctx, channel)
    try:
        await anyio.sleep_forever()
    finally:
        # (sync, before anyone is told: the booth no longer lists this session)
        if info.role == "waiting":
            info.role, info.stream_id = "idle", None
        media.log.info("speaker_waiting_ended", channel=channel)
        tell_booth(ctx, channel)


def waiting_on(ctx: RelayContext, channel: str) -> list[SessionInfo]:
    """The speakers waiting on `channel`, longest waiting first."""
    waiting = [
        info
        for info in ctx.registry.sessions.values()
        if info.role == "waiting" and info.stream_id == channel
    ]
    return sorted(waiting, key=lambda info: info.waiting_since)


def booth_of(ctx: RelayContext, channel: str) -> p.Booth:
    live = ctx.registry.streams.get(channel)
    speaking = live.speaker if live is not None and not live.ended.is_set() else None
    return p.Booth(
        channel=channel,
        label=label_of(ctx.settings, channel),
        speaking=speaking,
        waiting=[name_of(info, "A speaker") for info in waiting_on(ctx, channel)],
    )


def tell_booth(ctx: RelayContext, channel: str | None) -> None:
    """Tell the channel's speaker and the speakers waiting on it who speaks and who waits.
    Never blocks (each session queues it); nothing for an unnamed stream or its listeners."""
    if channel is None or channel.startswith(UNNAMED_PREFIX):
        return
    booth = booth_of(ctx, channel)
    registry = ctx.registry
    live = registry.streams.get(channel)
    speaker = registry.sessions.get(live.sender_id) if live is not None else None
    waiting = waiting_on(ctx, channel)
    if speaker is None and not waiting:
        return
    for info in [speaker, *waiting] if speaker is not None else waiting:
        if info.tell is not None:
            info.tell(booth)


def hand_over(ctx: RelayContext, info: SessionInfo, to: str | None) -> SessionInfo:
    """The channel's live speaker (`info`) hands it to a speaker waiting on it: `to` by name,
    else whoever has waited longest. They are told `your_turn`; the channel changes hands when
    their sound arrives. SessionStateError, in words, when there is nothing to hand over."""
    channel = info.stream_id if info.role == "sender" else None
    live = ctx.registry.streams.get(channel) if channel is not None else None
    if channel is None or live is None or live.channel is None or live.ended.is_set():
        raise SessionStateError(
            "You are not speaking on a channel, so there is nothing to hand over."
        )
    if live.sender_id != info.connection_id:
        raise SessionStateError("Someone else is taking this channel over already.")
    return give_turn(ctx, channel, lambda each: to is None or name_of(each, "") == to, live.speaker)


def give_turn(
    ctx: RelayContext, channel: str, chosen: Callable[[SessionInfo], bool], by: str
) -> SessionInfo:
    """Tell the first (longest) waiting speaker on `channel` that `chosen` picks: your_turn."""
    label = label_of(ctx.settings, channel)
    waiting = waiting_on(ctx, channel)
    if not waiting:
        raise SessionStateError(f"Nobody is waiting to speak on {label}.", http_status=409)
    partner = next((each for each in waiting if chosen(each)), None)
    if partner is None:
        raise SessionStateError(
            f"That speaker is not waiting to speak on {label} (any more).", http_status=409
        )
    assert partner.tell is not None  # (set by every session that can wait)
    partner.tell(p.YourTurn(channel=channel, label=label, by=by))
    return partner


def check_booth_receiving(
    grant: Grant, stream_id: str | None, upstream: bool, ctx: RelayContext
) -> str | None:
    """`Grant.check_receiving`, and the booth's one addition: a token that may send (a
    speaker's, an interpreter's) may also hear any configured channel, the floor or the
    interpreter they relay, on a listener session of its own."""
    settings = ctx.settings
    if (
        not upstream
        and grant.allows_sending()
        and stream_id is not None
        and stream_id in settings.channels
        and not grant.allows_receiving(stream_id)
    ):
        grant.check_unexpired()
        return stream_id
    return grant.check_receiving(stream_id, upstream, ctx.cluster.node_id)


def booth_listable(grant: Grant, settings: Settings) -> Callable[[str], bool]:
    """What `get_available_streams` lists for this token: what it may receive, and for a
    token that may send, every configured channel (its Speak page picks from them)."""

    def allowed(stream_id: str) -> bool:
        if grant.allows_sending() and stream_id in settings.channels:
            return True
        return grant.allows_receiving(stream_id)

    return allowed


def booth_row(ctx: RelayContext, channel: str) -> dict[str, Any]:
    """What the console's channel row shows of the booth: who speaks, who waits (with the id
    its Hand over button sends), and whether the speaker is lost (no packet for a second:
    sender.py's watch_speaker) with the last packet's time; its level is then stale."""
    live = ctx.registry.streams.get(channel)
    if live is not None and live.ended.is_set():
        live = None
    return {
        "speaking": live.speaker if live is not None else None,
        "waiting": [
            {"connection_id": info.connection_id, "name": name_of(info, "A speaker")}
            for info in waiting_on(ctx, channel)
        ],
        "speaker_lost": live is not None and live.lost_since is not None,
        "silent_since": round(since, 1) if (since := live and live.silent_since) else None,
    }
