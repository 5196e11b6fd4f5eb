"""The code location loads, and holds what the design names."""

from __future__ import annotations

import dagster as dg

from rtml.definitions import defs


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
