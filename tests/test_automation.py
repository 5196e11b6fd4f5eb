"""The automation (``rtml.defs.automation``) on real Dagster instances with PostgreSQL storage (each of its
own, so no other module's runs or check evaluations are seen), real PostgreSQL, Redis and MLflow, and a
local HTTP receiver standing for the webhook.

* Sensor tests: a stale model requests exactly one retraining (and a repeated evaluation none); stale
  data notifies once per failure; a file dropped in the landing folder requests its ingestion run; a
  failed run notifies.
* End to end: a simulated world with a (weak) production model; the hourly refresh job ingests three days
  of the simulator's ``amount_inflation`` scenario; ``drift_report`` on a day before the drift passes its
  check (no run request); after the refresh, the hourly drift check (``hourly_drift_sensor`` →
  ``hourly_drift_job``) fails on the newest hours; the drift sensor requests one retraining, the run
  stages a new version, and the notification with the comparison reaches the receiver and the table.
  While the data stays drifted, later failures of either drift check request nothing (cool-down per
  production version) until the cool-down ends. The promotion then requests the bento build and notifies.
* An hour left half-built (its transactions newer than its features): one rebuild is requested, and
  not again when the rebuild stops half-way too.

The world mirrors ``test_drift`` (same populations, scenario and windows, shifted so that the drifted
days are partitions of ``transactions_raw``): its history is loaded directly, the drifted days through
Dagster.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dagster as dg
import psycopg
import pyarrow.csv as pa_csv
import pytest
import redis

from rtml.config import AutomationSettings, get_settings
from rtml.defs.automation.checks import (
    DATA_FRESHNESS,
    MODEL_FRESHNESS,
    freshness_checks,
    freshness_checks_sensor,
)
from rtml.defs.automation.hourly_drift import hourly_drift_sensor
from rtml.defs.automation.incomplete_partitions import SENSOR_NAME, incomplete_partitions_request
from rtml.defs.automation.sensors import (
    data_freshness_sensor,
    drift_retraining_sensor,
    model_staleness_sensor,
    promotion_sensor,
    retraining_notifier,
    run_failure_notifier,
)
from rtml.defs.automation.tags import RANGE_TAGS
from rtml.defs.dagster_internals import pool_storage_connections
from rtml.defs.ingestion.sensors import landing_files_sensor
from rtml.defs.monitoring.assets import drift_report
from rtml.defs.monitoring.checks import drift_within_threshold
from rtml.defs.online.resources import RedisServer
from rtml.defs.resources import PostgresServer
from rtml.defs.training.resources import MlflowResource, MlflowServer
from rtml.features.sample_data import load_simulated
from rtml.ingest.tables import ensure_tables
from rtml.sources.scenarios import timeline_path
from rtml.sources.simulator import Simulator
from rtml.stack.dagster_home import write_dagster_yaml
from rtml.stack.local import StackInfo
from rtml.training import model_registry
from tests.code_location import after_run, code_location
from tests.monitoring_stack import Webhook, webhook_receiver

CHECKS = freshness_checks(AutomationSettings())  # the default maximum ages


# --- shared fixtures and helpers ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def new_instance(
    scratch_database: Callable[[str], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[str], dg.DagsterInstance]]:
    """``make(name)``: a Dagster instance with run, event and schedule storage in a fresh PostgreSQL
    database (the dagster.yaml that ``rtml up`` writes)."""
    made: list[dg.DagsterInstance] = []

    def make(name: str) -> dg.DagsterInstance:
        home = tmp_path_factory.mktemp(f"dagster-{name}")
        write_dagster_yaml(home, scratch_database(f"dagster_{name}"))
        made.append(dg.DagsterInstance.from_config(str(home)))
        pool_storage_connections(made[-1])  # as the demo's bootstrap: a 72-hour run plans ~1,400 events
        return made[-1]

    yield make
    for instance in made:
        instance.dispose()


@pytest.fixture(scope="module")
def sensor_instance(new_instance: Callable[[str], dg.DagsterInstance]) -> dg.DagsterInstance:
    return new_instance("sensors")


@pytest.fixture(scope="module")
def webhook(stack: StackInfo) -> Iterator[Webhook]:
    """The receiver, as ``RTML_ALERT_WEBHOOK_URL`` of every notification the module's sensors send."""
    with webhook_receiver() as hook, pytest.MonkeyPatch.context() as patch:
        patch.setenv("RTML_ALERT_WEBHOOK_URL", hook.url)
        patch.delenv("RTML_PUSHGATEWAY_URL", raising=False)  # never into a developer's gateway
        get_settings.cache_clear()
        yield hook
    get_settings.cache_clear()


