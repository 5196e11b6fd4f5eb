"""Is the online store there? Each view is served through its pointer (``keys``); when Redis restarts
(the embedded Valkey keeps nothing on disk), is flushed, or a pointer's TTL lapses, the pointer is gone
and every entity of the view reads as unknown. The self-heal sensor (``rtml.defs.online.sensors``)
looks here and requests a full push from the ``*_latest`` tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rtml.features.online.source import has_rows
from rtml.features.online.store import OnlineStore
from rtml.monitoring.metrics import Sample


@dataclass(frozen=True)
class StoreHealth:
    pointers: dict[str, str | None]
    """View → the namespace its pointer names (None: gone)."""
    redis_run_id: str
    """Redis' ``run_id`` (INFO server): a new one after every restart."""

    @property
    def missing(self) -> list[str]:
        return [view for view, namespace in self.pointers.items() if not namespace]


def store_health(store: OnlineStore) -> StoreHealth:
    """The views' pointers and the server's run id (``redis.exceptions.RedisError`` when Redis does not
    answer)."""
    info: dict[str, Any] = store.client.info("server")
    return StoreHealth(store.current_namespaces(), str(info.get("run_id", "")))


def views_with_rows(database_url: str, store: OnlineStore) -> list[str]:
    """The views whose ``*_latest`` table holds rows (what a full push can rebuild from)."""
    return [name for name, view in store.views.items() if has_rows(database_url, view)]


def presence_samples(views: list[str], health: StoreHealth | None) -> list[Sample]:
    """``rtml_online_view_present`` per view: 1 while its pointer exists; 0 when it is gone or Redis did
    not answer (``health`` None)."""
    return [
        Sample("rtml_online_view_present", float(bool(health and health.pointers.get(view))), {"view": view})
        for view in views
    ]
