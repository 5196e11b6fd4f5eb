"""The ingestion assets, run by Dagster on a real instance (PostgreSQL storage) into a real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import psycopg
import pytest

from rtml.definitions import defs
from rtml.services.stack import StackInfo

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
    return defs.resolve_job_def(job).execute_in_process(
        instance=instance,
        tags={"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last},
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
