"""The ingestion assets, run by Dagster on a real instance (PostgreSQL storage) into a real PostgreSQL."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import psycopg
import pytest
import redis

from rtml.defs.automation.tags import range_tags
from rtml.stack.local import StackInfo
from tests.code_location import code_location

FIRST_HOURS = ("2026-11-01-00:00", "2026-11-01-02:00")  # three hourly partitions, one run


@pytest.fixture(scope="module")
def instance(stack: StackInfo) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_config(str(stack.dagster_home))


def _count(database_url: str, sql: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(sql).fetchone()
        assert row is not None
        return int(row[0])


def _run_range(
    instance: dg.DagsterInstance, job: str, first: str, last: str, raise_on_error: bool = True
) -> dg.ExecuteInProcessResult:
    return (
        code_location()
        .resolve_job_def(job)
        .execute_in_process(instance=instance, tags=range_tags(first, last), raise_on_error=raise_on_error)
    )


def test_transactions_range_loads_each_hour_once(instance: dg.DagsterInstance, database_url: str) -> None:
    result = _run_range(instance, "ingestion_job", *FIRST_HOURS)
    assert result.success
    materializations = result.asset_materializations_for_node("transactions_raw")
    # One run for the range, one materialization event per hourly partition.
    assert sorted(m.partition for m in materializations) == [
        "2026-11-01-00:00",
        "2026-11-01-01:00",
        "2026-11-01-02:00",
    ]
    metadata = {key: value.value for key, value in materializations[0].metadata.items()}
    assert metadata["partitions"] == 3
    assert metadata["rows_read_equals_loaded_plus_quarantined"] is True
    sources = "('2026-11-01-00:00','2026-11-01-01:00','2026-11-01-02:00')"
    loaded = _count(database_url, f"select count(*) from raw.transactions where source in {sources}")
    quarantined = _count(
        database_url, f"select count(*) from raw.transactions_quarantine where source in {sources}"
    )
    assert loaded == metadata["rows_loaded"] > 0
    assert quarantined == metadata["rows_quarantined"]
    assert metadata["rows_read"] == loaded + quarantined

    checks = {evaluation.check_name: evaluation for evaluation in result.get_asset_check_evaluations()}
    assert checks["quarantine_share_below_threshold"].passed
    assert checks["partition_row_count_plausible"].passed

    # Re-materializing the same range replaces exactly those partitions: no duplicates.
    assert _run_range(instance, "ingestion_job", *FIRST_HOURS).success
    assert _count(database_url, f"select count(*) from raw.transactions where source in {sources}") == loaded


def test_labels_day_loads(instance: dg.DagsterInstance, database_url: str) -> None:
    result = _run_range(instance, "labels_job", "2026-11-05", "2026-11-05")
    assert result.success
    [materialization] = result.asset_materializations_for_node("labels_raw")
    assert materialization.partition == "2026-11-05"
    rows_loaded = materialization.metadata["rows_loaded"].value
    assert rows_loaded == _count(
        database_url, "select count(*) from raw.labels where source = 'labels/2026-11-05'"
    )
    assert rows_loaded > 0


def test_load_figures_are_pushed_to_a_pushgateway(
    instance: dg.DagsterInstance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``RTML_PUSHGATEWAY_URL`` set, a load pushes its figures (the metadata's) to a real gateway."""
    from rtml.config import get_settings
    from tests.monitoring_stack import pushgateway, scrape

    with pushgateway(tmp_path) as gateway:
        monkeypatch.setenv("RTML_PUSHGATEWAY_URL", gateway.url)
        get_settings.cache_clear()
        try:
            result = _run_range(instance, "ingestion_job", "2026-11-01-05:00", "2026-11-01-05:00")
        finally:
            monkeypatch.delenv("RTML_PUSHGATEWAY_URL")
            get_settings.cache_clear()
        assert result.success
        (materialization,) = result.asset_materializations_for_node("transactions_raw")
        metadata = {key: value.value for key, value in materialization.metadata.items()}
        pushed = scrape(gateway.url)
    group = 'asset="transactions_raw",instance="",job="rtml"'

    def rows(kind: str) -> float:
        return pushed[f'rtml_pipeline_rows{{{group},kind="{kind}",partition="2026-11-01-05:00"}}']

    assert rows("loaded") == metadata["rows_loaded"] > 0
    assert rows("quarantined") == metadata["rows_quarantined"]
    share = metadata["rows_quarantined"] / metadata["rows_read"]
    assert pushed[f"rtml_pipeline_quarantine_share{{{group}}}"] == pytest.approx(share)
    assert pushed[f"rtml_pipeline_last_success_timestamp_seconds{{{group}}}"] > 0


