"""The dbt feature store end to end through Dagster, on a real instance and a real PostgreSQL:
simulator hours -> ``transactions_raw``, a day of ``labels_raw`` -> the incremental (hourly partitioned)
dbt assets over the same hours in one run -> the unpartitioned dbt assets. The dbt tests run as asset
checks and pass; ``features.customer_features`` has one row per loaded transaction of the window."""

from __future__ import annotations

import os
import shutil
import time
from datetime import UTC, datetime

import dagster as dg
import psycopg
import pytest

from rtml.definitions import defs
from rtml.defs.automation.tags import range_tags
from rtml.defs.features.assets import dbt_feature_tables, dbt_incremental_features
from rtml.features.dbt import INVOCATIONS_KEPT, target_dir
from rtml.stack.local import StackInfo

HOURS = ("2026-11-01-00:00", "2026-11-01-02:00")  # three hourly partitions, one run
WINDOW = (datetime(2026, 11, 1, 0, tzinfo=UTC), datetime(2026, 11, 1, 3, tzinfo=UTC))
LABEL_DAY = "2026-11-04"  # legit labels arrive 2-5 days later: many of these hours' labels land here

test_defs = dg.Definitions.merge(
    defs,
    dg.Definitions(
        jobs=[
            # merchant_features (hourly) reads stg_labels (unpartitioned): it must exist first
            dg.define_asset_job("test_stg_labels", selection=dg.AssetSelection.assets("stg_labels")),
            dg.define_asset_job(
                "test_features_hourly", selection=dg.AssetSelection.assets(dbt_incremental_features)
            ),
            dg.define_asset_job(
                "test_feature_tables", selection=dg.AssetSelection.assets(dbt_feature_tables)
            ),
        ]
    ),
)


@pytest.fixture(scope="module")
def instance(stack: StackInfo) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_config(str(stack.dagster_home))


def _run(
    instance: dg.DagsterInstance, job: str, first: str | None = None, last: str | None = None
) -> dg.ExecuteInProcessResult:
    tags = range_tags(first, last) if first else {}
    return test_defs.resolve_job_def(job).execute_in_process(instance=instance, tags=tags)  # type: ignore[arg-type]


def _count(database_url: str, sql: str, *params: object) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(sql, params).fetchone()
        assert row is not None
        return int(row[0])


def _assert_checks(result: dg.ExecuteInProcessResult, minimum: int) -> list[dg.AssetCheckEvaluation]:
    evaluations = list(result.get_asset_check_evaluations())
    assert len(evaluations) >= minimum, [e.check_name for e in evaluations]
    # severity-warn dbt tests (freshness of replayed history, labels of unloaded hours) may warn
    failed = [
        f"{e.asset_key.to_user_string()}:{e.check_name}"
        for e in evaluations
        if not e.passed and e.severity == dg.AssetCheckSeverity.ERROR
    ]
    assert not failed, failed
    return evaluations


def test_raw_to_features_through_dagster(instance: dg.DagsterInstance, database_url: str) -> None:
    assert _run(instance, "ingestion_job", *HOURS).success
    assert _run(instance, "labels_job", LABEL_DAY, LABEL_DAY).success
    assert _run(instance, "test_stg_labels").success

    hourly = _run(instance, "test_features_hourly", *HOURS)
    assert hourly.success
    for model in ("stg_transactions", "customer_features", "merchant_daily", "merchant_features"):
        partitions = sorted(
            str(m.partition)
            for m in hourly.get_asset_materialization_events()
            if m.asset_key == dg.AssetKey(model)
        )
        assert partitions == ["2026-11-01-00:00", "2026-11-01-01:00", "2026-11-01-02:00"], model
    checks = _assert_checks(hourly, minimum=20)
    assert {e.asset_key for e in checks} >= {
        dg.AssetKey("stg_transactions"),
        dg.AssetKey("customer_features"),
    }
    assert any(e.check_name.startswith("unique_customer_features_transaction_id") for e in checks)

    loaded = _count(
        database_url,
        "select count(distinct transaction_id) from raw.transactions where event_ts >= %s and event_ts < %s",
        *WINDOW,
    )
    features = _count(
        database_url,
        "select count(*) from features.customer_features where event_ts >= %s and event_ts < %s",
        *WINDOW,
    )
    distinct = _count(
        database_url,
        "select count(distinct transaction_id) from features.customer_features"
        " where event_ts >= %s and event_ts < %s",
        *WINDOW,
    )
    assert loaded > 0
    assert features == distinct == loaded

    # dagster-dbt leaves a folder per dbt command in target/: the run removes all but the newest
    stale = [target_dir() / f"dbt_feature_tables-0000000-stale{i:02d}" for i in range(INVOCATIONS_KEPT + 2)]
    day_ago = time.time() - 86400
    for i, folder in enumerate(stale):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "dbt.log").write_text("an old command's log\n")
        os.utime(folder, (day_ago + i, day_ago + i))
    tables = _run(instance, "test_feature_tables")
    assert tables.success
    assert not any(folder.exists() for folder in stale[:3]), "the oldest folders stay"
    assert list(target_dir().glob(f"dbt_feature_tables-{tables.run_id[:7]}-*")), "the run's own folder went"
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    built = {m.asset_key for m in tables.get_asset_materialization_events()}
    assert built == {
        dg.AssetKey(name)
        for name in (
            "stg_labels",
            "customer_features_latest",
            "merchant_features_latest",
            "customer_stream_snapshot",
            "training_set",
        )
    }
    _assert_checks(tables, minimum=10)
    assert _count(database_url, "select count(*) from features.training_set") > 0
