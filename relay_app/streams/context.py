"""RelayContext: what every session and endpoint of one server shares, built by create_app."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import anyio
from anyio.abc import TaskGroup

from ..audio.recorder import Recorder
from ..core.auth import Revocations
from ..core.config import Settings
from ..core.metrics import Metrics
from ..webrtc.batched_reads import BatchedReads
from .names import Names
from .registry import ClusterView, StreamRegistry
from .stream import Stream


class UpstreamOpener(Protocol):
    """Cluster mode's links to other nodes' streams (cluster/upstream.py)."""

    async def open(self, stream_id: str) -> Stream:
        """A local stream relaying another node's `stream_id` (one link per stream)."""
        ...

    def serve_in(self, group: TaskGroup | None) -> None:
        """The task group (ROOT) links run in while the server serves; None when it stops."""
        ...


@dataclass(eq=False)
class RelayContext:
    settings: Settings
    registry: StreamRegistry
    metrics: Metrics = field(default_factory=Metrics)
    # Set when the process starts shutting down: sessions close with 1001 instead of waiting
    # for the server to cut them off. Made at lifespan startup: an anyio.Event needs the loop.
    shutting_down: anyio.Event | None = None
    # True between lifespan startup and shutdown: the root task group (sweeper) is running.
    serving: bool = False
    # Cluster mode (cluster.redis_url): this node's part of the cluster, and its upstreams
    # (other nodes' streams relayed here), attached by cluster/attach.py. None on one node.
    cluster: ClusterView | None = None
    upstreams: UpstreamOpener | None = None
    # Peers' sockets read in batches where nothing they carry is urgent (a receiver's once
    # connected, an unheard sender's); its reader runs in ROOT.
    reads: BatchedReads = field(default_factory=BatchedReads)
    # Tokens an operator withdrew (the console's Remove): every door refuses them (the
    # guard); in cluster mode shared through Redis. Numbers for people without a name.
    revocations: Revocations = field(default_factory=Revocations)
    names: Names = field(default_factory=Names)
    # Every recording's writer (in ROOT): a channel's recording spans its speakers.
    recorder: Recorder = field(init=False)

    def __post_init__(self) -> None:
        self.recorder = Recorder(self.settings.recording, self.metrics)

    @classmethod
    def from_settings(cls, settings: Settings) -> RelayContext:
        """A single node's context; the server attaches the cluster when it is configured."""
        return cls(settings=settings, registry=StreamRegistry(settings))
