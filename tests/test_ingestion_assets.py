"""The ingestion assets, run by Dagster on a real instance (PostgreSQL storage) into a real PostgreSQL."""

from __future__ import annotations

import threading
import time
import uuid
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


def _run_range(instance: dg.DagsterInstance, job: str, first: str, last: str) -> dg.ExecuteInProcessResult:
    return (
        code_location()
        .resolve_job_def(job)
        .execute_in_process(
            instance=instance,
            tags=range_tags(first, last),
        )
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


# --- the checks and the retry policy, seen failing ---------------------------------------------------------
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


def test_a_terminated_database_connection_is_retried_by_the_retry_policy(
    instance: dg.DagsterInstance, database_url: str
) -> None:
    """A real transient fault: the loader's backend is terminated (pg_terminate_backend) while it waits
    for the source's lock, which this test holds; the step fails with TransientDatabaseError, Dagster's
    RetryPolicy runs it again, and the second attempt loads the hour exactly once."""
    key = "2026-11-02-10:00"
    terminated: list[int] = []
    with psycopg.connect(database_url, autocommit=True) as holder:
        (database,) = holder.execute("SELECT current_database()").fetchone()  # type: ignore[misc]
        holder.execute("SELECT pg_advisory_lock(hashtext(%s))", (f"raw.transactions:{key}",))

        def terminate_the_waiting_loader() -> None:
            with psycopg.connect(database_url, autocommit=True) as admin:
                deadline = time.monotonic() + 120
                while not terminated and time.monotonic() < deadline:
                    for (pid,) in admin.execute(
                        "SELECT pid FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock' "
                        "AND query LIKE 'SELECT pg_advisory_xact_lock(hashtext(%%'",
                        (database,),
                    ).fetchall():
                        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
                        terminated.append(pid)
                    time.sleep(0.05)
            holder.execute("SELECT pg_advisory_unlock(hashtext(%s))", (f"raw.transactions:{key}",))

        fault = threading.Thread(target=terminate_the_waiting_loader)
        fault.start()
        try:
            result = _run_range(instance, "ingestion_job", key, key)
        finally:
            fault.join()
    assert len(terminated) == 1
    assert result.success
    events = [event for event in result.all_events if event.step_key == "transactions_raw"]
    [retry] = [event for event in events if event.event_type_value == "STEP_UP_FOR_RETRY"]
    chain, error = {}, retry.event_specific_data.error  # type: ignore[union-attr]
    while error is not None:  # RetryRequestedFromPolicy <- TransientDatabaseError <- AdminShutdown
        chain[error.cls_name] = error.message
        error = error.cause
    assert list(chain) == ["RetryRequestedFromPolicy", "TransientDatabaseError", "AdminShutdown"]
    assert "hit a transient database error (rolled back, safe to retry)" in chain["TransientDatabaseError"]
    assert "terminating connection due to administrator command" in chain["AdminShutdown"]
    assert [e.event_type_value for e in events].count("STEP_RESTARTED") == 1
    (materialization,) = result.asset_materializations_for_node("transactions_raw")
    assert _count(database_url, f"select count(*) from raw.transactions where source = '{key}'") == (
        materialization.metadata["rows_loaded"].value
    )


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