def wait_for_rows(database_url: str, kind: str, after_id: int, count: int) -> list[dict[str, Any]]:
    """The ``kind`` notifications newer than ``after_id``, once ``count`` of them are delivered."""
    deadline = time.monotonic() + 20
    while True:
        with psycopg.connect(database_url) as conn:
            cursor = conn.execute(
                "select id, title, text, fields, delivered, attempts, error from monitoring.notifications"
                " where kind = %s and id > %s order by id",
                (kind, after_id),
            )
            rows = [dict(zip([c.name for c in cursor.description or []], r, strict=True)) for r in cursor]
        if sum(row["delivered"] for row in rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def newest_notification(database_url: str) -> int:
    from rtml.monitoring.notify import ensure_table

    ensure_table(database_url)
    with psycopg.connect(database_url) as conn:
        row = conn.execute("select coalesce(max(id), 0) from monitoring.notifications").fetchone()
    assert row is not None
    return int(row[0])


def bodies_mentioning(hook: Webhook, text: str) -> list[dict[str, Any]]:
    return [body for body in list(hook.received) if text in json.dumps(body)]


def evaluate_checks(
    instance: dg.DagsterInstance, keys: tuple[dg.AssetCheckKey, ...]
) -> dict[str, dg.AssetCheckEvaluation]:
    """Run freshness checks the way the freshness sensor's runs do: the checks alone."""
    job = dg.define_asset_job("evaluate_freshness", selection=dg.AssetSelection.checks(*keys))
    result = (
        dg.Definitions(asset_checks=CHECKS, jobs=[job])
        .resolve_job_def(job.name)
        .execute_in_process(instance=instance)
    )
    assert result.success
    return {e.asset_key.to_user_string(): e for e in result.get_asset_check_evaluations()}


def updated(instance: dg.DagsterInstance, asset: str, age: timedelta) -> None:
    """Record that ``asset`` was last updated ``age`` ago (a materialization reported to the instance)."""
    when = time.time() - age.total_seconds()
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            asset, metadata={"dagster/last_updated_timestamp": dg.MetadataValue.timestamp(when)}
        )
    )


def skip_message(result: dg.SensorResult) -> str:
    assert not result.run_requests, result.run_requests
    return result.skip_reason.skip_message if result.skip_reason else ""


# --- sensor tests -------------------------------------------------------------------------------------------
def test_a_stale_model_requests_exactly_one_retraining(sensor_instance: dg.DagsterInstance) -> None:
    def evaluate(cursor: str | None) -> dg.SensorResult:
        return model_staleness_sensor(dg.build_sensor_context(instance=sensor_instance, cursor=cursor))

    assert "not evaluated yet" in skip_message(evaluate(None))
    # Dagster's freshness sensor launches a first evaluation of every freshness check
    first_run = freshness_checks_sensor(CHECKS)(dg.build_sensor_context(instance=sensor_instance))
    assert isinstance(first_run, dg.RunRequest)
    assert set(first_run.asset_check_keys or ()) == {MODEL_FRESHNESS, *DATA_FRESHNESS}
    assert first_run.tags["rtml/trigger"] == "freshness_checks_sensor"

    updated(sensor_instance, "fraud_model", timedelta(days=8))  # the newest version is 8 days old
    stale = evaluate_checks(sensor_instance, (MODEL_FRESHNESS,))["fraud_model"]
    assert not stale.passed and stale.description is not None and "overdue" in stale.description

    first = evaluate(None)
    [request] = first.run_requests
    assert model_staleness_sensor.job_name == "retraining_job"
    assert request.run_key is not None and request.run_key.startswith("fraud_model:freshness_check:")
    assert request.tags["rtml/trigger"] == "fraud_model:freshness_check"
    again = evaluate(first.cursor)  # the next tick: the same failure is not requested twice
    assert "already handled" in skip_message(again)

    updated(sensor_instance, "fraud_model", timedelta(hours=1))  # a new version: fresh again
    assert evaluate_checks(sensor_instance, (MODEL_FRESHNESS,))["fraud_model"].passed
    assert "passed" in skip_message(evaluate(again.cursor))


