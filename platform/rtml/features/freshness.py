"""How fresh the feature store is: the newest event time each feature view includes, offline (the
dbt tables in PostgreSQL) and online (the push in Redis, from its namespace's ``as_of_us``).

Published as ``rtml_feature_newest_event_timestamp_seconds`` (``rtml.monitoring.metrics``); Prometheus
derives the lag (``time() -`` it), so the lag keeps growing when pushes stop.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg

from rtml.features.feature_registry import FeatureRegistry, get_registry


def offline_newest(database_url: str, registry: FeatureRegistry | None = None) -> dict[str, datetime | None]:
    """View → newest event time (its ``timestamp_field``) in its PostgreSQL table, the view's relation
    in the registry (default: the dbt manifest's); None: empty or not built yet."""
    registry = registry or get_registry()
    out: dict[str, datetime | None] = {}
    with psycopg.connect(database_url) as conn:
        for name, view in registry.views.items():
            exists = conn.execute("select to_regclass(%s)", (view.relation,)).fetchone()
            if exists is None or exists[0] is None:
                out[name] = None
                continue
            row = conn.execute(f"select max({view.timestamp_field}) from {view.relation}").fetchone()
            out[name] = None if row is None else _aware(row[0])
    return out


def online_newest(store: Any) -> dict[str, datetime | None]:
    """View → newest event time of the pushed namespace (``OnlineStore``; None: never pushed)."""
    out: dict[str, datetime | None] = {}
    for view in store.views:
        as_of_us = store.meta(view).get("as_of_us") or ""
        out[view] = datetime.fromtimestamp(int(as_of_us) / 1e6, UTC) if as_of_us else None
    return out


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value
