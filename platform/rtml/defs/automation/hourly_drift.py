"""Drift checked every hour: ``hourly_drift_sensor`` requests ``hourly_drift_job`` after every successful
``hourly_refresh_job`` run, so the newest ``drift_recent_hours`` hours are compared with the production
model's training window as soon as the hour's features exist (``recent_drift_report`` and its check
``recent_drift_within_threshold``). A failed check requests a retraining (``drift_retraining_sensor``).

A run-status sensor rather than a schedule: it follows the refresh whatever its cadence or its lateness
(a slow hour, a backfill, a rebuild by ``incomplete_partitions_sensor``), and never evaluates an hour
whose features are not built yet. A separate run rather than one more asset in the refresh: a drift
report that cannot run (no production model yet) must not fail the hour's ingestion.
"""

from __future__ import annotations

import dagster as dg

from rtml.defs.automation.jobs import hourly_refresh_job
from rtml.defs.automation.tags import TRIGGER_TAG, partitions_of

hourly_drift_job = dg.define_asset_job(
    "hourly_drift_job",
    selection=dg.AssetSelection.assets("recent_drift_report"),
    description="Drift of the newest hours (`drift_recent_hours`) against production's training window, "
    "and its check `recent_drift_within_threshold` (a failure requests the retraining job). Launched "
    "after every hourly refresh.",
)


def refreshed_hours(run: dg.DagsterRun) -> str:
    """The hour (or range of hours) a refresh run built, as its tags say."""
    return partitions_of(run.tags) or "no partition"


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    name="hourly_drift_sensor",
    monitored_jobs=[hourly_refresh_job],
    request_job=hourly_drift_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="After every successful hourly refresh: the drift check of the newest hours.",
)
def hourly_drift_sensor(context: dg.RunStatusSensorContext) -> dg.RunRequest:
    run = context.dagster_run
    return dg.RunRequest(
        run_key=f"drift-after-{run.run_id}",  # once per refresh run, even if the sensor's cursor is lost
        tags={TRIGGER_TAG: f"hourly_refresh_job {refreshed_hours(run)}", "rtml/refresh_run": run.run_id},
    )