# --- the checks, the retries and a termination, seen failing ------------------------------------------------
def _checks(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {evaluation.check_name: evaluation for evaluation in result.get_asset_check_evaluations()}


def _with_settings(**env: str) -> pytest.MonkeyPatch:
    from rtml.config import get_settings

    patch = pytest.MonkeyPatch()
    for name, value in env.items():
        patch.setenv(f"RTML_{name.upper()}", value)
    get_settings.cache_clear()
    return patch


def test_checks_fail_on_a_quarantine_share_over_the_threshold_and_too_many_rows(
    instance: dg.DagsterInstance,
) -> None:
    """The hour's ~0.2 % dirty rows are above a threshold of 0.05 %; its rows above a maximum of 10."""
    from rtml.config import get_settings

    patch = _with_settings(quarantine_share_max="0.0005", partition_rows_max="10")
    try:
        result = _run_range(instance, "ingestion_job", "2026-11-02-07:00", "2026-11-02-07:00")
    finally:
        patch.undo()
        get_settings.cache_clear()
    assert result.success  # WARN checks: the load stands, the UI and the check's history show the verdict
    (materialization,) = result.asset_materializations_for_node("transactions_raw")
    metadata = {key: value.value for key, value in materialization.metadata.items()}
    checks = _checks(result)

    share = checks["quarantine_share_below_threshold"]
    assert not share.passed and share.severity == dg.AssetCheckSeverity.WARN
    expected_share = metadata["rows_quarantined"] / metadata["rows_read"]
    assert share.metadata["quarantine_share"].value == pytest.approx(expected_share)
    assert expected_share > 0.0005
    assert share.description is not None
    assert share.description.startswith(
        f"{expected_share:.2%} of {metadata['rows_read']} rows quarantined ({metadata['rows_quarantined']}), "
        "above the threshold 0.05% (quarantine_share_max); most frequent rules: "
    )

    count = checks["partition_row_count_plausible"]
    assert not count.passed
    assert count.metadata["implausible_partitions"].value == {"2026-11-02-07:00": metadata["rows_loaded"]}
    assert count.description == (
        f"1 of 1 partition(s) outside 1..10 loaded rows (partition_rows_min..partition_rows_max): "
        f"2026-11-02-07:00: {metadata['rows_loaded']} rows, too many. Check the source for a gap or a "
        "duplicate delivery, then rematerialize the partition."
    )


def test_row_count_check_fails_on_too_few_rows(instance: dg.DagsterInstance) -> None:
    from rtml.config import get_settings

    patch = _with_settings(partition_rows_min="1000000", partition_rows_max="2000000")
    try:
        result = _run_range(instance, "ingestion_job", "2026-11-02-08:00", "2026-11-02-09:00")
    finally:
        patch.undo()
        get_settings.cache_clear()
    count = _checks(result)["partition_row_count_plausible"]
    assert not count.passed and count.description is not None
    assert count.description.startswith("2 of 2 partition(s) outside 1000000..2000000 loaded rows")
    assert "2026-11-02-08:00: " in count.description and "rows, too few" in count.description
    assert _checks(result)["quarantine_share_below_threshold"].passed


@contextmanager
def _loader_waiting_on_its_lock(
    database_url: str, key: str, fault: Callable[[psycopg.Connection, int], None]
) -> Iterator[None]:
    """Holds the advisory lock the loader of hour ``key`` takes, and calls ``fault(admin, pid)`` once on
    the loader's backend ``pid`` when it waits for that lock; then releases the lock (a load started after
    that, a retry, goes through)."""
    lock = f"raw.transactions:{key}"
    faulted = threading.Event()
    with psycopg.connect(database_url, autocommit=True) as holder:
        (database,) = holder.execute("SELECT current_database()").fetchone()  # type: ignore[misc]
        holder.execute("SELECT pg_advisory_lock(hashtext(%s))", (lock,))

        def watch() -> None:
            with psycopg.connect(database_url, autocommit=True) as admin:
                deadline = time.monotonic() + 120
                while not faulted.is_set() and time.monotonic() < deadline:
                    for (pid,) in admin.execute(
                        "SELECT pid FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock' "
                        "AND query LIKE 'SELECT pg_advisory_xact_lock(hashtext(%%'",
                        (database,),
                    ).fetchall():
                        fault(admin, pid)
                        faulted.set()
                        break
                    time.sleep(0.05)
            holder.execute("SELECT pg_advisory_unlock(hashtext(%s))", (lock,))

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            yield
        finally:
            watched = faulted.is_set()
            faulted.set()
            watcher.join()
    assert watched, f"no load of {key} waited for its lock"


def test_a_terminated_database_connection_is_retried(instance: dg.DagsterInstance, database_url: str) -> None:
    """A real transient fault: the loader's backend is terminated (pg_terminate_backend) while it waits
    for the source's lock, which this test holds; the step fails with TransientDatabaseError, is retried
    (RetryRequested), and the second attempt loads the hour exactly once."""
    key = "2026-11-02-10:00"
    terminated: list[int] = []

    def terminate(admin: psycopg.Connection, pid: int) -> None:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        terminated.append(pid)

    with _loader_waiting_on_its_lock(database_url, key, terminate):
        result = _run_range(instance, "ingestion_job", key, key)
    assert len(terminated) == 1
    assert result.success
    events = [event for event in result.all_events if event.step_key == "transactions_raw"]
    [retry] = [event for event in events if event.event_type_value == "STEP_UP_FOR_RETRY"]
    chain, error = {}, retry.event_specific_data.error  # type: ignore[union-attr]
    while error is not None:  # RetryRequested <- TransientDatabaseError <- AdminShutdown
        chain[error.cls_name] = error.message
        error = error.cause
    assert list(chain) == ["RetryRequested", "TransientDatabaseError", "AdminShutdown"]
    assert "hit a transient database error (rolled back, safe to retry)" in chain["TransientDatabaseError"]
    assert "terminating connection due to administrator command" in chain["AdminShutdown"]
    assert [e.event_type_value for e in events].count("STEP_RESTARTED") == 1
    (materialization,) = result.asset_materializations_for_node("transactions_raw")
    assert _count(database_url, f"select count(*) from raw.transactions where source = '{key}'") == (
        materialization.metadata["rows_loaded"].value
    )


def test_a_terminated_run_ends_canceled_and_its_load_is_not_retried(
    instance: dg.DagsterInstance, database_url: str
) -> None:
    """Terminate, as the UI's Terminate and Ctrl-C of `rtml backfill` do (the run marked canceling, its
    process interrupted), while the load waits: the step stops, is not run again (the lock is released
    right after, so a retry would load the hour), and the run ends canceled with nothing of the hour."""
    key = "2026-11-02-11:00"

    def terminate_the_run(admin: psycopg.Connection, pid: int) -> None:
        [run] = instance.get_runs(
            dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED], tags=range_tags(key, key))
        )
        instance.report_run_canceling(run)
        os.kill(os.getpid(), signal.SIGINT)  # the step runs in this process's main thread, as in a run worker

    with _loader_waiting_on_its_lock(database_url, key, terminate_the_run):
        result = _run_range(instance, "ingestion_job", key, key, raise_on_error=False)
    run = instance.get_run_by_id(result.run_id)
    kinds = [event.event_type_value for event in result.all_events if event.step_key == "transactions_raw"]
    assert run is not None and run.status == dg.DagsterRunStatus.CANCELED, (run and run.status, kinds)
    assert "STEP_FAILURE" in kinds
    assert "STEP_UP_FOR_RETRY" not in kinds and "STEP_RESTARTED" not in kinds, kinds
    assert _count(database_url, f"select count(*) from raw.transactions where source = '{key}'") == 0


