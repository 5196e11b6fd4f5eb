"""The online feature store's Redis (chosen per environment in ``rtml.defs.resources``)."""

from __future__ import annotations

import dagster as dg

from rtml.config import get_settings
from rtml.features.online import OnlineStore
from rtml.stack.local import LocalStack


class RedisResource(dg.ConfigurableResource):
    """The online store's Redis."""

    key_prefix: str | None = None
    """Unset: ``online.key_prefix``."""
    cluster: bool | None = None
    """The URL names a node of a Redis Cluster (unset: ``services.redis_cluster``)."""

    def redis_url(self) -> str:
        raise NotImplementedError

    def online_store(self) -> OnlineStore:
        settings = get_settings()
        online = settings.online
        if self.key_prefix is not None:
            online = online.model_copy(update={"key_prefix": self.key_prefix})
        cluster = settings.services.redis_cluster if self.cluster is None else self.cluster
        return OnlineStore(self.redis_url(), online=online, cluster=cluster)


class RedisServer(RedisResource):
    url: str

    def redis_url(self) -> str:
        return self.url


class LocalRedis(RedisResource):
    """The local stack's Redis, looked up when first asked."""

    def redis_url(self) -> str:
        return LocalStack(get_settings()).info().redis_url
