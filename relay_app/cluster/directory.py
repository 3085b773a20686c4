"""Cluster mode: several relay nodes, one set of streams, coordinated through Redis.

Each node serves its own senders and receivers exactly as a single node does; Redis only holds
a directory, so that every node can list every stream and open an upstream (upstream.py) to
the node a stream comes from. What is in Redis (docs/cluster.md) expires on its own, so a node
that dies without a word disappears within `cluster.node_ttl`:

    relay_app:node:<node_id>      {node_id, advertise_url, started_at, receivers: {stream: n}}
    relay_app:stream:<stream_id>  {stream_id, node_id, advertise_url, started_at, channel}
                                  written, refreshed and deleted by the stream's own node
    relay_app:revoked:<token_id>  {token_id, until}: a token an operator withdrew (Remove) on
                                  any node, expiring with the token; each node adds what it
                                  reads to its own Revocations and ends who holds it
    relay_app:events              pub/sub: {"event": "stream_started"|"stream_ended"|"revoked",
                                  ...} so the other nodes look again at once, not at their
                                  next beat

    ROOT
    └── Cluster.run          reconnects with backoff while Redis is away
        └── REDIS            one task group per Redis connection
            ├── _beat        every heartbeat_interval, or at once when a local stream starts
            │                or ends: write this node's records, read everyone's
            └── _listen      the events channel -> wake _beat

Local service never waits for Redis: without it the cluster view is this node's own streams
and `/health` says `"redis": "unreachable"` (still 200). On its return the next beat writes
this node's streams again, and every withdrawal it knows of (a Redis that lost its data
learns them back). A withdrawal once read is kept by the node until the token expires,
whatever becomes of Redis.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
from redis import asyncio as aioredis
from redis.exceptions import RedisError

from ..core.auth import MAX_TTL, Revocations
from ..core.config import ClusterSettings
from ..core.logs import get_logger
from ..core.protocol import StreamInfo
from ..streams.cluster_view import Samples
from ..streams.registry import StreamRegistry
from ..streams.stream import Stream

PREFIX = "relay_app:"
EVENTS = PREFIX + "events"
NODE_KEY = PREFIX + "node:"
STREAM_KEY = PREFIX + "stream:"
REVOKED_KEY = PREFIX + "revoked:"
MAX_BACKOFF = 5.0

# Deletes a stream's record only while it is still the one this node wrote (a sender that
# took the channel over on another node has written its own since).
_DELETE_IF_OURS = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)


@dataclass(frozen=True)
class RemoteStream:
    """Another node's live stream, as its record in Redis says."""

    stream_id: str
    node_id: str
    advertise_url: str
    started_at: float
    channel: str | None


# How long a channel may be between speakers on its node before its links here end: past the
# longest streams.channel_wait_timeout its links' far ends have let them go anyway.
MAX_PAUSE = 3600.0


def default_node_id() -> str:
    return f"{socket.gethostname()}-{secrets.token_hex(3)}"


