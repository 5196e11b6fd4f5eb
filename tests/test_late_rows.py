"""Late rows: a landing file of a past day reaches the features of that day and of every later window
that covers it. Real PostgreSQL, real dbt, the real landing asset and sensor on a Dagster instance.

The world: four simulated days built with ``dbt run --full-refresh``. A landing file then brings extra
transactions of day two (existing customers and merchants). The landing asset records their event-time
range; ``late_rows_sensor`` requests one rebuild from their hour to the newest built hour; the rebuild
(the dbt part of ``late_rows_job``: the incremental models over that window, then the ``*_latest``
tables) must give exactly what a full refresh of the same raw data gives.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pandas as pd
import psycopg
import pytest
import redis

from rtml.config import get_settings
from rtml.definitions import defs
from rtml.defs.automation.tags import RANGE_TAGS
from rtml.defs.features.sensors import (
    LATE_ROWS_FILES_TAG,
    LATE_ROWS_STREAM_TAG,
    LateRowsCursor,
    late_rows_job,
    late_rows_sensor,
)
from rtml.defs.ingestion.assets import transactions_landing
from rtml.defs.ingestion.partitions import landing_file_partitions
from rtml.defs.resources import PostgresServer
from rtml.features.dbt import run_dbt, window_env
from rtml.features.late_rows import rebuild_window
from rtml.features.sample_data import load_sample, simulated_frames
from rtml.sources.schema import TRANSACTIONS
from rtml.streaming import lander as lander_module
from rtml.streaming import stream
from rtml.streaming.events import TransactionEvent, to_us
from rtml.streaming.lander import Lander

START = datetime(2026, 11, 1, tzinfo=UTC)
DAYS = 4
BUILT_UNTIL = START + timedelta(days=DAYS)
# model -> key columns; loaded_at is the load time of raw rows, not a feature
TABLES = {
    "features.customer_features": ["transaction_id"],
    "features.merchant_daily": ["merchant_id", "txn_date"],
    "features.merchant_features": ["merchant_id", "feature_date"],
    "features.customer_features_latest": ["customer_id"],
    "features.merchant_features_latest": ["merchant_id"],
}


def hour(day: int, h: int) -> datetime:
    return START + timedelta(days=day, hours=h)


def test_rebuild_window_covers_the_later_windows_up_to_the_newest_built_hour() -> None:
    built = hour(40, 0)
    # rows of one hour, long before the newest built hour: that hour and the 31 days after it
    window = rebuild_window(hour(1, 9) + timedelta(minutes=5), hour(1, 9) + timedelta(minutes=50), built)
    assert window is not None
    assert (window.start, window.end) == (hour(1, 9), hour(32, 10))
    assert window.partition_keys() == ("2026-11-02-09:00", "2026-12-03-09:00")
    # rows of recent days: up to the newest built hour, not beyond (the schedule builds the rest)
    window = rebuild_window(hour(38, 23), hour(39, 2), built)
    assert window is not None
    assert (window.start, window.end, window.hours) == (hour(38, 23), built, 25)
    # built_until is exclusive: a row at exactly the first unbuilt hour changes nothing built
    assert rebuild_window(built, built + timedelta(hours=3), built) is None
    assert rebuild_window(hour(1, 0), hour(1, 1), None) is None  # nothing built yet


def _late_file(original: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Extra transactions of day two (09:00-15:00) of existing customers and merchants, as a CSV."""
    day2 = original[(original["event_ts"] >= hour(1, 9)) & (original["event_ts"] < hour(1, 15))]
    late = day2.iloc[::10].copy()
    late["transaction_id"] = "late-" + late["transaction_id"].astype(str)
    late["event_ts"] = late["event_ts"] + timedelta(minutes=7)
    late["amount"] = (late["amount"] * 1.3 + 2).round(2)
    late = late[TRANSACTIONS.names]
    late.assign(event_ts=late["event_ts"].map(lambda ts: ts.isoformat())).to_csv(path, index=False)
    return late