def test_stale_data_notifies_once_per_failure(
    sensor_instance: dg.DagsterInstance, database_url: str, webhook: Webhook
) -> None:
    before = newest_notification(database_url)
    updated(sensor_instance, "transactions_raw", timedelta(hours=3))  # older than the 2-hour lag
    evaluations = evaluate_checks(sensor_instance, DATA_FRESHNESS)
    assert not evaluations["transactions_raw"].passed
    assert not evaluations["online_features"].passed  # never pushed on this instance

    def evaluate(cursor: str | None) -> dg.SensorResult:
        with dg.build_sensor_context(
            instance=sensor_instance,
            cursor=cursor,
            resources={"postgres": PostgresServer(url=database_url), "settings": get_settings()},
        ) as context:  # leaving it tears the resources down
            return data_freshness_sensor(context)

    first = evaluate(None)
    rows = wait_for_rows(database_url, "data_freshness", before, count=2)
    assert sorted(row["title"] for row in rows) == ["online_features is stale", "transactions_raw is stale"]
    assert all(row["delivered"] and row["attempts"] == 1 for row in rows)
    [raw] = [row for row in rows if row["fields"]["asset"] == "transactions_raw"]
    assert raw["text"].startswith("Asset is overdue for an update. The last update was 3 hours")
    assert raw["fields"]["last_updated"] != "never" and raw["fields"]["must_be_newer_than"] != "never"
    assert bodies_mentioning(webhook, "transactions_raw is stale")

    assert skip_message(evaluate(first.cursor)).count("already handled") == 2
    assert len(wait_for_rows(database_url, "data_freshness", before, count=2)) == 2  # no second notice


def test_a_dropped_landing_file_requests_its_ingestion_run(
    sensor_instance: dg.DagsterInstance, tmp_path: Path, scratch_database: Callable[[str], str]
) -> None:
    url = scratch_database("landing")
    with psycopg.connect(url) as conn:
        ensure_tables(conn)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("RTML_DATA_DIR", str(tmp_path))  # a landing folder of the test's own
            patch.setenv("RTML_LANDING_SETTLE_SECONDS", "0")  # the file below is complete when written
            get_settings.cache_clear()
            settings = get_settings()
            hour = datetime(2026, 11, 20, 3, tzinfo=UTC)
            settings.services.landing_dir.mkdir(parents=True)
            path = settings.services.landing_dir / "transactions_20261120T0300_20261120T0400.csv"
            pa_csv.write_csv(
                Simulator(settings.simulator, settings.ingest, timeline_path(settings.services)).transactions(
                    hour, hour + timedelta(hours=1)
                ),
                path,
            )

            context = dg.build_sensor_context(instance=sensor_instance, resources={"settings": settings})
            first = landing_files_sensor(context)
            [request] = first.run_requests
            assert request.partition_key == path.name
            assert (request.run_key or "").startswith(f"{path.name}@")  # name@sha256@change time
            assert request.tags["rtml/trigger"] == f"landing file {path.name}"
            [added] = first.dynamic_partitions_requests
            assert isinstance(added, dg.AddDynamicPartitionsRequest) and list(added.partition_keys) == [
                path.name
            ]
            # what the daemon does with the tick's result: add the partition, then launch the run
            sensor_instance.add_dynamic_partitions("landing_files", [path.name])
            next_tick = dg.build_sensor_context(
                instance=sensor_instance, cursor=first.cursor, resources={"settings": settings}
            )
            assert not landing_files_sensor(next_tick).run_requests

            landing = code_location({"postgres": PostgresServer(url=url)})
            result = landing.resolve_job_def(landing_files_sensor.job_name).execute_in_process(
                instance=sensor_instance, partition_key=request.partition_key, tags=request.tags
            )
            assert result.success
            [materialization] = result.asset_materializations_for_node("transactions_landing")
            assert materialization.partition == path.name
            assert materialization.metadata["rows_loaded"].value > 0
            assert (settings.services.landing_dir / "processed" / path.name).exists()
    finally:
        get_settings.cache_clear()


