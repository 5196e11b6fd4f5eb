"""Is the online store there? Each view is served through its pointer (``keys``); when Redis restarts
(the embedded Valkey keeps nothing on disk), is flushed, or a pointer's TTL lapses, the pointer is gone
and every entity of the view reads as unknown. The self-heal sensor (``rtml.defs.online.sensors``)
looks here and requests a full push from the ``*_latest`` tables. With the speed layer on, its newest
watermark (``{prefix}:speed:meta``) is looked at too, as ``SPEED_LAYER``: gone while dbt's
``customer_stream_snapshot`` has rows, the same push rebuilds it (``OnlineStore.push_speed_snapshot``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from rtml.features.online.source import has_rows
from rtml.features.online.store import OnlineStore
from rtml.monitoring.metrics import Sample
from rtml.streaming.snapshot import snapshot_watermark

SPEED_LAYER = "speed_layer"


@dataclass(frozen=True)
class StoreHealth:
    pointers: dict[str, str | None]
    """View → the namespace its pointer names (None: gone)."""
    redis_run_id: str
    """Redis' ``run_id`` (INFO server): a new one after every restart (a cluster: its primaries')."""
    speed_layer_present: bool | None = None
    """Whether the speed layer's newest watermark is there (None: the speed layer is off)."""

    @property
    def missing(self) -> list[str]:
        """The views whose pointer is gone, and ``SPEED_LAYER`` when its watermark is."""
        gone = [view for view, namespace in self.pointers.items() if not namespace]
        return gone + ([SPEED_LAYER] if self.speed_layer_present is False else [])


def store_health(store: OnlineStore) -> StoreHealth:
    """The views' pointers and the server's run id (``redis.exceptions.RedisError`` when Redis does not
    answer)."""
    if store.cluster:
        primaries: dict[str, Any] = store.client.info("server", target_nodes=redis.RedisCluster.PRIMARIES)
        run_id = ",".join(sorted(str(info.get("run_id", "")) for info in primaries.values()))
    else:
        run_id = str(store.client.info("server").get("run_id", ""))
    speed = None if store.speed is None else store.speed.watermark() is not None
    return StoreHealth(store.current_namespaces(), run_id, speed)


def views_with_rows(database_url: str, store: OnlineStore) -> list[str]:
    """The views whose ``*_latest`` table holds rows (what a full push can rebuild from), and
    ``SPEED_LAYER`` when it is on and ``customer_stream_snapshot`` has rows."""
    views = [name for name, view in store.views.items() if has_rows(database_url, view)]
    if store.speed is not None and snapshot_watermark(database_url) is not None:
        views.append(SPEED_LAYER)
    return views


def presence_samples(views: list[str], health: StoreHealth | None) -> list[Sample]:
    """``rtml_online_view_present`` per view: 1 while its pointer exists; 0 when it is gone or Redis did
    not answer (``health`` None)."""
    return [
        Sample("rtml_online_view_present", float(bool(health and health.pointers.get(view))), {"view": view})
        for view in views
    ]
