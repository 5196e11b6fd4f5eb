"""The code location loads, and holds what the design names."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import dagster as dg
import pytest

from rtml.config import IngestSettings, ServicesSettings, Settings
from rtml.definitions import defs
from rtml.defs.automation.tags import range_tags
from rtml.defs.executor import EVENT_BATCH_SIZE
from rtml.defs.ingestion.sensors import landing_files_sensor
from rtml.defs.online.resources import LocalRedis, RedisResource
from rtml.defs.resources import LocalPostgres, PostgresResource, environment_resources
from rtml.defs.training.resources import LocalMlflow, MlflowResource
from rtml.stack.local import StackInfo


def test_definitions_load_and_validate() -> None:
    dg.Definitions.validate_loadable(defs)


def test_raw_assets_and_their_partitions() -> None:
    graph = defs.resolve_asset_graph()
    transactions = graph.get(dg.AssetKey("transactions_raw"))
    labels = graph.get(dg.AssetKey("labels_raw"))
    assert isinstance(transactions.partitions_def, dg.HourlyPartitionsDefinition)
    assert isinstance(labels.partitions_def, dg.DailyPartitionsDefinition)
    assert graph.get(dg.AssetKey("transactions_landing")).partitions_def is not None


def test_raw_asset_checks_exist() -> None:
    check_keys = {
        (key.asset_key.to_user_string(), key.name) for key in defs.resolve_asset_graph().asset_check_keys
    }
    assert ("transactions_raw", "quarantine_share_below_threshold") in check_keys
    assert ("transactions_raw", "partition_row_count_plausible") in check_keys
    assert ("labels_raw", "quarantine_share_below_threshold") in check_keys


def test_jobs_schedules_and_sensors() -> None:
    assert defs.resolve_job_def("ingestion_job")
    assert defs.resolve_schedule_def("ingestion_job_schedule")
    assert defs.resolve_sensor_def("landing_files_sensor")


def test_every_job_executes_its_steps_in_its_run_s_process() -> None:
    """No process per step, each loading the code location again (``rtml.defs.executor``): the jobs the
    automation launches and the implicit asset job that the UI's "Materialize" and the bootstrap use."""
    jobs = defs.resolve_all_job_defs()
    assert {"hourly_refresh_job", "hourly_drift_job", "retraining_job"} <= {job.name for job in jobs}
    assert {job.name: job.executor_def for job in jobs} == {job.name: dg.in_process_executor for job in jobs}


def test_a_run_over_a_range_of_partitions_writes_their_materializations_in_batches(
    stack: StackInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The code location turns on Dagster's batched event writes (``rtml.defs.executor``): a run over 48
    hours records each asset's 48 materializations in one insert, not one connection each, and every hour
    still shows as materialized, the newest last, in the stack's PostgreSQL instance."""
    assert os.environ["DAGSTER_EVENT_BATCH_SIZE"] == str(EVENT_BATCH_SIZE)  # set by the import above
    hours = dg.HourlyPartitionsDefinition(start_date="2026-11-01-00:00")

    @dg.asset(partitions_def=hours)
    def upstream() -> dg.MaterializeResult:
        return dg.MaterializeResult()

    @dg.asset(partitions_def=hours, deps=[upstream])
    def downstream() -> dg.MaterializeResult:
        return dg.MaterializeResult()

    job = dg.define_asset_job("batched", executor_def=dg.in_process_executor)
    probe = dg.Definitions(assets=[upstream, downstream], jobs=[job])
    instance = dg.DagsterInstance.from_config(str(stack.dagster_home))
    storage = instance.event_log_storage
    batches: list[list[str | None]] = []
    write_batch = storage.store_event_batch

    def recording(events: Sequence[dg.EventLogEntry]) -> None:  # records, then Dagster's own write
        materialized = dg.DagsterEventType.ASSET_MATERIALIZATION
        batches.append([e.dagster_event.partition for e in events if e.dagster_event_type == materialized])
        write_batch(events)

    monkeypatch.setattr(storage, "store_event_batch", recording)
    first, last = "2026-11-02-00:00", "2026-11-03-23:00"
    result = probe.resolve_job_def("batched").execute_in_process(
        instance=instance, tags=range_tags(first, last)
    )
    assert result.success
    expected = set(hours.get_partition_keys_in_range(dg.PartitionKeyRange(first, last)))
    assert len(expected) == 48
    assert [sorted(batch) for batch in batches if batch] == [sorted(expected)] * 2
    for asset in (upstream, downstream):
        assert instance.get_materialized_partitions(asset.key) == expected
        newest = instance.get_latest_materialization_event(asset.key)
        assert newest is not None and newest.dagster_event is not None
        assert newest.dagster_event.partition == last


def test_the_code_location_loads_without_the_training_libraries() -> None:
    """Every run, code server and sensor tick loads the code location; MLflow, scikit-learn (with SciPy)
    and matplotlib come in where a step trains, gates or compares models, not with the load."""
    script = (
        "import sys, rtml.definitions; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'mlflow', 'sklearn', 'scipy', 'matplotlib'}))"
    )
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]", loaded.stdout


def test_resources_are_chosen_per_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """One place picks the servers: the local stack's (looked up when used) or the environment's."""
    local = environment_resources(Settings(services=ServicesSettings(environment="local")))
    assert [type(local[key]) for key in ("postgres", "redis", "mlflow")] == [
        LocalPostgres,
        LocalRedis,
        LocalMlflow,
    ]
    assert isinstance(defs.resources["postgres"], LocalPostgres)  # the default environment
    assert local["settings"].services.environment == "local"  # the settings travel with the servers
    servers = environment_resources(Settings(services=ServicesSettings(environment="servers")))
    monkeypatch.setenv("RTML_DATABASE_URL", "postgresql://db.invalid/rtml")
    monkeypatch.setenv("RTML_REDIS_URL", "redis://redis.invalid:6379/0")
    monkeypatch.setenv("RTML_MLFLOW_TRACKING_URI", "http://mlflow.invalid:5000")

    @dg.asset
    def probe(postgres: PostgresResource, redis: RedisResource, mlflow: MlflowResource) -> dict[str, str]:
        return {"postgres": postgres.database_url(), "redis": redis.redis_url(), "mlflow": mlflow.uri()}

    result = dg.materialize([probe], resources=servers)  # EnvVar: read when the run starts
    assert result.output_for_node("probe") == {
        "postgres": "postgresql://db.invalid/rtml",
        "redis": "redis://redis.invalid:6379/0",
        "mlflow": "http://mlflow.invalid:5000",
    }


def test_definitions_are_handed_their_settings_not_reading_the_environment(tmp_path: Path) -> None:
    """A body reads the ``settings`` resource it is given: here the landing sensor watches the folder of
    the settings passed, not that of the environment (the session's data directory)."""
    mine = Settings(
        services=ServicesSettings(data_dir=tmp_path), ingest=IngestSettings(landing_settle_seconds=0)
    )
    mine.services.landing_dir.mkdir(parents=True)
    (mine.services.landing_dir / "handed.csv").write_text("transaction_id\n1\n")
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, resources={"settings": mine})
        [request] = landing_files_sensor(context).run_requests
    assert request.partition_key == "handed.csv"
