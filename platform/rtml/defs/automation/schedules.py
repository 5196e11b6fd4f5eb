"""Schedules: the hourly refresh, the daily retraining, the daily drift report and the daily live
challenger comparison. All start RUNNING, so
the daemon of ``rtml demo`` ticks them."""

from __future__ import annotations

import dagster as dg

from rtml.config import AutomationSettings, MonitoringSettings, get_settings
from rtml.defs.automation.jobs import challenger_job, drift_job, hourly_refresh_job, retraining_job
from rtml.defs.automation.tags import TRIGGER_TAG

# At :05 the hour that just closed: its transactions, features and the online store. (The ingestion
# domain's `ingestion_job_schedule` loads raw transactions only and starts STOPPED; leave it off while
# this one runs, or the same hour is loaded twice — harmlessly, loads replace their partition.)
hourly_refresh_schedule = dg.build_schedule_from_partitioned_job(
    hourly_refresh_job,
    name="hourly_refresh_schedule",
    minute_of_hour=5,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    tags={TRIGGER_TAG: "hourly_refresh_schedule"},
)


def _daily(
    name: str, job: dg.UnresolvedAssetJobDefinition, cron_schedule: str, description: str
) -> dg.ScheduleDefinition:
    """A daily job's schedule (a cron in UTC), RUNNING from the start, its runs tagged with its name."""
    return dg.ScheduleDefinition(
        name=name,
        job=job,
        cron_schedule=cron_schedule,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        tags={TRIGGER_TAG: name},
        description=description,
    )


def cron_schedules(
    automation: AutomationSettings, monitoring: MonitoringSettings
) -> list[dg.ScheduleDefinition]:
    """The daily schedules, their cron expressions from the settings."""
    return [
        # Daily, after the day's labels (labels_job at 00:15): the newest labels make the newest training
        # set.
        _daily(
            "daily_retraining_schedule",
            retraining_job,
            automation.retraining_cron,
            "Retrain daily on the newest labels (cron: RTML_RETRAINING_CRON).",
        ),
        # Half a day away from the nightly retraining: a drift found here retrains at once (drift sensor)
        # instead of waiting for the night.
        _daily(
            "daily_drift_schedule",
            drift_job,
            automation.drift_report_cron,
            "The drift report and its check, daily (cron: RTML_DRIFT_REPORT_CRON).",
        ),
        # Daily, after the day's labels (labels_job at 00:15) and the drift report: one more day of labelled
        # shadow scores for the staged version's verdict.
        _daily(
            "daily_challenger_schedule",
            challenger_job,
            monitoring.challenger_cron,
            "The staged version against production on live requests, daily (cron: RTML_CHALLENGER_CRON).",
        ),
    ]


@dg.definitions
def defs() -> dg.Definitions:
    settings = get_settings()
    return dg.Definitions(
        schedules=[hourly_refresh_schedule, *cron_schedules(settings.automation, settings.monitoring)]
    )
