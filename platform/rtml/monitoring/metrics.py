"""Pipeline metrics: the figures Dagster assets publish, always as asset metadata and, when
``RTML_PUSHGATEWAY_URL`` is set, to a Prometheus Pushgateway (``prometheus_client.push_to_gateway``).

One Pushgateway group per asset (``job="rtml"``, ``asset=<asset name>``): a push replaces the asset's
previous figures, and the gateway adds ``push_time_seconds`` per group (the age of an asset's figures).
A push that fails is logged and returns False: monitoring never fails a pipeline run.

The metric names below are the contract of ``monitoring/prometheus/rules`` and the Grafana dashboards
(``monitoring/grafana``). The scoring service's own metrics (``rtml_scoring_*``, BentoML's
``bentoml_service_*``) are defined in ``serving/service.py``.

=============================================  =================================================
metric (all gauges)                             labels, meaning
=============================================  =================================================
rtml_pipeline_rows                              asset, kind (loaded | quarantined), partition:
                                                rows of the asset's last materialization
rtml_pipeline_quarantine_share                  asset: quarantined / (loaded + quarantined)
rtml_pipeline_run_duration_seconds              asset: duration of the last materialization
rtml_pipeline_last_success_timestamp_seconds    asset: when it last materialized successfully
rtml_pipeline_run_failure_timestamp_seconds     dagster_job: when a run of the job last failed
rtml_pipeline_run_success_timestamp_seconds     dagster_job: when a run of the job last succeeded
                                                (not ``job``: the Pushgateway overwrites a pushed
                                                ``job`` label with the group's, ``rtml``)
rtml_landing_files_waiting                      files in the landing folder not yet ingested
                                                (pushed by the landing sensor every tick)
rtml_landing_oldest_waiting_timestamp_seconds   when the sensor first saw the oldest file still
                                                waiting (its tick time when none waits), so
                                                ``time() -`` it is how long a file has waited
rtml_feature_newest_event_timestamp_seconds     view, store (offline | online): the newest event
                                                time the view's features include (pushed)
                                                (the lag is ``time() -`` it in PromQL, so it keeps
                                                growing when pushes stop; a pushed lag would freeze)
rtml_training_metric                            model_name, model_version, metric (e.g.
                                                test_roc_auc, test_pr_auc): the version's figures
rtml_drift_share                                report (features | predictions): drifted share
rtml_drift_detected                             report: 1 when the share is above the threshold
rtml_drift_feature_score                        report, feature: Evidently's drift score (p-value
                                                or distance, per the column's test)
rtml_live_model_metric                          model_version, metric (roc_auc | precision |
                                                recall | pr_auc), window (1d): the served
                                                model on labelled predictions
rtml_live_labelled_predictions                  model_version, window: predictions with a label
=============================================  =================================================
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

JOB = "rtml"

DESCRIPTIONS: dict[str, str] = {
    "rtml_pipeline_rows": "Rows of the asset's last materialization, by kind (loaded, quarantined).",
    "rtml_pipeline_quarantine_share": "Quarantined share of the asset's last materialization.",
    "rtml_pipeline_run_duration_seconds": "Duration of the asset's last materialization.",
    "rtml_pipeline_last_success_timestamp_seconds": "When the asset last materialized successfully.",
    "rtml_pipeline_run_failure_timestamp_seconds": "When a run of the job last failed.",
    "rtml_pipeline_run_success_timestamp_seconds": "When a run of the job last succeeded.",
    "rtml_landing_files_waiting": "Files in the landing folder not yet ingested.",
    "rtml_landing_oldest_waiting_timestamp_seconds": "When the oldest file still waiting in the landing "
    "folder was first seen (the tick's time when none waits).",
    "rtml_feature_newest_event_timestamp_seconds": "The newest event time included in the feature view.",
    "rtml_training_metric": "Evaluation figures of a registered model version.",
    "rtml_drift_share": "Share of drifted columns in the latest drift report.",
    "rtml_drift_detected": "1 when the latest drift report's drifted share is above the threshold.",
    "rtml_drift_feature_score": "Evidently drift score of a column in the latest drift report.",
    "rtml_live_model_metric": "The served model's performance on labelled predictions.",
    "rtml_live_labelled_predictions": "Predictions with a label in the live-performance window.",
}


@dataclass(frozen=True)
class Sample:
    name: str
    value: float
    labels: Mapping[str, str] = field(default_factory=dict)


def publish(
    group: str, samples: Iterable[Sample], pushgateway_url: str | None, *, timeout: float = 5.0
) -> bool:
    """Push ``samples`` as the Pushgateway group ``asset=<group>`` (replacing the group's previous
    figures). False when no gateway is configured or the push failed (logged)."""
    samples = list(samples)
    if not pushgateway_url or not samples:
        return False
    from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

    registry = CollectorRegistry()
    gauges: dict[str, Gauge] = {}
    for sample in samples:
        if sample.name not in DESCRIPTIONS:
            raise ValueError(f"unknown pipeline metric {sample.name!r}: add it to rtml.monitoring.metrics")
        labels = dict(sample.labels)
        gauge = gauges.get(sample.name)
        if gauge is None:
            gauge = gauges[sample.name] = Gauge(
                sample.name, DESCRIPTIONS[sample.name], sorted(labels), registry=registry
            )
        (gauge.labels(**labels) if labels else gauge).set(sample.value)
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
