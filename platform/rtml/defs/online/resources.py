"""The online feature store's Redis."""

from __future__ import annotations

import dagster as dg

from rtml.config import get_settings
from rtml.features.online import OnlineStore
from rtml.stack.local import LocalStack


class RedisResource(dg.ConfigurableResource):
    """Without a configured URL it resolves the running local stack's Redis lazily, so loading the
    definitions never needs a server."""

    url: str | None = None
    key_prefix: str | None = None
    """Unset: ``online_key_prefix``."""
    cluster: bool | None = None
    """``url`` is a node of a Redis Cluster (unset: ``redis_cluster``)."""

    def redis_url(self) -> str:
        return self.url or LocalStack(get_settings()).info().redis_url

    def online_store(self) -> OnlineStore:
        return OnlineStore(self.redis_url(), key_prefix=self.key_prefix, cluster=self.cluster)


defs = dg.Definitions(resources={"redis": RedisResource()})
