"""Jobs and schedules of the raw streams."""

from __future__ import annotations

import dagster as dg

from rtml.defs.automation.tags import TRIGGER_TAG

ingestion_job = dg.define_asset_job("ingestion_job", selection=["transactions_raw"])
labels_job = dg.define_asset_job("labels_job", selection=["labels_raw"])

# Each tick loads the hour that just closed; the daily labels load shortly after midnight.
hourly_ingestion_schedule = dg.build_schedule_from_partitioned_job(
    ingestion_job, minute_of_hour=5, tags={TRIGGER_TAG: "ingestion_job_schedule"}
)
# On by default: retraining (defs/automation) learns from the labels this loads. The hourly ingestion
# schedule stays off: `hourly_refresh_schedule` (defs/automation) loads each hour with its features.
daily_labels_schedule = dg.build_schedule_from_partitioned_job(
    labels_job,
    hour_of_day=0,
    minute_of_hour=15,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    tags={TRIGGER_TAG: "labels_job_schedule"},
)
