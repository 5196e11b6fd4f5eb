"""The run-outcome sensors (``defs/monitoring/sensors.py``) push a job's failure and success times to a
real Pushgateway, one group per job and outcome, labelled ``dagster_job``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from rtml.config import get_settings
from rtml.defs.monitoring.sensors import pushgateway_run_failure, pushgateway_run_success
from tests.code_location import after_run
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


def test_failure_and_success_times_are_pushed(gateway: Process) -> None:
    resources = {"settings": get_settings()}  # the gateway's
    with dg.instance_for_test() as instance:
        failed = bad_job.execute_in_process(instance=instance, raise_on_error=False)
        after_run(pushgateway_run_failure, instance, failed, resources)
        succeeded = good_job.execute_in_process(instance=instance)
        after_run(pushgateway_run_success, instance, succeeded, resources)
    pushed = scrape(gateway.url)
    failure = pushed[
        'rtml_pipeline_run_failure_timestamp_seconds{asset="run_failure_bad_job",dagster_job="bad_job",instance="",job="rtml"}'
    ]
    success = pushed[
        'rtml_pipeline_run_success_timestamp_seconds{asset="run_success_good_job",dagster_job="good_job",instance="",job="rtml"}'
    ]
    assert failure > 1.7e9 and success >= failure
