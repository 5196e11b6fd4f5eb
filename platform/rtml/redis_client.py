"""One way to connect to the platform's Redis: a single server, or a Redis Cluster (``redis_cluster``).

Every client of the online store, the speed layer and the stream is made here, so a deployment on a
cluster is one setting. On a cluster, what one script or transaction touches shares a hash slot: each
online view's keys carry the view as hash tag (``rtml.features.online.keys``), each customer's
speed-layer hash its customer id (``rtml.streaming.redis_state``).
"""

from __future__ import annotations

from typing import Any

import redis

Client = redis.Redis | redis.RedisCluster


def connect(url: str, *, cluster: bool = False, **options: Any) -> Any:
    """A redis-py client for ``url`` (``options``: socket timeouts, ``retry``...); with ``cluster``, the
    cluster client, which finds every primary from this one node. Typed ``Any``: the callers use the
    commands both clients share."""
    if cluster:
        return redis.RedisCluster.from_url(url, **options)
    return redis.Redis.from_url(url, **options)


def is_cluster(client: Any) -> bool:
    return isinstance(client, redis.RedisCluster)


def load_scripts(client: Any, *scripts: str) -> None:
    """On a cluster, load scripts on every primary up front: a cluster pipeline sends a raw ``EVALSHA``
    (redis-py blocks ``Script`` objects there), which does not load a missing script."""
    if is_cluster(client):
        for script in scripts:
            client.script_load(script)
