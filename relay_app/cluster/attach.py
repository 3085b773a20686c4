"""Make a server a cluster node: the only place the server's wiring reaches into `cluster/`.

Imported only when `cluster.redis_url` is set, so a single node never imports Redis.
"""

from __future__ import annotations

from ..streams.context import RelayContext
from .directory import Cluster
from .upstream import Upstreams


def attach_cluster(ctx: RelayContext) -> None:
    """The Redis directory behind the registry's ClusterView, upstreams behind the context's
    UpstreamOpener; the directory ends a relayed stream here when its origin's goes."""
    secret = ctx.settings.auth.secret
    signing = secret.get_secret_value() if secret is not None else None
    cluster = Cluster(
        ctx.settings.cluster, ctx.registry, secret=signing, revocations=ctx.revocations
    )
    if signing is None:
        cluster.log.warning(
            "cluster_records_unsigned",
            hint="without auth.secret the directory's records are not signed: anyone who "
            "can write to Redis can point this node's listeners elsewhere; set auth.secret",
        )
    upstreams = Upstreams(ctx, cluster)
    cluster.on_gone = upstreams.origin_gone
    ctx.registry.cluster = cluster  # (the context's too) in the LocalCluster's place
    ctx.upstreams = upstreams