def test_with_the_stream_as_feed_the_hourly_asset_loads_nothing_and_reports_what_was_landed(
    instance: dg.DagsterInstance, database_url: str, redis_url: str
) -> None:
    """RTML_TRANSACTIONS_FEED=stream: the lander loads the stream's events, and the hourly asset (which the
    refresh depends on) reports them instead of loading the simulator's rows too."""
    from rtml.config import get_settings
    from rtml.ingest.loader import delete_source
    from rtml.streaming import stream
    from rtml.streaming.events import TransactionEvent, to_us
    from rtml.streaming.lander import Lander

    hour, key = datetime(2026, 11, 3, 5, tzinfo=UTC), f"rtmltest:feed:{uuid.uuid4().hex[:8]}"
    events = [
        TransactionEvent(
            f"feed-{key[-8:]}-{i}",
            "c1",
            "m1",
            10.0 + i,
            to_us(hour + timedelta(minutes=i)),
            merchant_category="grocery",
            currency="EUR",
            channel="pos",
            country="DE",
        )
        for i in range(30)
    ]
    client = redis.Redis.from_url(redis_url)
    try:
        stream.publish(client, key, [*events, events[3]], retention_s=3600)
        settings = get_settings().model_copy(
            update={
                "stream": get_settings().stream.model_copy(update={"key": key, "transactions_feed": "stream"})
            }
        )
        landed = Lander(client, database_url, settings, consumer="t").land_once(block_ms=100)
    finally:
        client.delete(key)
        client.close()
    assert (landed.loaded, landed.duplicates, landed.quarantined) == (30, 1, 0)
    patch = _with_settings(transactions_feed="stream")
    try:
        result = _run_range(instance, "ingestion_job", "2026-11-03-05:00", "2026-11-03-05:00")
    finally:
        patch.undo()
        get_settings.cache_clear()
        with psycopg.connect(database_url, autocommit=True) as conn:  # other tests count that day's rows
            for source in landed.sources:
                delete_source(conn, "transactions", source)
    (materialization,) = result.asset_materializations_for_node("transactions_raw")
    metadata = {k: v.value for k, v in materialization.metadata.items()}
    assert (metadata["rows_loaded"], metadata["transactions_feed"]) == (30, "stream")
    assert (
        _count(database_url, "select count(*) from raw.transactions where source = '2026-11-03-05:00'") == 0
    )
    assert _checks(result)["partition_row_count_plausible"].passed
