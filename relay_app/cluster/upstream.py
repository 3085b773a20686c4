"""Upstreams: another node's stream relayed to this node's receivers over one link.

A receiver asking this node for a stream whose sender is on another node (cluster.py knows
where) gets it through an upstream: this node connects to the origin's `/ws` as a receiver
(`start_receiving` with `upstream: true`, a node token when auth is on), taps the RTP it gets
and registers a local `Stream` from it. From there on the local receivers are served exactly
as if the sender were here (fast path included): one link per stream per node, however many
receivers. In forward mode nothing is decoded (the tap skips aiortc's jitter buffer and
decoder); in transcode mode the link's track is decoded once, as a sender's is.

    ROOT
    └── Upstreams._run      one per relayed stream
        └── LINK            its RelayClient's task group (the WebSocket to the origin)
            └── UPSTREAM    until the stream ends here: watch the origin's messages,
                            keep the link alive, close after `upstream_linger` without
                            receivers, (transcode) decode

The local stream ends when the origin's does (its reason is passed on), when the link drops,
when the directory says the stream is gone, or after the linger; every local receiver then
gets `stream_ended`. Its `finally` unregisters it, so no upstream outlives its use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup

from ..client import RelayClient, ServerError
from ..core import protocol as p
from ..core.auth import mint
from ..core.errors import MediaUnavailable, NoStreamError, RelayError, sole_error
from ..core.logs import get_logger
from ..core.protocol import NO_STREAM_MESSAGE
from ..plane.path import frame_path, tap_stream
from ..streams.stream import EndCause, SessionInfo, Stream, new_stream
from ..webrtc.fanout import pump
from ..webrtc.rtp_tap import negotiated_opus_payload_type
from ..webrtc.udp_mux import own_sockets
from .directory import Cluster, RemoteStream

if TYPE_CHECKING:
    from ..streams.context import RelayContext
    from .directory import RemoteStream

# Node tokens are short-lived and bound to one stream and the node they are sent to, so one
# that leaks (to whoever a directory record pointed at) plays nothing anywhere else, briefly.
NODE_TOKEN_TTL = 120.0  # a link sends a fresh node token every half of it (_keep_alive)
LINGER_POLL = 0.25  # seconds between looks at a relayed stream's receivers


@dataclass(eq=False)
class Upstream:
    """One relayed stream: its link's state, for the receivers waiting on it to open."""

    remote: RemoteStream
    ready: anyio.Event = field(default_factory=anyio.Event)
    stream: Stream | None = None
    error: RelayError | None = None
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    closed: anyio.Event = field(default_factory=anyio.Event)


class Upstreams:
    """This node's upstreams by stream id, and the task group (ROOT) they run in."""

    def __init__(self, ctx: RelayContext, cluster: Cluster) -> None:
        self.ctx = ctx
        self.cluster = cluster
        self.links: dict[str, Upstream] = {}
        self._group: TaskGroup | None = None

    def serve_in(self, group: TaskGroup | None) -> None:
        self._group = group

    async def open(self, stream_id: str) -> Stream:
        """The local copy of another node's stream, opening its upstream unless one is open
        already (the context's UpstreamOpener)."""
        remote = self.cluster.remote.get(stream_id)
        if remote is None:
            raise NoStreamError(f"{NO_STREAM_MESSAGE} (no stream {stream_id!r} in the cluster)")
        link = self.links.get(remote.stream_id)
        if link is not None and link.stream is not None and link.stream.ended.is_set():
            await link.closed.wait()  # on its way out: let it go, then open a new one
            link = None
        if link is None:
            if self._group is None:
                raise MediaUnavailable("the server is shutting down")
            link = self.links[remote.stream_id] = Upstream(remote)
            self._group.start_soon(self._run, link)
        with anyio.move_on_after(self.ctx.settings.webrtc.negotiation_timeout + 5):
            await link.ready.wait()
        if link.stream is None or link.stream.ended.is_set():
            raise link.error or MediaUnavailable(
                f"stream {remote.stream_id!r} is on node {remote.node_id}, which did not "
                "answer in time; try again"
            )
        return link.stream

    def origin_gone(self, stream_id: str, reason: str) -> None:
        """The directory no longer lists the stream (cluster.py): end it here too."""
        link = self.links.get(stream_id)
        if link is None:
            return
        if link.stream is not None:
            link.stream.end(EndCause.CONNECTION_FAILED, reason)
        else:
            link.scope.cancel()

    async def _run(self, link: Upstream) -> None:
        remote = link.remote
        log = get_logger(role="upstream", stream_id=remote.stream_id, origin=remote.node_id)
        live = self.ctx.metrics.live
        live.upstreams += 1
        try:
            with link.scope:
                await _relay(self.ctx, self.cluster, link, log)
        except Exception as error:  # a ROOT child: its failure is the waiting receivers' error
            link.error = _as_relay_error(error, remote)
            log.warning("upstream_failed", error=link.error.message)
        finally:
            live.upstreams -= 1
            if self.links.get(remote.stream_id) is link:
                del self.links[remote.stream_id]
            link.ready.set()
            link.closed.set()


def node_token(ctx: RelayContext, cluster: Cluster, remote: RemoteStream) -> str | None:
    """What this node shows `remote`'s origin to relay that one stream (auth on)."""
    secret = ctx.settings.auth.secret
    if secret is None:
        return None
    return mint(
        secret.get_secret_value(),
        "node",
        NODE_TOKEN_TTL,
        stream=remote.stream_id,
        subject=cluster.node_id,
        to=remote.node_id,
    )


