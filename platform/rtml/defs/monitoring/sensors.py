"""Run outcomes as metrics: every finished run of a job pushes when it failed or succeeded
(``rtml_pipeline_run_failure_timestamp_seconds`` / ``..._success_...``, label ``dagster_job``), so Prometheus
alerts when the latest run of an ingestion or training job failed (``monitoring/prometheus/rules``).
Both sensors run in the Dagster daemon (``dagster dev`` / ``rtml demo``). They feed Prometheus only: the
notification of a failed run (job, run id, errors) is ``run_failure_notifier``'s (``defs/automation``)."""

import dagster as dg

from rtml.config import Settings
from rtml.monitoring import metrics


def _push_outcome(context: dg.RunStatusSensorContext, metric: str, settings: Settings) -> None:
    run = context.dagster_run
    stats = context.instance.get_run_stats(run.run_id)
    when = stats.end_time or stats.launch_time or 0.0
    # label `dagster_job`: the Pushgateway overwrites a pushed `job` label with the group's (`rtml`)
    sample = metrics.Sample(metric, when, {"dagster_job": run.job_name})
    # one Pushgateway group per job and outcome: a success does not erase the last failure
    outcome = "failure" if "failure" in metric else "success"
    metrics.publish(f"run_{outcome}_{run.job_name}", [sample], settings.monitoring.pushgateway_url)


@dg.run_failure_sensor(name="pushgateway_run_failure", default_status=dg.DefaultSensorStatus.RUNNING)
def pushgateway_run_failure(
    context: dg.RunFailureSensorContext, settings: dg.ResourceParam[Settings]
) -> None:
    """Pushes the failure time of every failed run."""
    _push_outcome(context, "rtml_pipeline_run_failure_timestamp_seconds", settings)


@dg.run_status_sensor(
    name="pushgateway_run_success",
    run_status=dg.DagsterRunStatus.SUCCESS,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def pushgateway_run_success(context: dg.RunStatusSensorContext, settings: dg.ResourceParam[Settings]) -> None:
    """Pushes the success time of every successful run."""
    _push_outcome(context, "rtml_pipeline_run_success_timestamp_seconds", settings)
