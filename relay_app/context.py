"""RelayContext: what every session and endpoint of one server shares, built by create_app."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio

from .config import Settings
from .metrics import Metrics
from .registry import StreamRegistry

if TYPE_CHECKING:
    from .cluster import Cluster
    from .upstream import Upstreams


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
    # (other nodes' streams relayed here). None on a single node.
    cluster: Cluster | None = None
    upstreams: Upstreams | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> RelayContext:
        ctx = cls(settings=settings, registry=StreamRegistry(settings))
        if settings.cluster.redis_url is not None:
            from .cluster import Cluster  # (redis is imported only by a cluster node)
            from .upstream import Upstreams

            ctx.cluster = ctx.registry.cluster = Cluster(settings.cluster, ctx.registry)
            ctx.upstreams = Upstreams(ctx)
            ctx.cluster.on_gone = ctx.upstreams.origin_gone
        return ctx
