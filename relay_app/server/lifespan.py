"""ROOT: the server's own task group, opened in the lifespan and closed at shutdown.

The lifespan hook (`while_serving`) is the one place a task group is held across a `yield`.
ROOT owns the stale-stream sweeper, the stats clock, the batched socket reader, the memory
trimmer, the WHIP/WHEP resources and, on a cluster node, the directory and the upstreams. Its
children log their own errors, so one bad sweep cannot cancel it. Sessions do not live in
ROOT: each runs in the task Hypercorn gives its WebSocket, inside its own SESSION group
(signaling/session.py).
"""

from __future__ import annotations

import ctypes
from collections.abc import AsyncGenerator
from contextlib import nullcontext

import anyio
from quart import Quart

from .. import __version__
from ..core.config import unreachable_limits
from ..core.logs import get_logger
from ..signaling.http_peers import HttpPeers
from ..streams.context import RelayContext
from ..streams.stream import EndCause

log = get_logger("relay_app.app")


def serve_root(app: Quart, ctx: RelayContext, http_peers: HttpPeers) -> None:
    """Open ROOT when the server starts serving; cancel and close it when it stops."""
    settings = ctx.settings

    @app.while_serving
    async def _root() -> AsyncGenerator[None, None]:
        ctx.shutting_down = anyio.Event()
        # The one UDP port (webrtc.udp_port) is open while ROOT is, closed after it.
        mux = ctx.reads.mux
        async with (
            mux.serving() if mux is not None else nullcontext(),
            anyio.create_task_group() as root,
        ):
            http_peers.serve_in(root)
            ctx.recorder.serve_in(root)
            root.start_soon(sweep_stale_streams, ctx)
            ctx.upstreams.serve_in(root)
            root.start_soon(ctx.cluster.run)  # (a single node's returns at once)
            root.start_soon(stats_clock, ctx)
            root.start_soon(ctx.reads.run)
            if settings.relay.memory_trim_interval > 0:
                root.start_soon(trim_memory, ctx, settings.relay.memory_trim_interval)
            ctx.serving = True
            log.info("server_started", version=__version__)
            for old, new in settings.moved_keys:
                log.warning("config_key_moved", key=old, new_key=new, hint=f"move it to {new}")
            for problem in unreachable_limits(settings):
                log.warning("config_limit_unreachable", problem=problem)
            try:
                yield
            finally:
                ctx.serving = False
                http_peers.serve_in(None)
                ctx.recorder.serve_in(None)
                ctx.shutting_down.set()
                root.cancel_scope.cancel()
        log.info("server_stopped")


async def sweep_stale_streams(ctx: RelayContext) -> None:
    """End streams that have carried no audio for `streams.stale_after` seconds.

    The backstop: a speaker once heard is watched per packet by its own session
    (media/sender.py's watch_speaker: listeners told after 1 s, the channel freed after
    streams.speaker_lost_after), so this sweep ends what that watch does not see: a stream
    that never carried a packet, and (cluster mode) a stream relayed from another node."""
    settings = ctx.settings.streams
    while True:
        await anyio.sleep(settings.cleanup_interval)
        try:
            now = anyio.current_time()
            for stream in ctx.registry.live_streams():
                silent_for = now - stream.last_audio_at
                if silent_for > settings.stale_after and not stream.between_speakers:
                    log.warning(
                        "stale_stream_cleanup",
                        stream_id=stream.stream_id,
                        connection_id=stream.sender_id,
                        reason="no audio",
                        silent_seconds=round(silent_for, 1),
                    )
                    stream.end(EndCause.STALE, f"stale: no audio for {silent_for:.0f} s")
        except Exception:  # a ROOT child logs its own bugs: one bad sweep must not stop ROOT
            log.exception("stale_sweep_failed")


async def stats_clock(ctx: RelayContext, interval: float = 60.0) -> None:
    """Log the live counts once a minute: the guide's `log_stats`, built in."""
    while True:
        await anyio.sleep(interval)
        live = ctx.metrics.live.statistics()
        log.info(
            "stats",
            connections=len(ctx.registry.sessions),
            streams=len(ctx.registry.streams),
            peer_connections=live.peer_connections,
            relay_subscriptions=live.relay_subscriptions,
        )


async def trim_memory(ctx: RelayContext, interval: float) -> None:
    """Hand the heap that ended sessions freed back to the OS (glibc only).

    Why: a peer connection allocates and frees native memory (DTLS, SRTP, sockets) in the
    middle of glibc's heap, and glibc returns only the heap's top by itself. Measured under
    churn (bench/soak.py with glibc's malloc_stats): the heap's in-use bytes stay flat while its
    size grows with every few sessions; `malloc_trim` releases those free pages. But it holds
    glibc's locks while it walks the heap, so every thread that allocates (the event loop,
    decoders, transcode encoders) waits: a trim landing mid-stream was heard as a pitch error
    in a browser test. So: when no stream is live, trim a second after sessions stop ending;
    while audio flows, at most every `interval` seconds, and only if sessions ended since.
    """
    try:
        malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        log.info("memory_trim_unavailable")
        return
    metrics, registry = ctx.metrics, ctx.registry

    def ended() -> int:
        return metrics.sessions_total - metrics.live.sessions

    trimmed = seen = ended()
    last_trim = anyio.current_time()
    while True:
        await anyio.sleep(1.0)
        now, count = anyio.current_time(), ended()
        quiet, seen = count == seen, count
        due = (quiet and not registry.live_streams()) or now - last_trim >= interval
        if count != trimmed and due:
            try:
                await anyio.to_thread.run_sync(malloc_trim, 0)
            except Exception:  # a ROOT child logs its own bugs; trimming is best effort
                log.exception("memory_trim_failed")
            trimmed, last_trim = count, now