@dg.op
def fetch_source() -> None:
    raise RuntimeError("boom: the source is unreachable")


@dg.job
def doomed_job() -> None:
    fetch_source()


def test_a_failed_run_notifies(
    sensor_instance: dg.DagsterInstance, database_url: str, webhook: Webhook
) -> None:
    before = newest_notification(database_url)
    result = doomed_job.execute_in_process(instance=sensor_instance, raise_on_error=False)
    assert not result.success
    run = sensor_instance.get_run_by_id(result.run_id)
    assert run is not None
    resources = {"postgres": PostgresServer(url=database_url), "settings": get_settings()}
    after_run(run_failure_notifier, sensor_instance, result, resources)

    [row] = wait_for_rows(database_url, "run_failure", before, count=1)
    assert row["title"] == "Run of doomed_job failed" and row["delivered"]
    assert row["fields"]["job"] == "doomed_job" and row["fields"]["run_id"] == run.run_id
    assert "fetch_source: RuntimeError: boom: the source is unreachable" in row["fields"]["error"]
    assert row["fields"]["trigger"] == "manual"
    [body] = bodies_mentioning(webhook, run.run_id)
    assert body["blocks"][0]["text"]["text"] == "Run of doomed_job failed"
    assert "boom: the source is unreachable" in body["text"]


# --- rtml backfill ------------------------------------------------------------------------------------------
def test_backfill_runs_the_hours_as_one_run_in_the_stacks_instance(
    stack: StackInfo, database_url: str
) -> None:
    """Against the session's stack (its DAGSTER_HOME and database), like a user's `rtml backfill`."""
    from typer.testing import CliRunner

    from rtml.cli import app

    refused = CliRunner().invoke(app, ["backfill", "2026-10-02T00:00", "2026-10-02T03:00"])
    assert refused.exit_code == 2 and "no hourly partition in" in refused.output

    result = CliRunner().invoke(app, ["backfill", "2026-11-02T00:00", "2026-11-02T03:00"])
    assert result.exit_code == 0, result.output
    assert "3 hour(s), 2026-11-02-00:00 ... 2026-11-02-02:00, in one run" in result.output
    instance = dg.DagsterInstance.from_config(str(stack.dagster_home))
    [record] = instance.get_run_records(
        dg.RunsFilter(job_name="ingestion_job", tags={"rtml/backfill": "2026-11-02-00:00...2026-11-02-02:00"})
    )
    run = record.dagster_run
    assert run.status == dg.DagsterRunStatus.SUCCESS
    assert (run.tags[RANGE_TAGS[0]], run.tags[RANGE_TAGS[1]]) == ("2026-11-02-00:00", "2026-11-02-02:00")
    loaded = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
    partitions = sorted(
        str(entry.asset_materialization.partition) for entry in loaded if entry.asset_materialization
    )
    assert partitions == ["2026-11-02-00:00", "2026-11-02-01:00", "2026-11-02-02:00"]
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "select count(distinct source) from raw.transactions where source like '2026-11-02-0%'"
        ).fetchone()
    assert row == (3,)


