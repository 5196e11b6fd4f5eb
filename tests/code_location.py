"""The code location as a run worker loads it, for tests that execute its jobs in process, and what the
daemon's run-status sensors do after such a run.

``rtml.definitions.defs`` was loaded when the test modules were collected, so its ``settings`` resource holds
the environment of that moment; a run worker loads the definitions when the run starts. Tests whose
fixtures set the environment (the session's data directory, a world's simulator) build the code location
here, after them: its settings are read now, and any resource can be replaced (a test database, a model
name, a Redis namespace).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg

from rtml.config import get_settings
from rtml.definitions import defs


def code_location(
    resources: Mapping[str, Any] | None = None, executor: dg.ExecutorDefinition | None = None
) -> dg.Definitions:
    """The code location, with ``resources`` replaced and, given one, another ``executor``
    (``benchmarks/hourly_run.py`` compares Dagster's multiprocess executor with the location's)."""
    return dg.Definitions(
        assets=defs.assets,
        asset_checks=defs.asset_checks,
        jobs=defs.jobs,
        schedules=defs.schedules,
        sensors=defs.sensors,
        resources={**(defs.resources or {}), "settings": get_settings(), **(resources or {})},
        executor=executor or defs.executor,
    )


def after_run(
    sensor: dg.RunStatusSensorDefinition,
    instance: dg.DagsterInstance,
    result: dg.ExecuteInProcessResult,
    resources: Mapping[str, Any] | None = None,
) -> Any:
    """What the daemon's tick of run-status ``sensor`` does about the finished in-process run ``result``
    (after a failure, with a run-failure sensor's context)."""
    run = instance.get_run_by_id(result.run_id)
    assert run is not None
    outcome = next(
        e for e in result.all_events if e.event_type_value in ("PIPELINE_SUCCESS", "PIPELINE_FAILURE")
    )
    context = dg.build_run_status_sensor_context(
        sensor_name=sensor.name,
        dagster_event=outcome,
        dagster_instance=instance,
        dagster_run=run,
        resources=dict(resources or {}),
    )
    if outcome.event_type_value == "PIPELINE_FAILURE":  # a run-failure sensor's context
        with context.for_run_failure() as failure:
            return sensor(failure)
    with context:
        return sensor(context)
