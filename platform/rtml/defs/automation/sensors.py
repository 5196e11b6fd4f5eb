"""Sensors of the automation. All run in the Dagster daemon (``rtml demo`` starts it) and start RUNNING.

Check reactions, each once per failed evaluation (the cursor keeps the id of the latest evaluation seen;
a request's ``run_key`` is that id, so even a lost cursor cannot launch it twice):

* ``drift_retraining_sensor``: ``drift_report:drift_within_threshold`` (daily) or
  ``recent_drift_report:recent_drift_within_threshold`` (hourly, ``hourly_drift.py``) failed →
  ``retraining_job``. Once per drift, not once per hour while it lasts: the reference of both checks is
  the production version's training window, so the data stays "drifted" every hour until a retrained
  version is promoted; after a drift-triggered retraining against a production version, further failures
  against the same version request nothing for ``drift_retraining_cooldown_hours`` (a run that failed or
  was canceled does not count: the next failure retries);
* ``model_staleness_sensor``: ``fraud_model:freshness_check`` failed → ``retraining_job``;
* ``data_freshness_sensor``: the freshness check of ``transactions_raw`` or ``online_features`` failed →
  a notification.

Run reactions:

* ``run_failure_notifier``: any failed run → a notification with job, run id and error (its failure time
  goes to Prometheus through ``pushgateway_run_failure``, ``defs/monitoring``);
* ``retraining_notifier``: a successful ``retraining_job`` / ``training_job`` run → a notification with
  the evaluation gate's comparison ("v7: PR AUC 0.81 vs production v6 0.74; staged; ...") and the latest
  live challenger comparison (or that there are too few labelled requests for one);
* ``promotion_sensor``: a successful ``promote_model_job`` run → a notification, and ``bento_job`` builds the
  bento of the new production version (the running scorer swaps it in by itself, polling the registry).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg

from rtml.config import Settings, redact
from rtml.defs.automation.checks import DATA_FRESHNESS, MODEL_FRESHNESS
from rtml.defs.automation.jobs import bento_job, retraining_job
from rtml.defs.automation.tags import TRIGGER_TAG as TRIGGER_TAG  # re-exported: other domains import it here
from rtml.defs.automation.tags import partitions_of
from rtml.defs.resources import PostgresResource
from rtml.defs.training.jobs import promote_model_job, training_job
from rtml.defs.training.resources import MlflowResource
from rtml.monitoring.notify import notify

DRIFT_CHECK = dg.AssetCheckKey(dg.AssetKey("drift_report"), "drift_within_threshold")
RECENT_DRIFT_CHECK = dg.AssetCheckKey(dg.AssetKey("recent_drift_report"), "recent_drift_within_threshold")
DRIFT_REFERENCE_TAG = "rtml/drift_reference_version"  # the production version a drift retraining answers
ACTIVE = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]
METRIC_NAMES = {"pr_auc": "PR AUC", "roc_auc": "ROC AUC", "recall_at_1pct_fpr": "recall at 1% FPR"}


# --- check evaluations -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckOutcome:
    record_id: int
    """The check execution's id in the event log storage: increasing, one per evaluation."""
    run_id: str
    evaluation: dg.AssetCheckEvaluation


def latest_evaluation(instance: dg.DagsterInstance, key: dg.AssetCheckKey) -> CheckOutcome | None:
    """The newest completed evaluation of ``key`` (rows that are only planned — a run still going, or one
    that failed before reaching the check — are passed over)."""
    for record in instance.event_log_storage.get_asset_check_execution_history(key, limit=10):
        if isinstance(record.evaluation, dg.AssetCheckEvaluation):
            return CheckOutcome(record.id, record.run_id, record.evaluation)
    return None