# --- end to end: drift → retraining → staging → notification ---------------------------------------------
START = datetime(2026, 10, 3, tzinfo=UTC)  # test_drift's world 5 weeks later: the same weekdays
DAYS = 40
DRIFT_DAY = 37  # 2026-11-09: the scenario starts; days 37-39 are ingested through Dagster
REFERENCE = (29, 36)  # the production model's training window (the drift reference)
CONTROL = (36, 37)  # the day before the drift
LABELS_UNTIL = 48  # labels known by 2026-11-20 (before the machine's today)
THRESHOLD = 0.15  # as in test_drift: amount_inflation moves about 6 of 24 columns within three days
WORLD_ENV = {
    "RTML_SIM_START": START.isoformat(),
    "RTML_SIM_CUSTOMERS": "2000",
    "RTML_SIM_MERCHANTS": "200",
    "RTML_SIM_TRANSACTIONS_PER_DAY": "2000",
    "RTML_SIM_DRIFT_SCENARIO": "amount_inflation",
    "RTML_SIM_DRIFT_START": (START + timedelta(days=DRIFT_DAY)).isoformat(),
    "RTML_DRIFT_THRESHOLD": str(THRESHOLD),
    "RTML_DRIFT_RECENT_HOURS": "6",  # about 500 rows at the world's 2,000 transactions a day
}
WEAK = {"max_iter": 5, "max_depth": 2}  # test_training's weakened model: production to beat


def day(n: float) -> datetime:
    return START + timedelta(days=n)


def hour_key(ts: datetime) -> str:
    return f"{ts:%Y-%m-%d-%H:%M}"


@pytest.fixture(scope="module")
def world_env(webhook: Webhook) -> Iterator[None]:
    """The assets read ``get_settings()``: the world's simulator and threshold go through the environment."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in WORLD_ENV.items():
            patch.setenv(name, value)
        get_settings.cache_clear()
        yield
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def world_db(scratch_database: Callable[[str], str], world_env: None, separate_dbt_target: Path) -> str:
    """History up to the drift (loader + dbt, as in test_drift) and the labels known by LABELS_UNTIL."""
    from rtml.features.dbt import run_dbt

    url = scratch_database("automation")
    load_simulated(
        url, get_settings(), START, day(DRIFT_DAY), labels_until=day(LABELS_UNTIL), hours_per_chunk=24 * 5
    )
    proc = run_dbt(["run", "--full-refresh", "--select", "+training_set"], url, check=False)
    assert proc.returncode == 0, proc.stdout[-5000:]
    return url


@pytest.fixture(scope="module")
def model_name() -> str:
    return f"fraud-detector-auto-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def mlflow_resource(mlflow_tracking_uri: str, model_name: str) -> MlflowResource:
    return MlflowServer(tracking_uri=mlflow_tracking_uri, model_name=model_name)


@pytest.fixture(scope="module")
def production(world_db: str, mlflow_resource: MlflowResource) -> str:
    """A weak version trained on the reference week, in production: its lineage window is the drift
    reference, and a retrained version beats it at the evaluation gate."""
    from rtml.training.dataset import feature_spec
    from rtml.training.tracking import train_and_register

    weak = tuple(name for name in feature_spec().numeric if name != "amount")
    trained = train_and_register(
        world_db,
        mlflow_resource.uri(),
        get_settings(),
        start=day(REFERENCE[0]),
        end=day(REFERENCE[1]),
        params=WEAK,
        exclude_features=weak,
        model_name=mlflow_resource.model_name,
    )
    model_registry.promote(
        mlflow_resource.client(), trained.model_version, "test", "weak reference", mlflow_resource.model_name
    )
    return trained.model_version


@pytest.fixture(scope="module")
def resources(world_db: str, redis_url: str, mlflow_resource: MlflowResource) -> Iterator[dict[str, Any]]:
    prefix = f"rtml-auto-{uuid.uuid4().hex[:6]}"
    yield {
        "postgres": PostgresServer(url=world_db),
        "settings": get_settings(),
        "mlflow": mlflow_resource,
        "redis": RedisServer(url=redis_url, key_prefix=prefix),
    }
    # CI's integration pass runs on the machine's shared Redis: leave none of the world's keys behind
    # (the speed layer's hashes have no TTL)
    with redis.Redis.from_url(redis_url) as client:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=10_000))
        for start in range(0, len(keys), 1_000):
            client.unlink(*keys[start : start + 1_000])


@pytest.fixture(scope="module")
def world_defs(resources: dict[str, Any]) -> dg.Definitions:
    """The code location with its resources pointed at the world's database, model and Redis namespace."""
    return code_location(resources)


