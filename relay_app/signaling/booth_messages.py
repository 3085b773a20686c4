"""A WebSocket session's booth messages (media/booth.py has the booth itself): waiting for
one's turn on a channel, which is the session's media task while it waits, and handing the
channel one speaks on to a speaker waiting there."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core import protocol as p
from ..media.booth import check_waiting, hand_over, run_waiting
from ..media.host import require_no_media

if TYPE_CHECKING:
    from .session import PeerSession


async def booth_request(session: PeerSession, message: p.WaitToSpeak | p.HandOver) -> None:
    """`wait_to_speak` (the session's media task while it waits) or `hand_over`."""
    if isinstance(message, p.HandOver):
        hand_over(session.ctx, session.info, message.to)
        return
    check_waiting(message, session.grant, session.ctx)
    await no_media_but_waiting(session, "wait_to_speak")  # (waiting anew, or elsewhere)
    await session._start_media("waiting", run_waiting, message)


async def no_media_but_waiting(session: PeerSession, what: str) -> None:
    """`require_no_media`, but a speaker waiting for their turn first stops waiting (their
    turn came: start_sending; or they wait anew)."""
    if session._media is not None and session._media.role == "waiting":
        await session._stop_media()
    require_no_media(session._media, what)