def new_failures(
    context: dg.SensorEvaluationContext, keys: tuple[dg.AssetCheckKey, ...]
) -> tuple[list[CheckOutcome], str, list[str]]:
    """The failed latest evaluations of ``keys`` not handled before, the advanced cursor (JSON: check →
    newest evaluation id seen), and a note per check without a new failure."""
    seen: dict[str, int] = json.loads(context.cursor) if context.cursor else {}
    failures, notes = [], []
    for key in keys:
        name = key.to_user_string()
        latest = latest_evaluation(context.instance, key)
        if latest is None:
            notes.append(f"{name}: not evaluated yet")
        elif latest.record_id <= seen.get(name, 0):
            notes.append(f"{name}: evaluation {latest.record_id} already handled")
        else:
            seen[name] = latest.record_id
            if latest.evaluation.passed:
                notes.append(f"{name}: latest evaluation {latest.record_id} passed")
            else:
                failures.append(latest)
    return failures, json.dumps(seen, sort_keys=True), notes


def _retraining_active(instance: dg.DagsterInstance, name: str, record_id: int) -> str | None:
    """Why a failure of check ``name`` requests nothing now: a retraining run is active, and it trains on
    the newest data anyway (a second one would only compete with it)."""
    active = instance.get_run_records(dg.RunsFilter(job_name=retraining_job.name, statuses=ACTIVE), limit=1)
    if not active:
        return None
    return f"{name} failed (evaluation {record_id}); retraining run {active[0].dagster_run.run_id} is active"


def _retrain_on_failure(context: dg.SensorEvaluationContext, key: dg.AssetCheckKey) -> dg.SensorResult:
    failures, cursor, notes = new_failures(context, (key,))
    if not failures:
        return dg.SensorResult(skip_reason="; ".join(notes), cursor=cursor)
    failure = failures[0]
    name = key.to_user_string()
    busy = _retraining_active(context.instance, name, failure.record_id)
    if busy:
        return dg.SensorResult(skip_reason=busy, cursor=cursor)
    context.log.info(f"{name} failed: {failure.evaluation.description}; requesting retraining")
    request = dg.RunRequest(
        run_key=f"{name}:{failure.record_id}",
        tags={TRIGGER_TAG: name, "rtml/check_evaluation": str(failure.record_id)},
    )
    return dg.SensorResult(run_requests=[request], cursor=cursor)


@dg.sensor(
    job=retraining_job,
    minimum_interval_seconds=30,  # on the path from drift to a staged model (75 min target)
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="A drift check (daily drift_report, hourly recent_drift_report) failed: retrain, once per "
    "drift (no second request against the same production version within drift_retraining_cooldown_hours).",
)
def drift_retraining_sensor(
    context: dg.SensorEvaluationContext, settings: dg.ResourceParam[Settings]
) -> dg.SensorResult:
    failures, cursor, notes = new_failures(context, (DRIFT_CHECK, RECENT_DRIFT_CHECK))
    if not failures:
        return dg.SensorResult(skip_reason="; ".join(notes), cursor=cursor)
    failure = max(failures, key=lambda outcome: outcome.record_id)  # both failed: one request, the newest
    evaluation = failure.evaluation
    name = evaluation.asset_check_key.to_user_string()
    busy = _retraining_active(context.instance, name, failure.record_id)
    if busy:
        return dg.SensorResult(skip_reason=busy, cursor=cursor)
    version = evaluation.metadata.get("model_version")
    reference = str(version.value) if version is not None else "none"
    earlier = _drift_retraining_since(
        context.instance, reference, settings.monitoring.drift_retraining_cooldown_hours
    )
    if earlier is not None:
        reason = (
            f"{name} failed (evaluation {failure.record_id}), but run {earlier.dagster_run.run_id} already "
            f"retrained for drift against production v{reference} at "
            f"{earlier.create_timestamp:%Y-%m-%d %H:%M} UTC (cool-down drift_retraining_cooldown_hours; "
            "promote the staged version to move the reference)"
        )
        return dg.SensorResult(skip_reason=reason, cursor=cursor)
    context.log.info(f"{name} failed: {evaluation.description}; requesting retraining")
    request = dg.RunRequest(
        run_key=f"{name}:{failure.record_id}",
        tags={
            TRIGGER_TAG: name,
            "rtml/check_evaluation": str(failure.record_id),
            DRIFT_REFERENCE_TAG: reference,
        },
    )
    return dg.SensorResult(run_requests=[request], cursor=cursor)