def evaluate_incomplete_partitions(
    instance: dg.DagsterInstance, now: datetime
) -> dg.RunRequest | dg.SkipReason:
    """The incomplete-partitions sensor's decision at ``now``: its clock passed in, a time of the world's
    (whose days lie weeks back, or ahead, of the host's date)."""
    context = dg.build_sensor_context(instance=instance)
    lookback = get_settings().automation.incomplete_partitions_lookback_hours
    result = incomplete_partitions_request(instance, context.log, now=now, lookback_hours=lookback)
    assert isinstance(result, dg.RunRequest | dg.SkipReason)
    return result


def materialize_drift(
    instance: dg.DagsterInstance, resources: dict[str, Any], **window: datetime
) -> dg.AssetCheckEvaluation:
    config = {key: value.isoformat() for key, value in window.items()}
    result = dg.materialize(
        [drift_report, drift_within_threshold],
        instance=instance,
        resources=resources,
        run_config={"ops": {"drift_report": {"config": config}}} if config else None,
    )
    assert result.success
    [evaluation] = result.get_asset_check_evaluations()
    return evaluation


def assert_catalogue_reads_columns_from(
    database_url: str, result: dg.ExecuteInProcessResult, model: str
) -> None:
    """The world's database is not the one dbt's manifest was parsed against ("rtml"): a dbt model's
    materializations still carry its table's columns and their lineage, read from this one."""
    assert urlsplit(database_url).path.lstrip("/") != "rtml"
    event = next(e for e in result.get_asset_materialization_events() if e.asset_key.path == [model])
    metadata = event.step_materialization_data.materialization.metadata
    assert "dagster/column_schema" in metadata, sorted(metadata)
    with psycopg.connect(database_url) as conn:
        columns = conn.execute(
            "select column_name from information_schema.columns where table_schema = 'features'"
            " and table_name = %s order by ordinal_position",
            (model,),
        ).fetchall()
    schema = metadata["dagster/column_schema"].value
    assert [column.name for column in schema.columns] == [name for (name,) in columns] != []
    assert metadata["dagster/column_lineage"].value.deps_by_column


