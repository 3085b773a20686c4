"""What this node asks of the cluster, and a single node's answer: `LocalCluster`.

`ClusterView` (the directory of every node's streams) and `UpstreamOpener` (links to other
nodes' streams) are defined here, below the cluster, so that nothing but the server's wiring
imports the cluster package. Every node has both: a single node a `LocalCluster`, which holds
nothing elsewhere, so its holder of every channel is this node and every lookup finds only
this node's streams; a cluster node the Redis directory and its upstreams (cluster/attach.py
puts them in its place when `cluster.redis_url` is set). The code that asks calls the same
methods either way: no "is there a cluster?" test outside this module and cluster/.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any, Protocol

from anyio.abc import TaskGroup

from ..core.errors import NoStreamError
from ..core.protocol import NO_STREAM_MESSAGE, StreamInfo
from .stream import Stream

# Prometheus samples of one metric: (label values, value) each.
Samples = list[tuple[tuple[str, ...], float]]


class RemoteRecord(Protocol):
    """Another node's live stream, as the cluster's directory lists it."""

    @property
    def stream_id(self) -> str: ...
    @property
    def node_id(self) -> str: ...
    @property
    def started_at(self) -> float: ...


class ClusterView(Protocol):
    """This node's part of the cluster and its view of the other nodes."""

    @property
    def node_id(self) -> str | None:
        """This node's name in the cluster, which node tokens are made for (None: one node)."""
        ...

    @property
    def heartbeat_interval(self) -> float:
        """How often the other nodes' streams are read again (never, on one node)."""
        ...

    @property
    def remote(self) -> Mapping[str, RemoteRecord]:
        """The other nodes' live streams by stream id, as last read."""
        ...

    def stream_infos(self, local: list[Stream]) -> list[StreamInfo]:
        """This node's live streams merged with the other nodes' (receivers cluster-wide)."""
        ...

    def holder(self, stream_id: str) -> str | None:
        """The other node whose sender has this stream id, if any (None: this node's)."""
        ...

    def streams_changed(self) -> None:
        """A stream was added or removed here: tell the cluster now, not at the next beat."""
        ...

    def health(self) -> dict[str, Any]:
        """What `/health` adds to its body (its `cluster`)."""
        ...

    def view(self) -> dict[str, Any] | None:
        """`/metrics`' `cluster`."""
        ...

    def gauges(self) -> Iterator[tuple[str, Samples]]:
        """`/metrics`' cluster gauges for Prometheus, by metric name (endpoints/prometheus.py
        declares them)."""
        ...

    async def run(self) -> None:
        """Keep the directory up to date until cancelled (a ROOT task)."""
        ...


class UpstreamOpener(Protocol):
    """Links to other nodes' streams (cluster/upstream.py on a cluster node)."""

    async def open(self, stream_id: str) -> Stream:
        """A local stream relaying another node's `stream_id` (one link per stream)."""
        ...

    def serve_in(self, group: TaskGroup | None) -> None:
        """The task group (ROOT) links run in while the server serves; None when it stops."""
        ...


class LocalCluster:
    """A single node as a cluster of one: no other node, no directory to keep, nothing to
    link to. Its views are what a single node has always shown: the streams are this node's
    own, `/health` has no `cluster`, `/metrics` says `"cluster": null` and no cluster gauges."""

    node_id: str | None = None  # node tokens are made for a cluster node: none opens here
    heartbeat_interval = math.inf  # nothing elsewhere to look for
    remote: Mapping[str, RemoteRecord] = MappingProxyType({})

    def stream_infos(self, local: list[Stream]) -> list[StreamInfo]:
        return [s.info() for s in local]

    def holder(self, stream_id: str) -> str | None:
        return None

    def streams_changed(self) -> None:
        pass  # nobody else to tell

    def health(self) -> dict[str, Any]:
        return {}

    def view(self) -> dict[str, Any] | None:
        return None

    def gauges(self) -> Iterator[tuple[str, Samples]]:
        yield from ()

    async def run(self) -> None:
        pass  # nothing to keep up to date

    # The UpstreamOpener: no other node's stream is ever listed here, so none is opened.
    async def open(self, stream_id: str) -> Stream:
        raise NoStreamError(f"{NO_STREAM_MESSAGE} (no stream {stream_id!r})")

    def serve_in(self, group: TaskGroup | None) -> None:
        pass