def _drift_retraining_since(
    instance: dg.DagsterInstance, reference: str, cooldown_hours: float
) -> dg.RunRecord | None:
    """The newest drift-triggered retraining against production ``reference`` created within the cool-down
    that succeeded or may still (one that failed or was canceled is no reason to wait)."""
    statuses = [dg.DagsterRunStatus.NOT_STARTED, *ACTIVE, dg.DagsterRunStatus.SUCCESS]
    records = instance.get_run_records(
        dg.RunsFilter(job_name=retraining_job.name, tags={DRIFT_REFERENCE_TAG: reference}, statuses=statuses),
        limit=1,
    )
    since = datetime.now(UTC) - timedelta(hours=cooldown_hours)
    return records[0] if records and records[0].create_timestamp >= since else None


@dg.sensor(
    job=retraining_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="fraud_model is older than model_max_age_days (its freshness check failed): retrain.",
)
def model_staleness_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    return _retrain_on_failure(context, MODEL_FRESHNESS)


@dg.sensor(
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="transactions_raw or online_features is stale (freshness check failed): notify.",
)
def data_freshness_sensor(
    context: dg.SensorEvaluationContext, postgres: PostgresResource, settings: dg.ResourceParam[Settings]
) -> dg.SensorResult:
    failures, cursor, notes = new_failures(context, DATA_FRESHNESS)
    for failure in failures:
        evaluation = failure.evaluation
        asset = evaluation.asset_key.to_user_string()
        metadata = {key: value.value for key, value in evaluation.metadata.items()}
        notify(
            "data_freshness",
            f"{asset} is stale",
            evaluation.description or f"the freshness check of {asset} failed",
            {
                "asset": asset,
                "check": evaluation.check_name,
                "last_updated": _timestamp(metadata.get("dagster/last_updated_timestamp")),
                "must_be_newer_than": _timestamp(metadata.get("dagster/freshness_lower_bound_timestamp")),
                "check_evaluation": failure.record_id,
                "check_run_id": failure.run_id,
            },
            settings,
            database_url=postgres.database_url(),
        )
    if not failures:
        return dg.SensorResult(skip_reason="; ".join(notes), cursor=cursor)
    return dg.SensorResult(cursor=cursor)


# --- run outcomes ----------------------------------------------------------------------------------------
def _run_materialization(instance: dg.DagsterInstance, run_id: str, asset: str) -> dict[str, Any] | None:
    """The metadata of ``asset``'s materialization in run ``run_id`` (plain values)."""
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
        materialization = entry.asset_materialization
        if materialization is not None and materialization.asset_key == dg.AssetKey(asset):
            return {key: value.value for key, value in materialization.metadata.items()}
    return None


@dg.run_failure_sensor(
    name="run_failure_notifier",
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Every failed run notifies: job, run id and the failing steps' errors.",
)
def run_failure_notifier(
    context: dg.RunFailureSensorContext, postgres: PostgresResource, settings: dg.ResourceParam[Settings]
) -> None:
    run = context.dagster_run
    errors = []
    for event in context.get_step_failure_events():
        error = event.step_failure_data.error
        while error is not None and error.cause is not None:  # Dagster's wrapper → the user code's error
            error = error.cause
        if error is not None:
            errors.append(f"{event.step_key}: {error.message.strip()}")
    message = "\n".join(errors) or (context.failure_event.message or "the run failed")
    notify(
        "run_failure",
        f"Run of {run.job_name} failed",
        message[:2500],
        {
            "job": run.job_name,
            "run_id": run.run_id,
            "error": message[:1500],
            "partition": partitions_of(run.tags) or "none",
            "trigger": run.tags.get(TRIGGER_TAG) or _launched_by(run.tags),
        },
        settings,
        database_url=postgres.database_url(),
    )


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    name="retraining_notifier",
    monitored_jobs=[retraining_job, training_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="After a retraining: the new version against production, staged or rejected, and how "
    "to approve it.",
)
def retraining_notifier(
    context: dg.RunStatusSensorContext,
    postgres: PostgresResource,
    mlflow: MlflowResource,
    settings: dg.ResourceParam[Settings],
) -> None:
    from rtml.monitoring import challenger  # scikit-learn: imported when a retraining ends, not at load

    run = context.dagster_run
    metadata = _run_materialization(context.instance, run.run_id, "fraud_model")
    if metadata is None:
        context.log.info(f"run {run.run_id} materialized no fraud_model: nothing to report")
        return
    version = str(metadata["model_version"])
    staged = metadata.get("gate") == "staged"
    comparison = _gate_comparison(mlflow, version, settings.training.gate_metric)
    name = mlflow.model_name
    if staged:
        outcome = f"staged; approve with `rtml promote {version} --approver NAME --reason TEXT`"
    else:
        outcome = f"rejected: {metadata.get('gate_reason', 'see the evaluation gate')}"
    live = challenger.notice(postgres.database_url(), settings.monitoring.challenger_min_labelled)
    notify(
        "retraining",
        f"{name} v{version} {'staged' if staged else 'rejected'}",
        f"{name} v{version}: {comparison}; {outcome}\nLive: {live}",
        {
            "model": name,
            "version": version,
            "gate": metadata.get("gate", "unknown"),
            "gate_reason": metadata.get("gate_reason", ""),
            "trigger": run.tags.get(TRIGGER_TAG) or _launched_by(run.tags),
            "job": run.job_name,
            "run_id": run.run_id,
            "mlflow": metadata.get("mlflow_url", ""),
            "live_comparison": live,
        },
        settings,
        database_url=postgres.database_url(),
    )