def test_drift_requests_one_retraining_that_stages_a_version_and_notifies(
    new_instance: Callable[[str], dg.DagsterInstance],
    world_defs: dg.Definitions,
    resources: dict[str, Any],
    world_db: str,
    production: str,
    mlflow_resource: MlflowResource,
    webhook: Webhook,
) -> None:
    instance = new_instance("e2e")
    # 1. The hourly refresh job, as a single-run backfill of the three drifted days.
    hours = (hour_key(day(DRIFT_DAY)), hour_key(day(DAYS) - timedelta(hours=1)))
    refresh = world_defs.resolve_job_def("hourly_refresh_job").execute_in_process(
        instance=instance, tags=dict(zip(RANGE_TAGS, hours, strict=True))
    )
    assert refresh.success
    built = {event.asset_key.to_user_string() for event in refresh.get_asset_materialization_events()}
    assert {"transactions_raw", "customer_features", "merchant_features", "online_features"} <= built
    assert_catalogue_reads_columns_from(world_db, refresh, "customer_features")
    checks = {
        (e.asset_key.to_user_string(), e.check_name): e.passed for e in refresh.get_asset_check_evaluations()
    }
    # the run's checks include the data freshness checks: fresh again after the refresh
    assert checks[("transactions_raw", "freshness_check")] and checks[("online_features", "freshness_check")]
    assert checks[("online_features", "online_offline_parity")]
    complete = evaluate_incomplete_partitions(instance, day(DAYS))  # every refreshed hour has its features
    assert isinstance(complete, dg.SkipReason) and "has its features" in (complete.skip_message or "")
    hourly = after_run(hourly_drift_sensor, instance, refresh)  # the refresh's success requests the check
    assert isinstance(hourly, dg.RunRequest) and hourly.run_key == f"drift-after-{refresh.run_id}"
    assert hourly.tags["rtml/trigger"] == f"hourly_refresh_job {hours[0]}...{hours[1]}"
    hourly_drift = world_defs.resolve_job_def(hourly_drift_sensor.job_name or "")

    def hourly_check() -> dg.AssetCheckEvaluation:
        run = hourly_drift.execute_in_process(instance=instance, tags=hourly.tags)
        assert run.success
        [evaluation] = run.get_asset_check_evaluations()
        assert evaluation.check_name == "recent_drift_within_threshold"
        return evaluation

    def evaluate(cursor: str | None) -> dg.SensorResult:
        context = dg.build_sensor_context(
            instance=instance, cursor=cursor, resources={"settings": get_settings()}
        )
        return drift_retraining_sensor(context)

    # 2. Control: the day before the drift stays within the threshold: no retraining.
    control = materialize_drift(
        instance, resources, current_start=day(CONTROL[0]), current_end=day(CONTROL[1])
    )
    assert control.passed, control.description
    quiet = evaluate(None)
    assert "passed" in skip_message(quiet)

    # 3. The hourly check of the newest hours finds the drift: exactly one run request, none next tick.
    drifted = hourly_check()
    assert not drifted.passed and drifted.description is not None and "amount" in drifted.description
    first = evaluate(quiet.cursor)
    [request] = first.run_requests
    recent = "recent_drift_report:recent_drift_within_threshold"
    assert request.run_key is not None and request.run_key.startswith(f"{recent}:")
    assert request.tags["rtml/trigger"] == recent
    assert request.tags["rtml/drift_reference_version"] == production
    assert "already handled" in skip_message(evaluate(first.cursor))

    # 4. The requested run: training set rebuilt, a version trained, gated against production, staged.
    before = newest_notification(world_db)
    run = world_defs.resolve_job_def(drift_retraining_sensor.job_name or "").execute_in_process(
        instance=instance, tags=request.tags
    )
    assert run.success
    [trained] = run.asset_materializations_for_node("fraud_model")
    metadata = {key: value.value for key, value in trained.metadata.items()}
    version = str(metadata["model_version"])
    assert metadata["gate"] == "staged", metadata["gate_reason"]
    client = mlflow_resource.client()
    staged = model_registry.version_with_alias(client, model_registry.STAGING, mlflow_resource.model_name)
    assert staged is not None and staged.version == version != production

    # 5. The retraining's notification, with the comparison, in the table and at the receiver.
    after_run(retraining_notifier, instance, run, resources)
    [row] = wait_for_rows(world_db, "retraining", before, count=1)
    tags = client.get_model_version(mlflow_resource.model_name, version).tags
    ours, theirs = float(tags["gate_pr_auc"]), float(tags["gate_production_pr_auc"])
    assert ours > theirs
    name = mlflow_resource.model_name
    text, live = row["text"].split("\nLive: ")
    assert text == (
        f"{name} v{version}: PR AUC {ours:.4f} vs production v{production} {theirs:.4f}; staged; "
        f"approve with `rtml promote {version} --approver NAME --reason TEXT`"
    )
    # nothing was shadow-scored in this world: the notice says that there is no live comparison yet
    assert live.startswith("no live comparison yet") and row["fields"]["live_comparison"] == live
    assert row["delivered"] and row["fields"]["trigger"] == recent
    [body] = bodies_mentioning(webhook, f"rtml promote {version}")
    assert body["blocks"][0]["text"]["text"] == f"{name} v{version} staged"

    # 5b. The data stays drifted: the next hour's check and the daily full report fail again, against the
    # same production version: no second retraining within the cool-down ...
    assert not hourly_check().passed
    daily = materialize_drift(instance, resources)
    assert not daily.passed and daily.description is not None and "amount" in daily.description
    cooling = evaluate(first.cursor)
    assert f"already retrained for drift against production v{production}" in skip_message(cooling)
    assert skip_message(evaluate(cooling.cursor)).count("already handled") == 2
    # ... and once it is over, the next failure retrains again (new labels may have arrived since)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RTML_DRIFT_RETRAINING_COOLDOWN_HOURS", "0")
        get_settings.cache_clear()
        assert not hourly_check().passed
        [again] = evaluate(cooling.cursor).run_requests
        assert again.run_key != request.run_key and again.tags["rtml/trigger"] == recent
    get_settings.cache_clear()

    # 6. A person approves: the promotion notifies and requests the bento of the new production version.
    approval = {"version": version, "approver": "dana", "reason": "beats production after drift"}
    promoted = world_defs.resolve_job_def("promote_model_job").execute_in_process(
        instance=instance, run_config={"ops": {"production_model": {"config": approval}}}
    )
    assert promoted.success
    bento = after_run(promotion_sensor, instance, promoted, resources)
    assert isinstance(bento, dg.RunRequest) and bento.run_key == f"bento-after-{promoted.run_id}"
    assert bento.tags["rtml/trigger"] == f"promotion v{version}"
    assert promotion_sensor.job_name == "bento_job"
    [notice] = wait_for_rows(world_db, "promotion", before, count=1)
    assert notice["title"] == f"{name} v{version} is in production" and notice["fields"]["approver"] == "dana"


