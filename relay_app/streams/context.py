"""RelayContext: what every session and endpoint of one server shares, built by create_app."""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio

from ..audio.recorder import Recorder
from ..core.auth import Revocations
from ..core.config import Settings
from ..core.metrics import Metrics
from ..webrtc.batched_reads import BatchedReads
from .cluster_view import ClusterView, LocalCluster, UpstreamOpener
from .names import Names
from .registry import StreamRegistry


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
    # Links to other nodes' streams: none on one node (a LocalCluster); the cluster's
    # upstreams once cluster/attach.py makes this a cluster node (cluster.redis_url).
    upstreams: UpstreamOpener = field(default_factory=LocalCluster)
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

    @property
    def cluster(self) -> ClusterView:
        """This node's part of the cluster (the registry's): a LocalCluster on one node."""
        return self.registry.cluster

    @classmethod
    def from_settings(cls, settings: Settings) -> RelayContext:
        """A single node's context; the server attaches the cluster when it is configured."""
        return cls(settings=settings, registry=StreamRegistry(settings))