def _snapshot(url: str) -> dict[str, pd.DataFrame]:
    frames = {}
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        for table, keys in TABLES.items():
            cur.execute(f"select * from {table} order by {', '.join(keys)}")
            columns = [d.name for d in cur.description or []]
            frame = pd.DataFrame(cur.fetchall(), columns=columns)
            frames[table] = frame.drop(columns=[c for c in columns if c == "loaded_at"])
    return frames


def _landing_run(instance: dg.DagsterInstance, name: str, url: str) -> None:
    instance.add_dynamic_partitions(landing_file_partitions.name or "", [name])
    result = dg.materialize(
        [transactions_landing],
        partition_key=name,
        instance=instance,
        resources={"postgres": PostgresServer(url=url), "settings": get_settings()},
    )
    assert result.success


def test_landing_file_of_a_past_day_reaches_its_features_and_later_windows(
    scratch_database: Callable[[str], str], separate_dbt_target: Path
) -> None:
    url = scratch_database("late_rows")
    transactions, labels = simulated_frames(START, DAYS)
    load_sample(url, transactions, labels)
    run_dbt(["run", "--full-refresh"], url)
    before = _snapshot(url)

    landing = get_settings().services.landing_dir
    landing.mkdir(parents=True, exist_ok=True)
    name = "late_rows_day2.csv"
    late = _late_file(transactions, landing / name)
    instance = dg.DagsterInstance.ephemeral()
    _landing_run(instance, name, url)

    context = dg.build_sensor_context(
        instance=instance, resources={"postgres": PostgresServer(url=url), "settings": get_settings()}
    )
    result = late_rows_sensor(context)
    assert isinstance(result, dg.SensorResult)
    [request] = result.run_requests or []
    first_late = late["event_ts"].min()
    expected_first = first_late.floor("h").strftime("%Y-%m-%d-%H:%M")
    assert (request.tags[RANGE_TAGS[0]], request.tags[RANGE_TAGS[1]]) == (expected_first, "2026-11-04-23:00")
    assert request.tags[LATE_ROWS_FILES_TAG] == name
    assert request.tags["rtml/trigger"] == "late_rows_sensor"
    # the run: the incremental dbt models (hourly partitions, one single-run backfill) and the online tables
    job = defs.resolve_job_def(late_rows_sensor.job_name or "")
    assert job.name == late_rows_job.name
    assert isinstance(job.partitions_def, dg.HourlyPartitionsDefinition)
    assert {key.to_user_string() for key in job.asset_layer.selected_asset_keys} == {
        "stg_transactions",
        "customer_features",
        "merchant_daily",
        "merchant_features",
        "customer_features_latest",
        "merchant_features_latest",
        "online_features",
    }
    # the same materialization is never requested twice
    again = late_rows_sensor(
        dg.build_sensor_context(
            instance=instance,
            cursor=result.cursor,
            resources={"postgres": PostgresServer(url=url), "settings": get_settings()},
        )
    )
    assert isinstance(again, dg.SkipReason)

    # the landed rows are in raw but not in the features: the hourly refresh alone never adds them
    with psycopg.connect(url) as conn:
        in_features = conn.execute(
            "select count(*) from features.customer_features where transaction_id like 'late-%%'"
        ).fetchone()
    assert in_features == (0,)

    # the rebuild the run does: the incremental models over the requested hours, then the latest tables
    start = datetime.strptime(request.tags[RANGE_TAGS[0]], "%Y-%m-%d-%H:%M").replace(tzinfo=UTC)
    end = datetime.strptime(request.tags[RANGE_TAGS[1]], "%Y-%m-%d-%H:%M").replace(tzinfo=UTC) + timedelta(
        hours=1
    )
    run_dbt(["run", "--select", "config.materialized:incremental"], url, extra_env=window_env(start, end))
    run_dbt(["run", "--select", "customer_features_latest", "merchant_features_latest"], url)
    rebuilt = _snapshot(url)

    customer = rebuilt["features.customer_features"]
    assert customer["transaction_id"].str.startswith("late-").sum() == len(late)
    # dependent windows changed: features of later days of the late rows' merchants and customers
    merchants = set(late["merchant_id"])
    later_days = rebuilt["features.merchant_features"]
    later_days = later_days[
        later_days["merchant_id"].isin(merchants) & (later_days["feature_date"] > first_late.date())
    ]
    old = before["features.merchant_features"].set_index(["merchant_id", "feature_date"])
    changed = (
        later_days.set_index(["merchant_id", "feature_date"])["merchant_txn_count_7d"]
        != old.loc[later_days.set_index(["merchant_id", "feature_date"]).index, "merchant_txn_count_7d"]
    )
    assert changed.sum() > 0

    # exactly what a full refresh of the same raw rows gives
    run_dbt(["run", "--full-refresh", "--exclude", "training_set"], url)
    full = _snapshot(url)
    for table in TABLES:
        pd.testing.assert_frame_equal(rebuilt[table], full[table], obj=table)