def _gate_comparison(mlflow: MlflowResource, version: str, metric: str) -> str:
    """The gate's comparison, e.g. ``PR AUC 0.8100 vs production v6 0.7400`` (both scored on the new
    version's test window), from its tags on the version; says so when the registry is unreachable."""
    from mlflow.exceptions import MlflowException

    label = METRIC_NAMES.get(metric, metric)
    try:
        tags = mlflow.client().get_model_version(mlflow.model_name, version).tags
    except (MlflowException, OSError) as error:
        return f"{label}: registry unreachable ({redact(str(error))})"
    mine, theirs = tags.get(f"gate_{metric}"), tags.get(f"gate_production_{metric}")
    production = tags.get("gate_compared_with", "none")
    if mine is None:
        return f"{label} unknown (no gate tags)"
    if production == "none" or theirs is None:
        return f"{label} {float(mine):.4f}, no production version to compare with"
    return f"{label} {float(mine):.4f} vs production v{production} {float(theirs):.4f}"


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    name="promotion_sensor",
    monitored_jobs=[promote_model_job],
    request_job=bento_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="After a promotion or rollback: notify, and build the bento of the production version.",
)
def promotion_sensor(
    context: dg.RunStatusSensorContext,
    postgres: PostgresResource,
    mlflow: MlflowResource,
    settings: dg.ResourceParam[Settings],
) -> dg.RunRequest | dg.SkipReason:
    run = context.dagster_run
    metadata = _run_materialization(context.instance, run.run_id, "production_model")
    if metadata is None:
        return dg.SkipReason(f"run {run.run_id} materialized no production_model")
    version, action = str(metadata["model_version"]), str(metadata.get("action", "promote"))
    how = "restored by a rollback" if action == "rollback" else "promoted"
    notify(
        "promotion",
        f"{mlflow.model_name} v{version} is in production",
        f"{mlflow.model_name} v{version} {how} by {metadata.get('approver')} ({metadata.get('reason')}); "
        "building its bento",
        {
            "model": mlflow.model_name,
            "version": version,
            "action": action,
            "approver": metadata.get("approver", ""),
            "reason": metadata.get("reason", ""),
            "previous_production_version": metadata.get("previous_production_version", "none"),
            "run_id": run.run_id,
        },
        settings,
        database_url=postgres.database_url(),
    )
    return dg.RunRequest(run_key=f"bento-after-{run.run_id}", tags={TRIGGER_TAG: f"promotion v{version}"})


def _launched_by(tags: Mapping[str, str]) -> str:
    for tag, label in (("dagster/schedule_name", "schedule"), ("dagster/sensor_name", "sensor")):
        if tag in tags:
            return f"{label} {tags[tag]}"
    return "manual"


def _timestamp(value: Any) -> str:
    return datetime.fromtimestamp(float(value), UTC).isoformat(timespec="seconds") if value else "never"