async def _relay(ctx: RelayContext, cluster: Cluster, link: Upstream, log: Any) -> None:
    remote, settings = link.remote, ctx.settings
    token = node_token(ctx, cluster, remote)
    async with RelayClient.connect(remote.advertise_url, token=token, open_timeout=5) as client:
        await client.send(p.StartReceiving(stream_id=remote.stream_id, upstream=True))
        offer = await client.receive(p.Offer, timeout=settings.webrtc.negotiation_timeout)
        tracks: list[Any] = []
        with own_sockets():  # (not on webrtc.udp_port: the origin may serve on the same one)
            await client.answer_offer(offer, on_track=lambda pc, track: tracks.append(track))
        assert client.pc is not None and tracks
        metrics = ctx.metrics
        stream = new_stream(
            settings.relay,
            metrics,
            stream_id=remote.stream_id,
            sender_id=f"node:{remote.node_id}",
            source=tracks[0],
            channel=remote.channel,
            clock=ctx.registry.clock(remote.channel),
            started_at=remote.started_at,
            origin=remote.node_id,
        )
        # Forward: only the tap (no jitter buffer, no decode); transcode: decoded once here.
        receiver = client.pc.getReceivers()[0]
        opus = negotiated_opus_payload_type(client.pc)
        tap_stream(receiver, metrics, stream, opus)
        holder = SessionInfo(f"upstream-{remote.stream_id}", remote.advertise_url, "sender")
        ctx.registry.add_stream(stream)
        link.stream = stream
        link.ready.set()
        log.info("upstream_opened", url=remote.advertise_url)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_watch_origin, client, stream)
                interval = settings.webrtc.connection_timeout / 2
                tg.start_soon(_keep_alive, ctx, cluster, remote, client, interval)
                tg.start_soon(_linger, stream, settings.cluster.upstream_linger)
                tg.start_soon(pump, stream.source, frame_path(metrics, stream))  # (transcode)
                await stream.ended.wait()
                tg.cancel_scope.cancel()
        finally:
            stream.end(EndCause.CONNECTION_FAILED, f"the link to node {remote.node_id} closed")
            ctx.registry.remove_stream(stream, holder)
            stream.close_relays()
            log.info("upstream_closed", reason=stream.end_reason)


async def _watch_origin(client: RelayClient, stream: Stream) -> None:
    """The origin's word on the stream: its end (and why) is the end here too. A channel's
    handover on the origin (`waiting`, then `stream_started`: the next speaker) is not an
    end: the link stays on its connection and the next sender's audio comes on it, so this
    node's listeners stay on theirs and follow without a break, told as the origin's own
    listeners are."""
    try:
        while True:
            message = await client.next_message(timeout=float("inf"))
            if isinstance(message, p.StreamEnded) and message.waiting:
                stream.between_speakers = True  # (no audio for a while: not stale)
            elif isinstance(message, p.StreamStarted):
                stream.between_speakers = False
                stream.last_audio_at = anyio.current_time()
            waiting = isinstance(message, p.StreamEnded) and message.waiting
            if (waiting or isinstance(message, p.StreamStarted)) and stream.channel:
                for tell in stream.outputs.told():  # (an end they hear from this stream's end)
                    tell(message)
            if isinstance(message, p.StreamEnded) and not message.waiting:
                stream.end(EndCause.SENDER_LEFT, message.reason)
                return
            if isinstance(message, p.Error):
                stream.end(EndCause.CONNECTION_FAILED, f"origin: {message.message}")
                return
    except anyio.EndOfStream:
        stream.end(EndCause.CONNECTION_FAILED, f"the link to node {stream.origin} closed")


async def _keep_alive(
    ctx: RelayContext, cluster: Cluster, remote: RemoteStream, client: RelayClient, interval: float
) -> None:
    """The link plays without decoding, so no RTCP reports tell the origin it is alive; and
    a link outlives its node token, so it sends a fresh one well before the old expires."""
    renewed = anyio.current_time()
    while True:
        await anyio.sleep(interval)
        await client.send(p.Ping())
        if anyio.current_time() - renewed > NODE_TOKEN_TTL / 2:
            if (token := node_token(ctx, cluster, remote)) is not None:
                await client.send(p.Auth(token=token))
            renewed = anyio.current_time()


async def _linger(stream: Stream, linger: float) -> None:
    """End the stream here after `linger` seconds without local receivers or listeners."""
    idle_since: float | None = None
    while True:
        await anyio.sleep(LINGER_POLL)
        if stream.outputs.heard():
            idle_since = None
            continue
        now = anyio.current_time()
        idle_since = now if idle_since is None else idle_since
        if now - idle_since >= linger:
            stream.end(EndCause.NO_RECEIVERS)
            return


def _as_relay_error(caught: Exception, remote: RemoteStream) -> RelayError:
    error = sole_error(caught)
    if isinstance(error, RelayError):
        return error
    if isinstance(error, ServerError):
        return NoStreamError(f"node {remote.node_id} refused the upstream: {error}")
    return MediaUnavailable(
        f"cannot reach node {remote.node_id} for stream {remote.stream_id!r} "
        f"({type(error).__name__}: {error}); try again"
    )
