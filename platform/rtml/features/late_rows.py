"""Late rows: transactions landed for hours whose features are already built.

The hourly refresh rebuilds only its own hour, so rows of an older hour (a landing file of a past day)
would never reach the features. A late row at time t changes
- its own hour (``stg_transactions``, its own ``customer_features`` row, ``merchant_daily`` of its day),
- the customer window features (1h / 24h / 7d / 30d, new merchant, previous transaction) of the same
  customer's transactions up to 30 days after t (the longest window),
- the merchant features (7d / 30d, as of the start of each day) of the 30 days after t's day.

So the features must be rebuilt over the hours from t's hour to 31 days after the latest late row (the
merchant windows are whole days), but never past the newest hour already built: later hours are built
by the schedule anyway, and with the late rows. :func:`rebuild_window` computes that window;
``rtml.defs.features.sensors`` requests it as one single-run backfill of the incremental dbt models,
then the online tables.

Late rows arrive two ways: landing files (the sensor reads the event-time range the landing asset
records), and, where the stream feeds ``raw.transactions`` (``transactions_feed=stream``), the lander's
micro-batches, whose receipts in ``raw.loads`` (sources ``stream:...``, with the loaded rows' event-time
range) :func:`stream_loads_since` and :func:`late_stream_rows` read. A stream row is late when its hour
is built (before ``features_built_until``) and ``staging.stg_transactions`` does not hold it: exact
whenever the sensor looks, so a receipt read after the refresh of its hour (the sensor waits while a
refresh runs) is late only if that refresh did not see its rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg

from rtml.streaming.lander import LANDER_APPLICATION_NAME

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


@dataclass(frozen=True)
class StreamLoads:
    """The lander's receipts in ``raw.loads`` with ``loaded_at`` in [since, cutoff)."""

    cutoff: datetime | None
    """Every receipt with ``loaded_at`` before it is visible now: the next read starts here (None: not
    read)."""
    loads: int
    """Receipts in the range with loaded rows."""


def stream_loads_since(database_url: str, since: datetime | None) -> StreamLoads:
    """How many lander receipts (sources ``stream:...``) were written since ``since`` (None: ever), up to a
    cutoff before which none can still appear.

    A receipt's ``loaded_at`` is its transaction's start (``now()``), and it becomes visible at the
    commit: a receipt read later may carry an older ``loaded_at`` than one read now. So the cutoff is the
    start of the oldest lander transaction still open (sessions with ``application_name`` =
    ``LANDER_APPLICATION_NAME``), or now, read in a statement BEFORE the receipts' own: every
    transaction that started before the cutoff has ended by then, so its receipt is visible to the
    second statement's snapshot. (The sensor's role must see the lander sessions' ``xact_start`` in
    ``pg_stat_activity``: the same role, or ``pg_read_all_stats``.)"""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "select least(clock_timestamp(), min(xact_start)) from pg_stat_activity "
            "where application_name = %s and datname = current_database() and pid <> pg_backend_pid()",
            (LANDER_APPLICATION_NAME,),
        ).fetchone()
        assert row is not None
        cutoff: datetime = row[0]
        exists = conn.execute("select to_regclass('raw.loads')").fetchone()
        if exists is None or exists[0] is None:
            return StreamLoads(cutoff, 0)
        counted = conn.execute(
            "select count(*) from raw.loads where kind = 'transactions' and source like 'stream:%%' "
            "and min_ts is not null and loaded_at >= %s and loaded_at < %s",
            (since or datetime.min.replace(tzinfo=UTC), cutoff),
        ).fetchone()
    return StreamLoads(cutoff, int(counted[0]) if counted else 0)


@dataclass(frozen=True)
class LateStreamRows:
    rows: int
    first_event: datetime
    last_event: datetime
    loads: int
    """Receipts (micro-batches) the late rows came with."""


def late_stream_rows(
    database_url: str, since: datetime | None, cutoff: datetime, built_until: datetime | None
) -> LateStreamRows | None:
    """Rows of the lander's receipts with ``loaded_at`` in [since, cutoff) that lie in built hours (before
    ``built_until``) and are missing from ``staging.stg_transactions``: landed after their hour was
    built. None when there are none. The rows are found as the loader finds a source's rows (source and
    its receipt's time range, through the time index), over the receipts' time range only."""
    if built_until is None:
        return None
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            """
            with receipts as (
                select source, min_ts, max_ts from raw.loads
                where kind = 'transactions' and source like 'stream:%%' and min_ts is not null
                  and loaded_at >= %(since)s and loaded_at < %(cutoff)s and min_ts < %(built)s
            )
            select count(*), min(t.event_ts), max(t.event_ts), count(distinct t.source)
            from raw.transactions t
            join receipts r on r.source = t.source and t.event_ts between r.min_ts and r.max_ts
            where t.event_ts >= (select min(min_ts) from receipts) and t.event_ts < %(built)s
              and not exists (
                  select 1 from staging.stg_transactions s where s.transaction_id = t.transaction_id
              )
            """,
            {"since": since or datetime.min.replace(tzinfo=UTC), "cutoff": cutoff, "built": built_until},
        ).fetchone()
    if row is None or not row[0]:
        return None
    return LateStreamRows(int(row[0]), row[1], row[2], int(row[3]))
