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
    """Unset: ``online.key_prefix``."""
    cluster: bool | None = None
    """``url`` is a node of a Redis Cluster (unset: ``services.redis_cluster``)."""

    def redis_url(self) -> str:
        return self.url or LocalStack(get_settings()).info().redis_url

    def online_store(self) -> OnlineStore:
        settings = get_settings()
        online = settings.online
        if self.key_prefix is not None:
            online = online.model_copy(update={"key_prefix": self.key_prefix})
        cluster = settings.services.redis_cluster if self.cluster is None else self.cluster
        return OnlineStore(self.redis_url(), online=online, cluster=cluster)


defs = dg.Definitions(resources={"redis": RedisResource()})
