"""The automation's wiring, through Dagster's own contexts on the loaded code location (``rtml.definitions``):
every schedule and sensor is registered with the status it starts in, the schedules' cron strings, the
hour the hourly refresh builds when it ticks, the jobs the run-status sensors watch and request, and the
``rtml/trigger`` tag on the run requests of every schedule (evaluated here) and of every sensor that can
request a run (evaluated by the tests named in ``SENSOR_TAG_TESTS``, on real instances and data).

No database: the schedules' ticks and the run-status sensor below need only an instance
(``instance_for_test``: a temporary local one), and their clocks are passed in.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import dagster as dg
import pytest

from rtml.config import get_settings
from rtml.definitions import defs
from rtml.defs.automation.tags import PARTITION_TAG, TRIGGER_TAG, partitions_of, range_tags

REPOSITORY = defs.get_repository_def()
RUNNING, STOPPED = dg.DefaultScheduleStatus.RUNNING, dg.DefaultScheduleStatus.STOPPED

# name → (cron, job, default status). The ingestion domain's raw-only hourly schedule stays off: the
# automation's hourly refresh loads the same hours with their features.
SCHEDULES = {
    "hourly_refresh_schedule": ("5 * * * *", "hourly_refresh_job", RUNNING),
    "daily_retraining_schedule": (get_settings().automation.retraining_cron, "retraining_job", RUNNING),
    "daily_drift_schedule": (get_settings().automation.drift_report_cron, "drift_job", RUNNING),
    "daily_challenger_schedule": (get_settings().monitoring.challenger_cron, "challenger_job", RUNNING),
    "labels_job_schedule": ("15 0 * * *", "labels_job", RUNNING),
    "ingestion_job_schedule": ("5 * * * *", "ingestion_job", STOPPED),
}

# Sensors that request runs (name → the job they request; None: the assets' checks they select) and the
# test that evaluates a run request of theirs and asserts its `rtml/trigger` tag.
SENSOR_TAG_TESTS = {
    "drift_retraining_sensor": ("retraining_job", "test_automation::test_drift_requests_one_retraining..."),
    "model_staleness_sensor": ("retraining_job", "test_automation::test_a_stale_model_requests_..."),
    "freshness_checks_sensor": (None, "test_automation::test_a_stale_model_requests_..."),
    "incomplete_partitions_sensor": (
        "hourly_refresh_job",
        "test_automation::test_an_hour_left_half_built...",
    ),
    "landing_files_sensor": ("landing_ingestion_job", "test_automation::test_a_dropped_landing_file..."),
    "online_store_heal_sensor": ("online_rebuild_job", "test_online_assets (self-heal)"),
    "promotion_sensor": ("bento_job", "test_automation::test_drift_requests_one_retraining..."),
    "hourly_drift_sensor": ("hourly_drift_job", "here: test_the_hourly_drift_sensor_follows_every_refresh"),
    "late_rows_sensor": ("late_rows_job", "test_late_rows::test_landing_file_of_a_past_day_reaches_..."),
}
# Sensors that only notify or push metrics.
NOTIFY_ONLY = {
    "data_freshness_sensor",
    "retraining_notifier",
    "run_failure_notifier",
    "online_rebuild_notifier",
    "pushgateway_run_failure",
    "pushgateway_run_success",
}
# Run-status sensors: the status they react to, the jobs they watch (None: every job), the job they request.
RUN_STATUS_SENSORS = {
    "hourly_drift_sensor": (dg.DagsterRunStatus.SUCCESS, {"hourly_refresh_job"}, "hourly_drift_job"),
    "retraining_notifier": (dg.DagsterRunStatus.SUCCESS, {"retraining_job", "training_job"}, None),
    "promotion_sensor": (dg.DagsterRunStatus.SUCCESS, {"promote_model_job"}, "bento_job"),
    "online_rebuild_notifier": (dg.DagsterRunStatus.SUCCESS, {"online_rebuild_job"}, None),
    "run_failure_notifier": (dg.DagsterRunStatus.FAILURE, None, None),
    "pushgateway_run_failure": (dg.DagsterRunStatus.FAILURE, None, None),
    "pushgateway_run_success": (dg.DagsterRunStatus.SUCCESS, None, None),
}


@pytest.fixture(scope="module")
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


def tick(instance: dg.DagsterInstance, name: str, when: datetime) -> list[dg.RunRequest]:
    schedule = REPOSITORY.get_schedule_def(name)
    context = dg.build_schedule_context(instance=instance, scheduled_execution_time=when)
    result = schedule.evaluate_tick(context)
    assert result.skip_message is None, result.skip_message
    return list(result.run_requests or [])


def test_every_schedule_is_registered_with_its_cron_job_and_status() -> None:
    found = {
        s.name: (s.cron_schedule, s.job_name, s.default_status, s.execution_timezone)
        for s in REPOSITORY.schedule_defs
    }
    assert found == {name: (*wiring, "UTC") for name, wiring in SCHEDULES.items()}


def test_every_sensor_is_registered_and_starts_running() -> None:
    sensors = {sensor.name: sensor for sensor in REPOSITORY.sensor_defs}
    assert set(sensors) == set(SENSOR_TAG_TESTS) | NOTIFY_ONLY
    assert {
        name for name, s in sensors.items() if s.default_status != dg.DefaultSensorStatus.RUNNING
    } == set()
    for name, (job, _) in SENSOR_TAG_TESTS.items():  # what each requesting sensor launches
        sensor = sensors[name]
        if job is None:
            assert sensor.asset_selection is not None, name
        else:
            assert sensor.job_name == job, name
    for name in NOTIFY_ONLY:
        assert not sensors[name].has_jobs and sensors[name].asset_selection is None, name


def test_run_status_sensors_watch_their_jobs() -> None:
    sensors = {s.name: s for s in REPOSITORY.sensor_defs if isinstance(s, dg.RunStatusSensorDefinition)}
    assert set(sensors) == set(RUN_STATUS_SENSORS)
    for name, (status, jobs, requested) in RUN_STATUS_SENSORS.items():
        sensor = sensors[name]
        # Dagster 1.13 keeps what a run-status sensor watches in private attributes only
        assert sensor._run_status == status, name
        watched = sensor._monitored_jobs
        assert (None if not watched else {getattr(job, "name", job) for job in watched}) == jobs, name
        assert (sensor.job_name if sensor.has_jobs else None) == requested, name


def test_the_hourly_refresh_lands_at_five_past_on_the_previous_hour(instance: dg.DagsterInstance) -> None:
    [request] = tick(instance, "hourly_refresh_schedule", datetime(2026, 12, 5, 11, 5, tzinfo=UTC))
    assert request.partition_key == "2026-12-05-10:00"
    assert request.tags[TRIGGER_TAG] == "hourly_refresh_schedule"
    # across midnight: the 00:05 tick builds 23:00 of the day before
    [night] = tick(instance, "hourly_refresh_schedule", datetime(2026, 12, 6, 0, 5, tzinfo=UTC))
    assert night.partition_key == "2026-12-05-23:00"


def test_every_schedules_run_requests_carry_the_trigger_tag(instance: dg.DagsterInstance) -> None:
    when = datetime(2026, 12, 5, 12, 5, tzinfo=UTC)  # a time past every schedule's partitions' start
    for name in SCHEDULES:
        requests = tick(instance, name, when)
        assert requests, name
        assert all(request.tags.get(TRIGGER_TAG) == name for request in requests), (name, requests)


def test_the_hourly_drift_sensor_follows_every_refresh(instance: dg.DagsterInstance) -> None:
    """A successful ``hourly_refresh_job`` run (recorded in the instance, as the daemon's would be)
    requests the hourly drift check once, tagged with the hour it built."""
    from rtml.defs.automation.hourly_drift import hourly_drift_sensor

    job = defs.resolve_job_def("hourly_refresh_job")
    run = instance.create_run_for_job(
        job_def=job,
        run_id=None,
        tags={"dagster/partition": "2026-12-05-10:00"},
        status=dg.DagsterRunStatus.SUCCESS,
    )
    event = dg.DagsterEvent(
        event_type_value=dg.DagsterEventType.RUN_SUCCESS.value, job_name=job.name, message="done"
    )
    context = dg.build_run_status_sensor_context(
        sensor_name="hourly_drift_sensor", dagster_instance=instance, dagster_run=run, dagster_event=event
    )
    request = hourly_drift_sensor(context)
    assert isinstance(request, dg.RunRequest)
    assert request.run_key == f"drift-after-{run.run_id}"  # once per refresh run
    assert request.tags[TRIGGER_TAG] == "hourly_refresh_job 2026-12-05-10:00"


def test_a_runs_partitions_read_from_its_tags() -> None:
    assert (
        partitions_of(range_tags("2026-11-02-00:00", "2026-11-02-02:00"))
        == "2026-11-02-00:00...2026-11-02-02:00"
    )
    assert partitions_of({PARTITION_TAG: "2026-11-02"}) == "2026-11-02"
    assert partitions_of({}) is None