# --- an interrupted hourly refresh: the hour is rebuilt, once ----------------------------------------------
def test_an_hour_left_half_built_is_rebuilt_once(
    new_instance: Callable[[str], dg.DagsterInstance],
    world_defs: dg.Definitions,
) -> None:
    """An hourly refresh that stopped after loading the hour's transactions (killed; made here by a run of
    that first step alone): one rebuild of the hour is requested; a rebuild that stops half-way again is
    not requested again. (That a complete refresh satisfies the sensor: the end-to-end test above.)"""
    instance = new_instance("incomplete")
    hour = hour_key(day(CONTROL[0]) + timedelta(hours=10))
    refresh = world_defs.resolve_job_def("hourly_refresh_job")
    now = day(CONTROL[0]) + timedelta(hours=12)  # the sensor's clock: shortly after the hour
    assert isinstance(evaluate_incomplete_partitions(instance, now), dg.SkipReason)  # nothing loaded yet

    raw_only = [dg.AssetKey("transactions_raw")]
    assert refresh.execute_in_process(instance=instance, partition_key=hour, asset_selection=raw_only).success
    request = evaluate_incomplete_partitions(instance, now)
    assert isinstance(request, dg.RunRequest), request
    assert (request.tags[RANGE_TAGS[0]], request.tags[RANGE_TAGS[1]]) == (hour, hour)
    assert request.tags["rtml/trigger"] == f"incomplete partition {hour}"
    assert request.run_key is not None and request.run_key.startswith(f"{hour}...{hour}:transactions_raw:")

    # The requested run (tagged with the sensor's name, as the daemon launches it) stops half-way too.
    tags = {**request.tags, "dagster/sensor_name": SENSOR_NAME}
    again = refresh.execute_in_process(instance=instance, asset_selection=raw_only, tags=tags)
    assert again.success
    skipped = evaluate_incomplete_partitions(instance, now)
    assert isinstance(skipped, dg.SkipReason), skipped
    assert f"{hour} is incomplete after the rebuild run {again.run_id}" in (skipped.skip_message or "")
