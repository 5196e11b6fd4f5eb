"""How fresh the feature store is: the newest event time each feature view includes, offline (the
dbt tables in PostgreSQL) and online (the push in Redis, from its namespace's ``as_of_us``).

Published as ``rtml_feature_newest_event_timestamp_seconds`` (``rtml.monitoring.metrics``); Prometheus
derives the lag (``time() -`` it), so the lag keeps growing when pushes stop.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg

OFFLINE_COLUMNS = {"customer_features": "event_ts", "merchant_features": "feature_ts"}
"""The view's table in the ``features`` schema and its event-time column."""


def offline_newest(database_url: str) -> dict[str, datetime | None]:
    """View → newest event time in its PostgreSQL table (None: empty or not built yet)."""
    out: dict[str, datetime | None] = {}
    with psycopg.connect(database_url) as conn:
        for view, column in OFFLINE_COLUMNS.items():
            exists = conn.execute("select to_regclass(%s)", (f"features.{view}",)).fetchone()
            if exists is None or exists[0] is None:
                out[view] = None
                continue
            row = conn.execute(f"select max({column}) from features.{view}").fetchone()
            out[view] = None if row is None else _aware(row[0])
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
