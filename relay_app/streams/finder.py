"""Which stream a receiver plays: this node's own, or, in cluster mode, another node's through
an upstream. Every door asks here (a /ws receiver, a WHEP player, an Ogg listener, and a
receiver or listener waiting on a channel), so all of them hear every node's streams with the
same errors, and none knows whether there is a cluster: a single node's `ctx.cluster` is a
LocalCluster, which lists no other node's streams, so this is the registry's own lookup.
"""

from __future__ import annotations

from typing import Any

import anyio

from ..core.errors import RelayError, SessionStateError
from .context import RelayContext
from .stream import Stream


async def stream_to_play(
    ctx: RelayContext, stream_id: str | None, log: Any, link: bool = False
) -> Stream:
    """The live stream a receiver asked for (`None`: the newest): this node's own, or another
    node's via an upstream. NoStreamError when there is none, SessionStateError (404) when it
    has ended, MediaUnavailable when its node does not answer; each is logged on `log`.

    An upstream (`link`) is served only from this node's own streams: no relaying of a
    relayed stream, so links never loop.
    """
    registry, cluster = ctx.registry, ctx.cluster
    if link:
        stream = registry.find_live_stream(stream_id, log)
        if stream.origin is not None:
            raise SessionStateError(
                f"{stream.stream_id} is relayed here from node {stream.origin}; link to it there"
            )
        return stream
    local = {s.stream_id: s for s in registry.live_streams()}
    if stream_id is None and (local or cluster.remote):  # the newest in the cluster
        started = [(s.started_at, s.stream_id) for s in local.values()]
        started += [(r.started_at, r.stream_id) for r in cluster.remote.values()]
        stream_id = max(started)[1]
    if stream_id is not None and stream_id not in local and stream_id in cluster.remote:
        remote = cluster.remote[stream_id]
        log.info("upstream_requested", stream_id=stream_id, origin=remote.node_id)
        return await ctx.upstreams.open(stream_id)
    return registry.find_live_stream(stream_id, log)


async def next_on_channel(ctx: RelayContext, channel: str) -> Stream:
    """The channel's next stream for a waiting receiver: a sender here, or (cluster mode) on
    any node, looked for once per heartbeat while none is here (one node has no beat: it
    waits for a sender here)."""
    registry, cluster = ctx.registry, ctx.cluster
    while True:
        with anyio.move_on_after(cluster.heartbeat_interval):
            return await registry.next_stream(channel)
        if channel in cluster.remote:
            try:
                return await ctx.upstreams.open(channel)
            except RelayError:
                pass  # (logged as upstream_failed) the next beat may find it again
