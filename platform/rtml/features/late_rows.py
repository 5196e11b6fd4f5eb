"""Late rows: transactions landed for hours whose features are already built.

The hourly refresh rebuilds only its own hour, so rows of an older hour (a landing file of a past day)
would never reach the features. A late row at time t changes
- its own hour (``stg_transactions``, its own ``customer_features`` row, ``merchant_daily`` of its day),
- the customer window features (1h / 24h / 7d / 30d, new merchant, previous transaction) of the same
  customer's transactions up to ``feature_lookback`` (30 days) after t,
- the merchant features (7d / 30d, as of the start of each day) of the 30 days after t's day.

So the features must be rebuilt over the hours from t's hour to 31 days after the latest late row (the
merchant windows are whole days), but never past the newest hour already built: later hours are built
by the schedule anyway, and with the late rows. :func:`rebuild_window` computes that window;
``rtml.defs.features.sensors`` requests it as one single-run backfill of the incremental dbt models,
then the online tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg

HOUR = timedelta(hours=1)
DEPENDENT_WINDOW = timedelta(days=31)
"""How far after a late row features can depend on it: 30-day windows, plus the merchant windows'
alignment to whole UTC days (a row at 00:30 counts for the features as of the start of day + 31)."""


@dataclass(frozen=True)
class RebuildWindow:
    """Hours [start, end) whose features a late load changed (hour-aligned, UTC)."""

    start: datetime
    end: datetime

    @property
    def hours(self) -> int:
        return int((self.end - self.start) / HOUR)

    def partition_keys(self) -> tuple[str, str]:
        """First and last hourly partition key (``%Y-%m-%d-%H:%M``, the transactions partitions)."""
        fmt = "%Y-%m-%d-%H:%M"
        return self.start.strftime(fmt), (self.end - HOUR).strftime(fmt)


def floor_hour(ts: datetime) -> datetime:
    return ts.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def rebuild_window(
    first_event: datetime,
    last_event: datetime,
    built_until: datetime | None,
    dependent: timedelta = DEPENDENT_WINDOW,
) -> RebuildWindow | None:
    """The hours to rebuild after rows with event times in [first_event, last_event] landed, when the
    features are built up to ``built_until`` (exclusive; ``None``: nothing built yet). ``None`` when no
    built hour is affected (the rows lie in hours the schedule has not reached)."""
    if built_until is None:
        return None
    start = floor_hour(first_event)
    end = min(
        floor_hour(last_event) + HOUR + dependent, floor_hour(built_until - timedelta.resolution) + HOUR
    )
    return RebuildWindow(start, end) if start < end else None


def loaded_event_range(database_url: str, source: str) -> tuple[datetime, datetime] | None:
    """Event-time range of the transactions a load ``source`` (a landing file name) wrote, from the
    loader's exact log ``raw.loads``; ``None`` if it loaded no row."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "select min_ts, max_ts from raw.loads where kind = 'transactions' and source = %s", (source,)
        ).fetchone()
    if row is None or row[0] is None:
        return None
    return row[0], row[1]


def features_built_until(database_url: str) -> datetime | None:
    """End of the newest hour whose transactions are in the features (``staging.stg_transactions``,
    which every feature model reads); ``None`` before the first build."""
    with psycopg.connect(database_url) as conn:
        exists = conn.execute("select to_regclass('staging.stg_transactions')").fetchone()
        if exists is None or exists[0] is None:
            return None
        row = conn.execute("select max(event_ts) from staging.stg_transactions").fetchone()
    if row is None or row[0] is None:
        return None
    return floor_hour(row[0]) + HOUR
