"""The run-outcome sensors (``defs/monitoring/sensors.py``) push a job's failure and success times to a
real Pushgateway, one group per job and outcome, labelled ``dagster_job``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from rtml.config import get_settings
from rtml.defs.monitoring.sensors import pushgateway_run_failure, pushgateway_run_success
from tests.monitoring_stack import Process, pushgateway, scrape


@dg.op
def succeeds() -> None:
    pass


@dg.op
def fails() -> None:
    raise RuntimeError("boom")


@dg.job
def good_job() -> None:
    succeeds()


@dg.job
def bad_job() -> None:
    fails()


@pytest.fixture
def gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Process]:
    with pushgateway(tmp_path) as process:
        monkeypatch.setenv("RTML_PUSHGATEWAY_URL", process.url)
        get_settings.cache_clear()
        yield process
    get_settings.cache_clear()


def _outcome(job: dg.JobDefinition, instance: dg.DagsterInstance) -> tuple[dg.DagsterRun, dg.DagsterEvent]:
    result = job.execute_in_process(instance=instance, raise_on_error=False)
    run = instance.get_run_by_id(result.run_id)
    assert run is not None
    event = next(
        e for e in result.all_events if e.event_type_value in ("PIPELINE_SUCCESS", "PIPELINE_FAILURE")
    )
    return run, event


def test_failure_and_success_times_are_pushed(gateway: Process) -> None:
    with dg.instance_for_test() as instance:
        run, event = _outcome(bad_job, instance)
        context = dg.build_run_status_sensor_context(
            sensor_name="pushgateway_run_failure",
            dagster_instance=instance,
            dagster_run=run,
            dagster_event=event,
        ).for_run_failure()
        pushgateway_run_failure(context)
        run, event = _outcome(good_job, instance)
        pushgateway_run_success(
            dg.build_run_status_sensor_context(
                sensor_name="pushgateway_run_success",
                dagster_instance=instance,
                dagster_run=run,
                dagster_event=event,
            )
        )
    pushed = scrape(gateway.url)
    failure = pushed[
        'rtml_pipeline_run_failure_timestamp_seconds{asset="run_failure_bad_job",dagster_job="bad_job",instance="",job="rtml"}'
    ]
    success = pushed[
        'rtml_pipeline_run_success_timestamp_seconds{asset="run_success_good_job",dagster_job="good_job",instance="",job="rtml"}'
    ]
    assert failure > 1.7e9 and success >= failure