@dataclass(eq=False)
class Cluster:
    """This node's part of the cluster, and its view of the others (the registry's ClusterView,
    in a single node's LocalCluster's place)."""

    settings: ClusterSettings
    registry: StreamRegistry
    # auth.secret: every record this node writes is signed with it, and a record that does
    # not carry a valid signature is ignored (Redis is storage, not a party we trust).
    secret: str | None = None
    node_id: str = field(default_factory=default_node_id)
    # The other nodes' streams and nodes as last read; empty while Redis is away.
    remote: dict[str, RemoteStream] = field(default_factory=dict)
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    redis_up: bool = False
    # Called with (stream_id, reason) when another node's stream is gone from the directory
    # (ended, or its node died): its upstream here ends (upstream.py).
    on_gone: Callable[[str, str], None] = lambda stream_id, reason: None
    _wake: anyio.Event | None = None  # made in run(): an anyio.Event needs the loop
    _written: dict[str, str] = field(default_factory=dict)  # stream_id -> the record we wrote
    _started_at: float = field(default_factory=time.time)
    _rejected: set[str] = field(default_factory=set)  # keys already logged as forged
    # Channels between two speakers on a node that lives: (where they were, since when).
    _paused: dict[str, tuple[RemoteStream, float]] = field(default_factory=dict)
    # The context's withdrawn tokens (attach.py): this node's are written to Redis, the
    # other nodes' read from it. Those still to write: token id -> until.
    revocations: Revocations = field(default_factory=Revocations)
    _unwritten: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.node_id = self.settings.node_id or self.node_id
        self.log = get_logger(node_id=self.node_id)
        self.revocations.listeners.append(self._withdrawn)

    def _withdrawn(self, ids: dict[str, float], origin: str) -> None:
        """An operator withdrew tokens here: written at once (the next beat, woken now)."""
        if origin == "local":
            self._unwritten.update(ids)
            self.streams_changed()

    # The registry's ClusterView -----------------------------------------------------------
    @property
    def heartbeat_interval(self) -> float:
        return self.settings.heartbeat_interval

    def streams_changed(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def holder(self, stream_id: str) -> str | None:
        remote = self.remote.get(stream_id)
        return remote.node_id if remote is not None else None

    def stream_infos(self, local: list[Stream]) -> list[StreamInfo]:
        """Every node's streams; a stream's receivers are counted on every node it is heard."""
        counts = self._receivers_elsewhere()
        infos: dict[str, StreamInfo] = {
            r.stream_id: StreamInfo(
                stream_id=r.stream_id,
                started_at=r.started_at,
                receivers=0,
                channel=r.channel,
                node=r.node_id,
            )
            for r in self.remote.values()
        }
        for stream in local:
            counts[stream.stream_id] = counts.get(stream.stream_id, 0) + stream.listeners
            if stream.stream_id not in infos:  # this node's own, or relayed while Redis is away
                infos[stream.stream_id] = stream.info(self.node_id)
        return sorted(
            (
                i.model_copy(update={"receivers": counts.get(i.stream_id, 0)})
                for i in infos.values()
            ),
            key=lambda info: info.started_at,
        )

    def _receivers_elsewhere(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for node_id, record in self.nodes.items():
            if node_id != self.node_id:
                for stream_id, n in record.get("receivers", {}).items():
                    counts[stream_id] = counts.get(stream_id, 0) + int(n)
        return counts

    def view(self) -> dict[str, Any]:
        """`/metrics`' `cluster`."""
        return {
            "node_id": self.node_id,
            "redis": "connected" if self.redis_up else "unreachable",
            "nodes": sorted(self.nodes),
            "streams": [
                {"stream_id": i.stream_id, "node": i.node, "receivers": i.receivers}
                for i in self.stream_infos(self.registry.live_streams())
            ],
        }

    def health(self) -> dict[str, Any]:
        """`/health`'s `cluster`: the view, its streams counted."""
        view = self.view()
        return {"cluster": {**view, "streams": len(view["streams"])}}

    def gauges(self) -> Iterator[tuple[str, Samples]]:
        view = self.view()
        yield "relay_cluster_redis_up", [((), int(self.redis_up))]
        yield "relay_cluster_nodes", [((), len(view["nodes"]))]
        yield (
            "relay_cluster_stream_receivers",
            [((s["stream_id"], s["node"]), s["receivers"]) for s in view["streams"]],
        )

    # Redis ----------------------------------------------------------------------------------
    async def run(self) -> None:
        """Keep this node in the cluster for as long as the server runs (a ROOT task)."""
        backoff, first = 0.5, True
        while True:
            client = aioredis.from_url(
                self.settings.redis_url,  # type: ignore[arg-type]  # set: the cluster runs
                socket_timeout=max(1.0, self.settings.heartbeat_interval),
                socket_connect_timeout=1.0,
            )
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._listen, client)
                    await self._beat_forever(client)
            except Exception as error:  # a ROOT child: it logs its own failures and goes on
                failure = _redis_failure(error)
                if failure is None:
                    self.log.error("cluster_error", exc_info=error)
                elif self.redis_up or first:  # once per outage, not per retry
                    backoff = 0.5
                    self.log.warning("cluster_redis_unreachable", error=failure)
                self._degrade()
            finally:
                with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                    await client.aclose()
            first = False
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    def _degrade(self) -> None:
        """Redis is away: the view is this node's own streams; upstreams run on (their links
        go straight to the origin nodes), and everything is written again on return."""
        self.redis_up = False
        self.remote, self.nodes = {}, {}
        self._written.clear()
        self._unwritten = self.revocations.items()  # all of them again, once it is back

    async def _beat_forever(self, client: aioredis.Redis) -> None:
        while True:
            self._wake = wake = anyio.Event()
            await self._beat(client)
            if not self.redis_up:
                self.redis_up = True
                self.log.info("cluster_joined", nodes=sorted(self.nodes), redis="connected")
            with anyio.move_on_after(self.settings.heartbeat_interval):
                await wake.wait()

    async def _beat(self, client: aioredis.Redis) -> None:
        """Write this node's records (publishing starts and ends), then read everyone's."""
        ttl = int(self.settings.node_ttl * 1000)
        advertise = self.settings.advertise_url
        live = self.registry.live_streams()
        own = {s.stream_id: s for s in live if s.origin is None}
        pipe = client.pipeline(transaction=False)
        node = {
            "node_id": self.node_id,
            "advertise_url": advertise,
            "started_at": self._started_at,
            "receivers": {s.stream_id: s.listeners for s in live if s.listeners},
        }
        pipe.set(NODE_KEY + self.node_id, self._sign(NODE_KEY + self.node_id, node), px=ttl)
        events = []
        records = {
            stream_id: self._written.get(stream_id) or self._record(stream)
            for stream_id, stream in own.items()
        }
        for stream_id, record in records.items():
            pipe.set(STREAM_KEY + stream_id, record, px=ttl)
            if stream_id not in self._written:
                events.append({"event": "stream_started", "stream_id": stream_id})
        ended = [stream_id for stream_id in self._written if stream_id not in own]
        for stream_id in ended:
            pipe.eval(_DELETE_IF_OURS, 1, STREAM_KEY + stream_id, self._written[stream_id])
            events.append({"event": "stream_ended", "stream_id": stream_id})
        revoked, now = dict(self._unwritten), time.time()
        for token_id, until in revoked.items():
            # (bounded: Redis refuses an expiry past its range, and one refused record would
            # fail the whole beat, every beat)
            if (left := int(min(until - now, MAX_TTL) * 1000)) > 0:
                withdrawal = {"token_id": token_id, "until": until}
                key = REVOKED_KEY + token_id
                pipe.set(key, self._sign(key, withdrawal), px=left)
        if revoked:
            events.append({"event": "revoked"})
        for event in events:
            pipe.publish(EVENTS, json.dumps({**event, "node_id": self.node_id}))
        await pipe.execute()
        self._written = records
        for token_id in revoked:  # (withdrawn meanwhile: written at the next beat)
            if self._unwritten.get(token_id) == revoked[token_id]:
                del self._unwritten[token_id]
        await self._read(client)

    def _record(self, stream: Stream) -> str:
        record = {
            "stream_id": stream.stream_id,
            "node_id": self.node_id,
            "advertise_url": self.settings.advertise_url,
            "started_at": stream.started_at,
            "channel": stream.channel,
        }
        return self._sign(STREAM_KEY + stream.stream_id, record)

    def _sign(self, key: str, record: dict[str, Any]) -> str:
        """The value written under `key`: the record, signed when there is a secret. The key
        is part of what is signed, so a record cannot be replayed under another name."""
        body = json.dumps(record)
        if self.secret is None:
            return body
        return json.dumps({"signed": body, "sig": _signature(self.secret, key, body)})

    def _open(self, key: str, value: bytes | str) -> Any:
        """The record stored under `key`, if it is ours (signed with our secret)."""
        data = json.loads(value)
        if self.secret is None:
            return data
        body, sig = data.get("signed"), data.get("sig")
        good = isinstance(body, str) and isinstance(sig, str)
        if good and hmac.compare_digest(sig, _signature(self.secret, key, body)):
            return json.loads(body)
        if key not in self._rejected:  # once per key: a planted record is re-read every beat
            self._rejected.add(key)
            self.log.warning("cluster_record_rejected", key=key, reason="bad or no signature")
        raise ValueError("unsigned record")

    async def _read(self, client: aioredis.Redis) -> None:
        keys = [key async for key in client.scan_iter(match=PREFIX + "*:*", count=1000)]
        values = await client.mget(keys) if keys else []
        nodes: dict[str, dict[str, Any]] = {}
        remote: dict[str, RemoteStream] = {}
        revoked: list[tuple[str, float]] = []
        for key, value in zip(keys, values, strict=True):
            if value is None:  # expired between SCAN and MGET
                continue
            try:
                name = key.decode()
                record = self._open(name, value)
                if name.startswith(NODE_KEY):
                    receivers = record.get("receivers")
                    record["receivers"] = receivers if isinstance(receivers, dict) else {}
                    nodes[str(record["node_id"])] = record
                elif name.startswith(STREAM_KEY) and record["node_id"] != self.node_id:
                    remote[str(record["stream_id"])] = RemoteStream(
                        stream_id=str(record["stream_id"]),
                        node_id=str(record["node_id"]),
                        advertise_url=str(record["advertise_url"]),
                        started_at=float(record["started_at"]),
                        channel=record.get("channel"),
                    )
                elif name.startswith(REVOKED_KEY):
                    revoked.append((str(record["token_id"]), float(record["until"])))
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # not one of our records (another program's key under the prefix)
        gone = gone_streams(self.remote, remote, nodes, self._paused)
        left = sorted(self.nodes.keys() - nodes.keys())
        self.remote, self.nodes = remote, nodes
        for token_id, until in revoked:  # (those known already change nothing)
            if self.revocations.revoke([token_id], until, origin="cluster"):
                self.log.info("cluster_token_withdrawn", token_id=token_id[:8], until=until)
        for node_id in left:
            self.log.warning("cluster_node_gone", gone_node=node_id)
        for stream_id, was, reason in gone:
            self.log.info(
                "cluster_stream_gone", stream_id=stream_id, origin=was.node_id, reason=reason
            )
            self.on_gone(stream_id, reason)

    async def _listen(self, client: aioredis.Redis) -> None:
        """Other nodes' stream starts and ends: look again now."""
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(EVENTS)
            while True:
                message = await pubsub.get_message(timeout=1.0)
                if message is not None and message.get("type") == "message":
                    try:
                        origin = json.loads(message["data"]).get("node_id")
                    except (ValueError, AttributeError):
                        origin = None  # not one of ours: looking again costs one read
                    if origin != self.node_id:
                        self.streams_changed()  # another node's start or end: look now
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                await pubsub.aclose()


def _signature(secret: str, key: str, body: str) -> str:
    message = f"{key}\n{body}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def _redis_failure(error: BaseException) -> str | None:
    """What went wrong with Redis, if that is what `error` (or its group) is; else None."""
    if isinstance(error, RedisError | OSError):
        return f"{type(error).__name__}: {error}"
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            if (found := _redis_failure(inner)) is not None:
                return found
    return None


def gone_streams(
    was: dict[str, RemoteStream],
    remote: dict[str, RemoteStream],
    nodes: dict[str, Any],
    paused: dict[str, tuple[RemoteStream, float]],
) -> list[tuple[str, RemoteStream, str]]:
    """Other nodes' streams gone since the last read (`was`), and why.

    A channel between two speakers on a node that lives is not gone: the links to it
    (upstream.py) wait there on their connections, as its own listeners do, and the channel's
    next speaker on that node plays on them without a break. It is kept in `paused` and is
    gone when its node dies, when it comes back on another node (the links here must move
    there), or once it was away for MAX_PAUSE."""
    gone, now = [], time.monotonic()
    for stream_id, old in was.items():
        found = remote.get(stream_id)
        if found is not None and found.node_id == old.node_id:
            continue
        if found is None and old.channel is not None and old.node_id in nodes:
            paused.setdefault(stream_id, (old, now))
            continue
        gone.append((stream_id, old))
    for stream_id, (old, since) in list(paused.items()):
        found = remote.get(stream_id)
        back = found is not None and found.node_id == old.node_id
        if found is not None or old.node_id not in nodes or now - since > MAX_PAUSE:
            del paused[stream_id]
            if not back:
                gone.append((stream_id, old))
    return [
        (
            stream_id,
            old,
            f"node {old.node_id} is gone" if old.node_id not in nodes else "the sender left",
        )
        for stream_id, old in gone
    ]
