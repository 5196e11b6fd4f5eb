"""Pipeline metrics: the figures Dagster assets and sensors publish, always as asset metadata and, when
``RTML_PUSHGATEWAY_URL`` is set, to a Prometheus Pushgateway (``prometheus_client.push_to_gateway``).

One Pushgateway group per asset (``job="rtml"``, ``asset=<asset name>``): a push replaces the asset's
previous figures, and the gateway adds ``push_time_seconds`` per group (the age of an asset's figures).
A push that fails is logged and returns False: monitoring never fails a pipeline run.

``METRICS`` is the contract of ``monitoring/prometheus/rules`` and the Grafana dashboards
(``monitoring/grafana``): every pushed metric's name and exact label names. A ``Sample`` outside it is
refused when it is made, with or without a gateway, so a renamed metric or label fails the asset's
tests instead of silently emptying an alert or a panel (``tests/test_metric_contract.py`` checks the
rules and dashboards against it). The scoring service's own metrics (``rtml_scoring_*``) are defined
where they are made, in ``rtml/serving/metrics.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

JOB = "rtml"
GROUP_LABELS = ("job", "asset")
"""Labels every pushed series gets from its Pushgateway group (``job`` is always ``rtml``)."""


@dataclass(frozen=True)
class Metric:
    description: str
    labels: tuple[str, ...] = ()
    """Label names each sample carries (besides ``GROUP_LABELS``)."""


METRICS: dict[str, Metric] = {
    "rtml_pipeline_rows": Metric(
        "Rows of the asset's last materialization, by kind (loaded, quarantined).",
        ("asset", "kind", "partition"),
    ),
    "rtml_pipeline_quarantine_share": Metric(
        "Quarantined share of the asset's last materialization: quarantined / (loaded + quarantined).",
        ("asset",),
    ),
    "rtml_pipeline_run_duration_seconds": Metric("Duration of the asset's last materialization.", ("asset",)),
    "rtml_pipeline_last_success_timestamp_seconds": Metric(
        "When the asset last materialized successfully.", ("asset",)
    ),
    # `dagster_job`, not `job`: the Pushgateway overwrites a pushed `job` label with the group's (`rtml`)
    "rtml_pipeline_run_failure_timestamp_seconds": Metric(
        "When a run of the job last failed.", ("dagster_job",)
    ),
    "rtml_pipeline_run_success_timestamp_seconds": Metric(
        "When a run of the job last succeeded.", ("dagster_job",)
    ),
    "rtml_landing_files_waiting": Metric(
        "Files in the landing folder not yet ingested (pushed by the landing sensor every tick)."
    ),
    "rtml_landing_oldest_waiting_timestamp_seconds": Metric(
        "When the sensor first saw the oldest file still waiting in the landing folder (the tick's time "
        "when none waits), so `time() -` it is how long a file has waited."
    ),
    # the newest event time, not a lag: Prometheus computes `time() -` it, so the lag keeps growing when
    # pushes stop (a pushed lag would freeze)
    "rtml_feature_newest_event_timestamp_seconds": Metric(
        "The newest event time included in the feature view, offline (PostgreSQL) or online (Redis).",
        ("view", "store"),
    ),
    "rtml_online_view_present": Metric(
        "1 while the feature view's pointer exists in Redis (the online store serves it), 0 when it is "
        "gone (Redis restarted or flushed, TTL lapsed) or Redis is unreachable. Pushed by the self-heal "
        "sensor on every tick.",
        ("view",),
    ),
    "rtml_training_metric": Metric(
        "Evaluation figures of a registered model version (e.g. test_roc_auc, test_pr_auc).",
        ("model_name", "model_version", "metric"),
    ),
    "rtml_drift_share": Metric(
        "Share of drifted columns in the latest drift report (report: features, features_tail = the "
        "hourly check's newest minutes, predictions).",
        ("report",),
    ),
    "rtml_drift_detected": Metric(
        "1 when the latest drift report detects drift: its drifted share above the threshold (for the "
        "hourly check's features: any numeric column's KS p-value below drift_recent_pvalue).",
        ("report",),
    ),
    "rtml_drift_feature_score": Metric(
        "Evidently drift score (p-value or distance, per the column's test) of a column in the latest "
        "drift report.",
        ("report", "feature"),
    ),
    "rtml_live_model_metric": Metric(
        "The served model's performance on labelled predictions (roc_auc, precision, recall, pr_auc).",
        ("model_version", "metric", "window"),
    ),
    "rtml_training_serving_skew_mismatch_share": Metric(
        "Training-serving skew check: share of the compared logged requests whose served value of the "
        "feature differed from the offline store's for the same transaction (0 when it matches).",
        ("feature",),
    ),
    "rtml_training_serving_skew_requests": Metric(
        "Training-serving skew check: logged requests of its sample by outcome (compared; degraded: scored "
        "without Redis, skipped; unverifiable: served from a build it has no record of).",
        ("outcome",),
    ),
    "rtml_live_labelled_predictions": Metric(
        "Predictions with a label in the live-performance window.", ("model_version", "window")
    ),
    "rtml_challenger_metric": Metric(
        "The live challenger comparison: a figure (pr_auc, roc_auc, precision, recall, "
        "recall_at_decline_rate, precision_at_decline_rate) of the staged version (role=challenger) or of "
        "production (role=production) on the same labelled requests.",
        ("role", "model_version", "metric"),
    ),
    "rtml_challenger_labelled_requests": Metric(
        "Labelled requests both the staged version (model_version) and production scored, in the "
        "comparison window.",
        ("model_version",),
    ),
    "rtml_challenger_decision_agreement": Metric(
        "Share of the compared requests on which the staged version (model_version) decided as production.",
        ("model_version",),
    ),
    "rtml_challenger_worse": Metric(
        "1 when the staged version (model_version) is worse live than production on PR AUC, 0 when better; "
        "absent while there are too few labelled requests (challenger_min_labelled).",
        ("model_version",),
    ),
}


class MetricContractError(ValueError):
    """A sample whose name or labels are not in ``METRICS``."""


@dataclass(frozen=True)
class Sample:
    """One gauge value; checked against ``METRICS`` when made."""

    name: str
    value: float
    labels: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        metric = METRICS.get(self.name)
        if metric is None:
            raise MetricContractError(
                f"unknown pipeline metric {self.name!r}: add it to rtml.monitoring.metrics.METRICS "
                "(and use it in monitoring/prometheus/rules or the dashboards)"
            )
        if sorted(self.labels) != sorted(metric.labels):
            raise MetricContractError(
                f"{self.name}: labels {sorted(self.labels)} differ from the contract {sorted(metric.labels)} "
                "in rtml.monitoring.metrics.METRICS (rules and dashboards select by those)"
            )
        if bad := [key for key, value in self.labels.items() if not isinstance(value, str)]:
            raise MetricContractError(f"{self.name}: label values must be strings: {bad}")


def publish(
    group: str, samples: Iterable[Sample], pushgateway_url: str | None, *, timeout: float = 5.0
) -> bool:
    """Push ``samples`` as the Pushgateway group ``asset=<group>`` (replacing the group's previous
    figures). False when no gateway is configured or the push failed (logged)."""
    samples = list(samples)
    if not samples:
        return False
    from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

    # the registry is built with or without a gateway: a sample prometheus_client would refuse (a name
    # twice with other labels, a value that is no number) fails here too, not only where one is set
    registry = CollectorRegistry()
    gauges: dict[str, Gauge] = {}
    for sample in samples:
        metric = METRICS[sample.name]
        gauge = gauges.get(sample.name)
        if gauge is None:
            gauge = gauges[sample.name] = Gauge(
                sample.name, metric.description, metric.labels, registry=registry
            )
        (gauge.labels(**sample.labels) if metric.labels else gauge).set(sample.value)
    if not pushgateway_url:
        return False
    try:
        push_to_gateway(
            pushgateway_url, job=JOB, registry=registry, grouping_key={"asset": group}, timeout=timeout
        )
    except OSError as exc:  # URLError, connection refused, timeout: monitoring must not fail the run
        log.warning("pushgateway %s: push of %s failed: %s", pushgateway_url, group, exc)
        return False
    return True


def run_samples(
    asset: str,
    seconds: float,
    *,
    loaded: int | None = None,
    quarantined: int | None = None,
    partition: str = "",
) -> list[Sample]:
    """An asset materialization's figures: duration, success time and, for loaders, rows by kind and
    the quarantined share."""
    import time

    samples = [
        Sample("rtml_pipeline_run_duration_seconds", seconds, {"asset": asset}),
        Sample("rtml_pipeline_last_success_timestamp_seconds", time.time(), {"asset": asset}),
    ]
    if loaded is not None and quarantined is not None:
        for kind, rows in (("loaded", loaded), ("quarantined", quarantined)):
            samples.append(
                Sample("rtml_pipeline_rows", rows, {"asset": asset, "kind": kind, "partition": partition})
            )
        total = loaded + quarantined
        samples.append(
            Sample("rtml_pipeline_quarantine_share", quarantined / total if total else 0.0, {"asset": asset})
        )
    return samples