# --- late rows of the stream's lander (transactions_feed=stream) --------------------------------------------
def _stream_event(n: int, at: datetime, prefix: str) -> TransactionEvent:
    return TransactionEvent(
        transaction_id=f"{prefix}{n:04d}",
        customer_id=f"c{n % 5}",
        merchant_id=f"m{n % 3}",
        amount=10.0 + n,
        event_ts_us=to_us(at),
        merchant_category="grocery",
        currency="EUR",
        channel="pos",
        country="DE",
    )


def test_late_rows_cursor_reads_the_integer_cursor_of_earlier_versions() -> None:
    assert LateRowsCursor.parse(None) == LateRowsCursor()
    assert LateRowsCursor.parse("42") == LateRowsCursor(42, None)
    position = LateRowsCursor(42, datetime(2026, 12, 5, 23, 1, 2, 345678, tzinfo=UTC))
    assert LateRowsCursor.parse(str(position)) == position


def test_stream_rows_landed_after_their_hour_was_built_request_one_rebuild(
    scratch_database: Callable[[str], str],
    separate_dbt_target: Path,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stream-fed world: a real lander lands the stream's events into raw.transactions, dbt builds
    ``stg_transactions`` over them (hours 09:00-11:00 built). Then the late-rows sensor, on the lander's
    receipts in ``raw.loads``: rows for a built hour → one run over that hour and the later built ones;
    rows for an unbuilt hour → nothing; rows the build saw → nothing; a micro-batch whose load is still
    open while the sensor looks is not passed over."""
    url = scratch_database("late_stream")
    client = redis.Redis.from_url(redis_url)
    key = f"rtmltest:late:{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("RTML_TRANSACTIONS_FEED", "stream")
    get_settings.cache_clear()
    settings = get_settings().model_copy(
        update={
            "stream": get_settings().stream.model_copy(update={"key": key, "lander_batch_ms": 50.0}),
            "services": get_settings().services.model_copy(update={"database_url": url}),
        }
    )
    lander = Lander(client, url, settings, consumer="late")
    resources = {"postgres": PostgresServer(url=url), "settings": get_settings()}
    instance = dg.DagsterInstance.ephemeral()
    cursor: str | None = None

    def land(events: list[TransactionEvent]) -> None:
        stream.publish(client, key, events, retention_s=3600)
        while lander.land_once(block_ms=50).read:
            pass

    def tick() -> dg.SensorResult | dg.SkipReason:
        nonlocal cursor
        result = late_rows_sensor(
            dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
        )
        assert isinstance(result, (dg.SensorResult, dg.SkipReason))
        if isinstance(result, dg.SensorResult) and result.cursor is not None:
            cursor = result.cursor
        return result

    def requests(result: dg.SensorResult | dg.SkipReason) -> list[dg.RunRequest]:
        return list(result.run_requests or []) if isinstance(result, dg.SensorResult) else []

    try:
        day = datetime(2026, 11, 1, tzinfo=UTC)
        land([_stream_event(n, day + timedelta(hours=9, minutes=n), "on-time-") for n in range(0, 180, 7)])
        run_dbt(["run", "--select", "stg_transactions", "--full-refresh"], url)
        with psycopg.connect(url) as conn:
            built = conn.execute("select max(event_ts) from staging.stg_transactions").fetchone()
        assert built is not None and built[0] < day + timedelta(hours=12)

        # the receipts of rows the build saw: nothing to rebuild
        assert requests(tick()) == []
        # the next tick reads from the cursor: nothing new
        assert isinstance(tick(), dg.SkipReason)

        # rows of 10:xx, landed after the build: one run from 10:00 up to the newest built hour (11:00)
        late = [_stream_event(n, day + timedelta(hours=10, minutes=n), "late-") for n in (3, 17, 44)]
        land(late)
        [request] = requests(tick())
        assert (request.tags[RANGE_TAGS[0]], request.tags[RANGE_TAGS[1]]) == (
            "2026-11-01-10:00",
            "2026-11-01-11:00",
        )
        assert request.tags[LATE_ROWS_STREAM_TAG] == "3 rows of 1 stream micro-batches"
        assert request.tags["rtml/trigger"] == "late_rows_sensor"
        assert LATE_ROWS_FILES_TAG not in request.tags
        assert isinstance(tick(), dg.SkipReason)  # the same receipts are never requested twice

        # rows of 12:xx, an hour not built yet: the schedule builds it, nothing requested
        land([_stream_event(n, day + timedelta(hours=12, minutes=n), "next-") for n in range(5)])
        assert requests(tick()) == []

        # a micro-batch whose load is still open while the sensor reads a later one: the open load's
        # receipt will carry its transaction's start, before that tick; the cursor must not pass it
        land([_stream_event(n, day + timedelta(hours=12, minutes=30 + n), "next2-") for n in range(3)])
        held = [_stream_event(n, day + timedelta(hours=9, minutes=n), "held-") for n in (1, 2)]
        stream.publish(client, key, held, retention_s=3600)
        entries = stream.read_new(client, key, settings.stream.lander_group, "late", count=10, block_ms=100)
        source = lander_module.source_name(entries)
        with psycopg.connect(url, autocommit=True) as blocker:
            with blocker.transaction():  # the loader takes this lock first thing for its source
                blocker.execute("select pg_advisory_xact_lock(hashtext(%s))", (f"raw.transactions:{source}",))
                landing = threading.Thread(target=lander.land, args=(entries,))
                landing.start()
                deadline = time.monotonic() + 20
                while (started := _lander_waiting(url)) is None:
                    assert time.monotonic() < deadline, "the lander's load never started"
                    time.sleep(0.05)
                result = tick()  # reads the 12:xx batch (nothing to rebuild), not the open one
                assert isinstance(result, dg.SensorResult) and requests(result) == []
                position = LateRowsCursor.parse(cursor).loaded_at
                assert position is not None and position <= started
            landing.join(20)
        assert not landing.is_alive()
        [request] = requests(tick())
        assert (request.tags[RANGE_TAGS[0]], request.tags[RANGE_TAGS[1]]) == (
            "2026-11-01-09:00",
            "2026-11-01-11:00",
        )
        assert request.tags[LATE_ROWS_STREAM_TAG] == "2 rows of 1 stream micro-batches"
    finally:
        get_settings.cache_clear()
        client.delete(key, *client.scan_iter(f"{key}:*"))
        client.close()


def _lander_waiting(url: str) -> datetime | None:
    """The start of a lander session's transaction waiting for a lock (the one the test holds)."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "select min(xact_start) from pg_stat_activity where application_name = %s "
            "and wait_event_type = 'Lock'",
            (lander_module.LANDER_APPLICATION_NAME,),
        ).fetchone()
    return row[0] if row else None
