"""The scorer's own Prometheus metrics (``rtml_scoring_*``, ``rtml_predictions_*``, ``rtml_stream_events_*``,
``rtml_speed_layer_reads_total``, ``rtml_prediction_log_rows_total``); BentoML adds its ``bentoml_service_*``.

Created in the worker, after BentoML configured ``prometheus_client``'s multiprocess mode: BentoML sets
``PROMETHEUS_MULTIPROC_DIR`` in the worker after importing the service module, so ``prometheus_client``
is imported here only inside the functions (metrics created before that would stay invisible on
``/metrics``). ``tests/test_metric_contract.py`` reads the metric names from this source.
"""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def abandoned_requests() -> Any:
    """``rtml_scoring_abandoned_total``, shared by ``Metrics`` and the HTTP middleware (created on first
    use, in the worker)."""
    from prometheus_client import Counter

    return Counter(
        "rtml_scoring_abandoned_total",
        "Scoring requests not scored because they were abandoned: the client disconnected before its "
        "body was read or while the request waited for a batch, or the request timed out.",
    )


class Metrics:
    """``rtml_scoring_*`` metrics (created in the worker, after BentoML configured multiprocess mode)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        latency = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
        self.stage_seconds = Histogram(
            "rtml_scoring_stage_seconds",
            "Scoring latency per stage: feature_lookup (Redis) and inference (request features + model).",
            ["stage"],
            buckets=latency,
        )
        self.features_missing = Counter(
            "rtml_scoring_features_missing_total",
            "Scored transactions whose entity had no online features (defaults used), by entity and "
            "cause: unknown_entity (not in the store), view_missing (the view's pointer is gone: Redis "
            "restarted or flushed), redis_unavailable (Redis down or the circuit breaker open).",
            ["entity", "cause"],
        )
        self.score = Histogram(
            "rtml_scoring_score",
            "Fraud probabilities returned.",
            buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99),
        )
        self.decisions = Counter(
            "rtml_scoring_decisions_total",
            "Decisions returned, by decision and model version.",
            ["decision", "model_version"],
        )
        self.degraded = Counter(
            "rtml_scoring_degraded_total",
            "Transactions scored with default features because of the online store (fail-open), by "
            "reason: redis_unavailable (Redis down or the circuit breaker open) or view_missing.",
            ["reason"],
        )
        self.unavailable = Counter(
            "rtml_scoring_unavailable_total",
            "Transactions refused with 503, by reason: redis (Redis unavailable, fail-closed), "
            "view_missing (a view's pointer gone, fail-closed), no_model, queue_full (too many rows "
            "waiting to be scored).",
            ["reason"],
        )
        self.breaker_open = Gauge(
            "rtml_scoring_redis_breaker_open",
            "1 while the circuit breaker of the online read is open (Redis did not answer: reads are "
            "answered without Redis until a probe succeeds), else 0; per worker.",
            multiprocess_mode="liveall",
        )
        self.breaker_transitions = Counter(
            "rtml_scoring_redis_breaker_transitions_total",
            "Transitions of the online read's circuit breaker, by the state entered (open, closed).",
            ["state"],
        )
        self.abandoned = abandoned_requests()
        self.speed_layer_reads = Counter(
            "rtml_speed_layer_reads_total",
            "Customer-feature reads of scored transactions (Redis answered), by the speed layer's result: "
            "merged (exact at the transaction's time: batch snapshot + stream events), beyond_horizon "
            "(the snapshot is older than its horizon: no hourly push lately; batch values), not_exact "
            "(no snapshot pushed yet, or the state moved past it; batch values), disabled "
            "(RTML_SPEED_LAYER_ENABLED=false; batch values).",
            ["result"],
        )
        for result in ("merged", "beyond_horizon", "not_exact", "disabled"):
            self.speed_layer_reads.labels(result)
        # every label value now: a series that first appears at 1 hides that increment from increase()
        for entity in ("customer", "merchant"):
            for cause in ("unknown_entity", "view_missing", "redis_unavailable"):
                self.features_missing.labels(entity, cause)
        for reason in ("redis_unavailable", "view_missing"):
            self.degraded.labels(reason)
        for reason in ("redis", "view_missing", "no_model", "queue_full"):
            self.unavailable.labels(reason)
        for state in ("open", "closed"):
            self.breaker_transitions.labels(state)
        self.breaker_open.set(0)
        self.model_info = Gauge(
            "rtml_scoring_model_info",
            "The model version served (1) by each worker; 0 for versions swapped out. path: compiled "
            "(treelite) or sklearn (the Pipeline, when the model could not be compiled exactly).",
            ["model_name", "model_version", "source", "path"],
            multiprocess_mode="liveall",
        )
        self.model_swaps = Counter(
            "rtml_scoring_model_swaps_total", "Model versions swapped in after a registry change."
        )
        self.model_refused = Counter(
            "rtml_scoring_model_refused_total",
            "Model versions refused (not served) once each, by reason: format, untrusted_types, invalid, "
            "not_gated, gate_rejected, not_approved (rtml.training.loading).",
            ["reason"],
        )
        # one literal declaration each: tests/test_metric_contract.py reads the names from this source
        self.predictions = {
            "written": Counter(
                "rtml_predictions_written_total",
                "Prediction-log rows written to monitoring.predictions from memory.",
            ),
            "spilled": Counter(
                "rtml_predictions_spilled_total",
                "Prediction-log rows spilled to local disk (PostgreSQL unavailable, stalled or behind).",
            ),
            "drained": Counter(
                "rtml_predictions_drained_total",
                "Spilled prediction-log rows written to monitoring.predictions once it was back.",
            ),
            "dropped": Counter(
                "rtml_predictions_dropped_total",
                "Prediction-log rows lost: memory queue full, spill folder at its size limit "
                "(RTML_PREDICTIONS_SPILL_MAX_BYTES), or an unreadable spilled line.",
            ),
            "rejected": Counter(
                "rtml_predictions_rejected_total",
                "Prediction-log rows the table refused (a data error), logged and skipped.",
            ),
        }
        self.predictions_spill_bytes = Gauge(
            "rtml_predictions_spill_bytes",
            "Bytes of prediction-log rows waiting on local disk for PostgreSQL (all workers' spill).",
            multiprocess_mode="livemax",
        )
        self.sidecar_restarts = Counter(
            "rtml_scorer_sidecar_restarts_total",
            "Sidecar processes (the prediction log and the stream publisher) started after one had exited "
            "(killed, or crashed); the rows and events it held in memory count as "
            "rtml_predictions_dropped_total and rtml_stream_events_dropped_total.",
        )
        self.stream_events = {
            "published": Counter(
                "rtml_stream_events_published_total",
                "Events of scored transactions appended to the transaction stream (RTML_STREAM_KEY) by "
                "the scorer's publisher, after the answers went out.",
            ),
            "dropped": Counter(
                "rtml_stream_events_dropped_total",
                "Events of scored transactions not published: the publisher's queue full "
                "(RTML_STREAM_PUBLISH_QUEUE_MAX; Redis slow or away), still queued at shutdown, "
                "refused by Redis, or held by a sidecar process that died.",
            ),
        }
        # shadow scoring (shadow.py): never part of production's answers
        self.shadow = {
            "scored": Counter(
                "rtml_scoring_shadow_scored_total",
                "Transactions scored by the shadow model (the version holding RTML_SERVING_SHADOW_ALIAS) "
                "after production answered them.",
            ),
            "errors": Counter(
                "rtml_scoring_shadow_errors_total",
                "Transactions the shadow model failed to score (it raised); production is not affected.",
            ),
            "dropped": Counter(
                "rtml_scoring_shadow_dropped_total",
                "Transactions not shadow-scored because the shadow's queue was full "
                "(RTML_SERVING_SHADOW_QUEUE_MAX: the shadow is slower than the traffic).",
            ),
        }
        self.shadow_model_info = Gauge(
            "rtml_scoring_shadow_model_info",
            "The shadow model version loaded (1) by each worker; 0 for versions unloaded.",
            ["model_name", "model_version", "path"],
            multiprocess_mode="liveall",
        )
        self.shadow_refused = Counter(
            "rtml_scoring_shadow_refused_total",
            "Shadow model versions refused (not loaded) once each, by reason: format, untrusted_types, "
            "invalid, not_gated, gate_rejected (rtml.training.loading).",
            ["reason"],
        )
        self.prediction_log_rows = Counter(
            "rtml_prediction_log_rows_total",
            "Rows of monitoring.shadow_predictions and monitoring.served_features through the prediction "
            "log, by table and outcome: written, spilled, drained, dropped, rejected (as the "
            "rtml_predictions_* counters for monitoring.predictions).",
            ["table", "outcome"],
        )
        for table in ("shadow_predictions", "served_features"):
            for log_outcome in ("written", "spilled", "drained", "dropped", "rejected"):
                self.prediction_log_rows.labels(table, log_outcome)
        self.production_refused = Gauge(
            "rtml_scoring_production_refused",
            "1 while the version holding the production alias is refused (the worker serves an older "
            "one, or none), else 0.",
            multiprocess_mode="livemax",
        )
