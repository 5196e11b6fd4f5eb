"""``FraudScorer``: the BentoML 1.4 scoring service.

    POST /score          one transaction  → fraud_probability, decision, model_version, features_missing
    POST /score_batch    up to ``RTML_SERVING_MAX_BATCH`` transactions
    GET  /metadata       the served model version, its thresholds and source, the service's settings
    GET  /health         what is degraded: model, online store (breaker, missing views), prediction log
    GET  /metrics        Prometheus (BentoML's built-ins + ``rtml_scoring_*``)
    GET  /readyz         BentoML's readiness probe (for the load balancer): ready once a model is loaded

Under faults (``docs/reliability.md``): the online read has a circuit breaker (``breaker.py``); a view
whose pointer is gone is a degraded answer; request bodies, concurrency and the micro-batch queue are
bounded (413, 429, 503 with ``Retry-After``); a request whose client left is not scored.

The model is the MLflow version holding the ``production`` alias (``RTML_SERVING_MODEL_ALIAS``) of
``RTML_MODEL_NAME``. Inside a bento it starts from the packaged copy (``package.py``); with
``RTML_MLFLOW_TRACKING_URI`` set, a thread polls the registry every ``RTML_SERVING_MODEL_POLL_SECONDS``
and swaps a new production version in (``lifecycle.ModelSlot``: loaded and warmed first, then one
reference assignment: no request is dropped or scored by half a model). A version that is not approved
or does not load safely (``scoring.load_version``) is refused: the service keeps serving the version it
has, logs the reason, counts it (``rtml_scoring_model_refused_total``) and shows it in ``/metadata``
until ``production`` moves again. The served version and its scoring path (compiled or sklearn) are in
the ``X-Model-Version`` response header, ``/metadata`` and the ``rtml_scoring_model_info`` metric.

Shadow scoring (``shadow.py``): the version holding ``staging`` (``RTML_SERVING_SHADOW_ALIAS``) is loaded
beside production and scores every request on a thread of its own after the answer went out; its scores
go to ``monitoring.shadow_predictions``. Its failures are its own (``rtml_scoring_shadow_*``,
``/health``'s ``shadow``). The model input row of every request (or a sample,
``RTML_SERVING_FEATURE_LOG_SAMPLE``) goes to ``monitoring.served_features``; both tables are trimmed
hourly (``rtml.monitoring.retention``).

Heavy imports (mlflow, sklearn, prometheus_client, rtml's online store) happen in ``__init__``:
BentoML sets ``PROMETHEUS_MULTIPROC_DIR`` in the worker after importing this module, and
``prometheus_client`` must not be imported before that (metrics would stay invisible on /metrics).
"""

from __future__ import annotations

import collections
import gc
import logging
import math
import threading
import time
import uuid
import zlib
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import bentoml
from fastapi import FastAPI
from pydantic import Field
from starlette.responses import JSONResponse

from rtml.config import get_settings
from rtml.serving.batching import MicroBatcher, QueueFull
from rtml.serving.bento_manifest import bento_model
from rtml.serving.bentoml_adapter import SERVICE_CONFIG, apply_bentoml_memory_fix
from rtml.serving.breaker import RedisBreaker
from rtml.serving.http_guard import ScoringRequestGuard, client_gone
from rtml.serving.metrics import Metrics, abandoned_requests
from rtml.serving.schemas import BatchScore, Score, Transaction

if TYPE_CHECKING:
    from rtml.serving.scoring import ServedModel
    from rtml.training.loading import ModelRefused

log = logging.getLogger("rtml.serving")

SETTINGS = get_settings()
MODEL_HEADER = "X-Model-Version"


class Unavailable(Exception):
    """Answered as 503 with the message and ``Retry-After`` (BentoML hides the message of its own 5xx
    exceptions)."""

    def response(self, ctx: bentoml.Context) -> JSONResponse:
        ctx.response.status_code = 503  # BentoML applies the context's status over the response's
        ctx.response.headers["Retry-After"] = "1"
        return JSONResponse({"error": str(self)}, status_code=503)


MaxBatch = Annotated[list[Transaction], Field(min_length=1, max_length=SETTINGS.serving.max_batch)]


meta_app = FastAPI(title="rtml scorer metadata", docs_url=None, redoc_url=None, openapi_url=None)


apply_bentoml_memory_fix()  # BentoML 1.4.40 keeps every request's context for traffic.timeout


@bentoml.service(
    name="fraud_scorer",
    workers=SETTINGS.serving.workers,
    traffic={"timeout": 30, "max_concurrency": SETTINGS.serving.max_concurrency},
    http={"port": SETTINGS.serving.port},
    **SERVICE_CONFIG,
)
@bentoml.asgi_app(meta_app, path="/")
class FraudScorer:
    bento_model = bento_model(SETTINGS.training.model_name)

    def __init__(self) -> None:
        from rtml.features.online import OnlineStore
        from rtml.monitoring.retention import Retention
        from rtml.serving.lifecycle import ModelSlot
        from rtml.serving.scoring import load_version
        from rtml.serving.shadow import Shadow
        from rtml.training.dataset import feature_spec

        self.settings = get_settings()
        self.metrics = Metrics()
        self.store = OnlineStore(
            self.settings.services.redis_url or "redis://127.0.0.1:6379/0",
            online=self.settings.online,
            cluster=self.settings.services.redis_cluster,
        )
        spec = feature_spec(self.store.registry)
        self.numeric, self.categorical = list(spec.numeric), list(spec.categorical)
        self.production = ModelSlot(
            self.settings.training.mlflow_tracking_uri,
            self.settings.training.model_name,
            self.settings.serving.model_alias,
            load=load_version,
            features=(self.numeric, self.categorical),
            keep_last=True,  # a refused or vanished version leaves the served one in place
            on_change=self._model_changed,
            on_refused=self._model_refused,
            on_refusal_cleared=lambda: self.metrics.production_refused.set(0),
        )
        self._stop = threading.Event()
        self.last_poll_error: str | None = None
        self.last_shadow_error: str | None = None
        # everything that leaves after the answer (the prediction log, the stream) goes through a process of
        # its own, off this worker's GIL; it never blocks and needs neither PostgreSQL nor Redis to start
        self.sidecar = self._start_sidecar()
        self.writer = self.sidecar if self.sidecar is not None and self.sidecar.logs else None
        if self.writer is None:
            log.warning("RTML_DATABASE_URL unset: scored requests are not logged to monitoring.predictions")
        self.publishing = self.sidecar is not None and self.sidecar.publishes
        self.retention = (
            None
            if not self.settings.services.database_url
            else Retention(
                self.settings.services.database_url,
                {
                    "monitoring.served_features": self.settings.serving.served_features_retention_days,
                    "monitoring.shadow_predictions": self.settings.serving.shadow_predictions_retention_days,
                },
            )
        )
        self.feature_log_cut = int(self.settings.serving.feature_log_sample * 2**32)
        """A transaction's row is logged when crc32(transaction_id) < this: the same answer on a retry."""
        self.shadow = Shadow(
            self.numeric,
            self.categorical,
            tracking_uri=self.settings.training.mlflow_tracking_uri,
            name=self.settings.training.model_name,
            alias=self.settings.serving.shadow_alias,
            queue_max=self.settings.serving.shadow_queue_max,
            put_row=None if self.writer is None else self.writer.put,
            metrics=self.metrics,
        )
        self.batcher: MicroBatcher[Transaction, Score] = MicroBatcher(
            self._score,
            self.settings.serving.max_batch,
            after=self._record,
            max_waiting_rows=self.settings.serving.max_queue_rows,
            on_abandoned=lambda rows: self.metrics.abandoned.inc(),
        )
        self.breaker = RedisBreaker(
            self.store.probe, self.settings.serving.breaker_probe_ms / 1000, self._breaker_changed
        )
        self.breaker.start()
        self._load_initial()
        self._poller: threading.Thread | None = None
        if self.settings.training.mlflow_tracking_uri:  # with a poll interval of 0: the shadow's one look
            self._poller = threading.Thread(target=self._poll, name="model-poller", daemon=True)
            self._poller.start()
        # Start-up leaves ~380k long-lived objects (mlflow, sklearn, pandas, the model). Every full
        # collection walked them all and stalled the event loop (closed-loop p99 262 ms, 35 ms frozen;
        # throughput +25 %): frozen, the collector skips them. Objects of later swapped-in models stay
        # collectable as usual.
        gc.collect()
        gc.freeze()

    def _start_sidecar(self) -> Any:
        """The worker's sidecar (``rtml.serving.sidecar``): the prediction log when ``RTML_DATABASE_URL`` is
        set, the stream publisher when ``RTML_STREAM_PUBLISH`` is true; None when neither is."""
        from rtml.serving.sidecar import Sidecar, StreamTarget

        services, serving, stream = self.settings.services, self.settings.serving, self.settings.stream
        if not services.database_url and not stream.publish:
            return None
        target = None
        if stream.publish:
            timeout = max(1.0, self.settings.online.redis_socket_timeout_ms / 1000)  # off the request path
            target = StreamTarget(
                redis_url=services.redis_url or "redis://127.0.0.1:6379/0",
                cluster=services.redis_cluster,
                key=stream.key,
                retention_s=stream.retention_hours * 3600,
                socket_timeout_s=timeout,
                queue_max=stream.publish_queue_max,
                batch=stream.publish_batch,
            )
        return Sidecar(
            services.database_url or None,
            spill_dir=services.predictions_spill_dir,
            spill_max_bytes=serving.predictions_spill_max_bytes,
            queue_max=serving.predictions_queue_max,
            flush_rows=serving.predictions_flush_rows,
            flush_ms=serving.predictions_flush_ms,
            stream=target,
            on_count=self._count_log_rows,
            on_stream_count=lambda outcome, events: self.metrics.stream_events[outcome].inc(events),
            on_spill_bytes=self.metrics.predictions_spill_bytes.set,
            on_restart=self.metrics.sidecar_restarts.inc,
        )

    def _count_log_rows(self, kind: str, outcome: str, rows: int) -> None:
        if kind == "predictions":
            self.metrics.predictions[outcome].inc(rows)
        else:
            self.metrics.prediction_log_rows.labels(kind, outcome).inc(rows)

    # --- model (lifecycle.ModelSlot: load, poll, swap) ------------------------------------------
    def _load_initial(self) -> None:
        """The bento's packaged model first (no registry needed), then the registry's production."""
        from rtml.serving.scoring import ModelRefused, load_from_bento

        if self.bento_model is not None:
            stored = bentoml.models.get(self.bento_model.tag)
            try:
                self.production.swap(load_from_bento(stored))
            except ModelRefused as exc:
                self.production.refuse(str(stored.info.labels.get("mlflow_version", stored.tag)), {}, exc)
        if self.settings.training.mlflow_tracking_uri:
            try:
                self.production.poll()
            except Exception as exc:  # the registry may be down: the poller tries again
                self.last_poll_error = f"{type(exc).__name__}: {exc}"
                log.warning("model registry unreachable at start-up: %s", exc)

    def _model_changed(self, previous: ServedModel | None, served: ServedModel | None) -> None:
        info = self.metrics.model_info
        if previous is not None:
            info.labels(previous.name, previous.version, previous.source, previous.path).set(0)
        if served is not None:
            info.labels(served.name, served.version, served.source, served.path).set(1)
            log.info("serving %s v%s (%s, %s)", served.name, served.version, served.source, served.path)
        if previous is not None and served is not None:
            self.metrics.model_swaps.inc()

    def _model_refused(self, version: str, refusal: ModelRefused) -> None:
        self.metrics.model_refused.labels(refusal.reason).inc()
        self.metrics.production_refused.set(1)
        current = self.model
        log.error(
            "REFUSED model version %s (%s): %s; still serving %s",
            version,
            refusal.reason,
            refusal,
            "nothing" if current is None else f"v{current.version}",
        )

    def _poll(self) -> None:
        """The registry thread: the shadow's alias, then production's, every poll interval. A shadow
        that loads slowly or not at all delays neither production's start nor its swaps."""
        interval = self.settings.serving.model_poll_seconds
        while True:
            try:
                if self.settings.serving.shadow:
                    production = self.model
                    self.shadow.slot.poll(skip=None if production is None else production.version)
                else:
                    self.shadow.slot.unload()
                self.last_shadow_error = None
            except Exception as exc:  # the shadow's trouble is the shadow's: production goes on
                self.last_shadow_error = f"{type(exc).__name__}: {exc}"
                log.warning("shadow model check failed: %s", exc)
            if interval <= 0 or self._stop.wait(interval):
                return
            try:
                self.production.poll()
                self.last_poll_error = None
            except Exception as exc:  # keep serving the current version; try again next interval
                self.last_poll_error = f"{type(exc).__name__}: {exc}"
                log.warning("model registry poll failed: %s", exc)

    @property
    def model(self) -> ServedModel | None:
        """The production model: read once per batch, so a batch scores with one version."""
        return self.production.model

    def __is_ready__(self) -> bool:
        return self.model is not None

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        self._stop.set()
        self.shadow.close()
        if self.retention is not None:
            self.retention.close()
        self.breaker.stop()
        if self.sidecar is not None:
            self.sidecar.close()
        self.store.close()

    # --- scoring --------------------------------------------------------------------------------
    def _score(self, transactions: list[Transaction]) -> list[Score]:
        """Score a micro-batch (``batching.MicroBatcher``): one Redis round trip, one model call."""
        from rtml.serving.scoring import FeatureStoreUnavailable, lookup, model_rows, predict

        started = time.perf_counter()
        model = self.model  # one model for the whole batch, whatever the poller does meanwhile
        if model is None:
            self.metrics.unavailable.labels("no_model").inc(len(transactions))
            raise Unavailable("no model loaded yet (no version holds the production alias?)")
        pairs = [(t.customer_id, t.merchant_id) for t in transactions]
        at = [(t.timestamp, t.amount) for t in transactions]  # the speed layer's exact features need both
        try:
            found = lookup(
                self.store, pairs, fail_open=self.settings.serving.fail_open, breaker=self.breaker, at=at
            )
        except FeatureStoreUnavailable as exc:
            self.metrics.unavailable.labels(exc.reason).inc(len(transactions))
            raise Unavailable(str(exc)) from exc
        looked_up = time.perf_counter()
        # a pydantic model's __dict__ is its field values: the mapping model_row reads, without a copy
        records = [t.__dict__ for t in transactions]
        rows = model_rows(records, found, self.numeric, self.categorical)  # kept for the logs and shadow
        probabilities = predict(model, rows, self.numeric, self.categorical)
        done = time.perf_counter()
        self.metrics.stage_seconds.labels("feature_lookup").observe(looked_up - started)
        self.metrics.stage_seconds.labels("inference").observe(done - looked_up)
        out = []
        for txn, features, row, probability in zip(transactions, found, rows, probabilities, strict=True):
            p = float(probability) if math.isfinite(probability) else 1.0
            scored = Score(
                transaction_id=txn.transaction_id,
                fraud_probability=p,
                decision=model.decide(p),
                model_version=model.version,
                features_missing=features.missing,
                degraded=features.degraded,
                request_id=uuid.uuid4().hex,
            )
            scored._missing_causes = features.causes  # for the metrics in _record, not the response
            if "redis_unavailable" not in features.causes.values():
                scored._speed_layer = features.speed_layer
            scored._row, scored._feature_versions = row, features.versions
            out.append(scored)
        return out

    def _breaker_changed(self, is_open: bool) -> None:
        self.metrics.breaker_open.set(1 if is_open else 0)
        self.metrics.breaker_transitions.labels("open" if is_open else "closed").inc()

    def _record(self, transactions: list[Transaction], scores: list[Score], seconds: float) -> None:
        """After the batch's answers went out: metrics, the prediction log (``monitoring.predictions``,
        ``monitoring.served_features``), the shadow model's queue and the transaction stream
        (``RTML_STREAM_KEY``)."""
        from rtml.monitoring.predictions import ServedFeaturesRow, prediction_row
        from rtml.serving.shadow import Job
        from rtml.streaming.events import TransactionEvent, to_us

        scored_at = datetime.now(UTC)
        latency_ms = seconds * 1000
        decisions: collections.Counter[tuple[str, str]] = collections.Counter()
        missing: collections.Counter[tuple[str, str]] = collections.Counter()
        degraded: collections.Counter[str] = collections.Counter()
        speed_reads: collections.Counter[str] = collections.Counter()
        for txn, scored in zip(transactions, scores, strict=True):
            self.metrics.score.observe(scored.fraud_probability)
            if scored._speed_layer is not None:
                speed_reads[scored._speed_layer] += 1
            decisions[scored.decision, scored.model_version] += 1
            causes = scored._missing_causes
            missing.update(
                (entity, causes.get(entity, "unknown_entity")) for entity in scored.features_missing
            )
            if scored.degraded:
                degraded[
                    "redis_unavailable" if "redis_unavailable" in causes.values() else "view_missing"
                ] += 1
            if self.writer is not None:  # put is O(1) and counts what it cannot keep (dropped)
                self.writer.put(
                    prediction_row(
                        txn.__dict__,
                        request_id=scored.request_id,
                        model_version=scored.model_version,
                        probability=scored.fraud_probability,
                        decision=scored.decision,
                        features_missing=scored.features_missing,
                        degraded=scored.degraded,
                        scored_at=scored_at,
                        latency_ms=latency_ms,
                    )
                )
                if self._log_features(txn.transaction_id):
                    self.writer.put(
                        ServedFeaturesRow(
                            request_id=scored.request_id,
                            transaction_id=txn.transaction_id,
                            model_version=scored.model_version,
                            event_ts=txn.timestamp,
                            scored_at=scored_at,
                            speed_layer=scored._speed_layer or "redis_unavailable",
                            feature_versions=scored._feature_versions,
                            features=scored._row,  # the row as scored (NaN → null when written)
                        )
                    )
            if self.publishing:  # O(1) too; a full queue drops and counts
                self.sidecar.publish(
                    TransactionEvent(
                        transaction_id=txn.transaction_id,
                        customer_id=txn.customer_id,
                        merchant_id=txn.merchant_id,
                        amount=txn.amount,
                        event_ts_us=to_us(txn.timestamp),
                        merchant_category=txn.merchant_category or "",
                        currency=txn.currency,
                        channel=txn.channel,
                        country=txn.country or "",
                    )
                )
        if self.shadow.model is not None:  # one O(1) append; scored on the shadow's thread
            self.shadow.submit(
                Job(
                    scores[0].model_version,
                    [scored._row for scored in scores],
                    [scored.request_id for scored in scores],
                    [scored.transaction_id for scored in scores],
                )
            )
        # counters once per batch: a multiprocess-mode increment writes to a shared file
        for (decision, version), n in decisions.items():
            self.metrics.decisions.labels(decision, version).inc(n)
        for (entity, cause), n in missing.items():
            self.metrics.features_missing.labels(entity, cause).inc(n)
        for reason, n in degraded.items():
            self.metrics.degraded.labels(reason).inc(n)
        for result, n in speed_reads.items():
            self.metrics.speed_layer_reads.labels(result).inc(n)

    def _log_features(self, transaction_id: str) -> bool:
        """Whether this transaction's model row is logged (``RTML_SERVING_FEATURE_LOG_SAMPLE``), by a
        hash of its id: a retry is logged, or not, as the first attempt was."""
        cut = self.feature_log_cut
        if cut >= 2**32:
            return True
        return cut > 0 and zlib.crc32(transaction_id.encode()) < cut

    async def _submit(self, transactions: list[Transaction]) -> list[Score]:
        try:
            return await self.batcher.submit(transactions, client_gone())
        except QueueFull as exc:
            self.metrics.unavailable.labels("queue_full").inc(len(transactions))
            raise Unavailable(f"the scorer is overloaded: {exc} (RTML_SERVING_MAX_QUEUE_ROWS)") from exc

    @bentoml.api(route="/score")
    async def score(self, transaction: Transaction, ctx: bentoml.Context) -> Score:
        """Score one transaction. 503 with Retry-After when no model is loaded, Redis is unavailable
        and the service fails closed, or too many transactions wait to be scored; 400 naming the field
        for invalid input; 413 past the body-size limit."""
        try:
            (scored,) = await self._submit([transaction])
        except Unavailable as exc:
            return exc.response(ctx)  # type: ignore[return-value]
        ctx.response.headers[MODEL_HEADER] = scored.model_version
        return scored

    @bentoml.api(route="/score_batch")
    async def score_batch(self, transactions: MaxBatch, ctx: bentoml.Context) -> BatchScore:
        """Score up to ``RTML_SERVING_MAX_BATCH`` transactions (one Redis round trip, one model call)."""
        try:
            scores = await self._submit(transactions)
        except Unavailable as exc:
            return exc.response(ctx)  # type: ignore[return-value]
        ctx.response.headers[MODEL_HEADER] = scores[0].model_version
        return BatchScore(scores=scores, model_version=scores[0].model_version)

    # --- health (GET /health) ----------------------------------------------------------------
    @meta_app.get("/health")
    def health(self) -> dict[str, Any]:
        """What is degraded, for operators and monitors. Always 200: ``status`` says ``ok``, ``degraded``
        (scoring, with less information: Redis unavailable or a view missing, fail-open) or
        ``unavailable`` (no model; or the store cannot answer and the service fails closed), and
        ``problems`` says why. Not the load balancer's probe: ``/readyz`` is (ready once a model is
        loaded), because every replica reads the same Redis — taking them all out when it is down or
        empty would turn degraded answers into no answers — and failing open or closed is the
        operator's choice (``RTML_SERVING_FAIL_OPEN``)."""
        model = self.model
        store = self.breaker.state()
        problems = []
        if model is None:
            problems.append("no model loaded (does a version hold the production alias?)")
        if store["breaker"] == "open":
            problems.append(f"online store (Redis) not answering: {store['last_error']}")
        elif store["missing_views"]:
            problems.append(
                f"online store views missing: {', '.join(store['missing_views'])} (Redis restarted or "
                "flushed, or the push expired): every entity reads as unknown until the next push"
            )
        refused = self.production.refused
        if refused is not None:
            problems.append(
                f"production version {refused['version']} refused ({refused['reason']}): "
                "still serving the version before"
            )
        shadow = self.shadow.status()
        if shadow["refused"] is not None:  # production is not affected: the status stays as it is
            problems.append(
                f"shadow version {shadow['refused']['version']} refused ({shadow['refused']['reason']}): "
                "not shadow-scored; production is not affected"
            )
        log_state = None if self.writer is None else self.writer.status()
        if log_state is not None and log_state["database"] != "ok":
            problems.append(
                f"prediction log: PostgreSQL {log_state['database']} ({log_state['last_error']}): "
                f"rows spill to {log_state['spill_dir']}"
            )
        store_bad = store["breaker"] == "open" or bool(store["missing_views"])
        if model is None or (store_bad and not self.settings.serving.fail_open):
            status = "unavailable"
        else:
            status = "degraded" if store_bad else "ok"
        return {
            "status": status,
            "problems": problems,
            "model": None
            if model is None
            else {"name": model.name, "version": model.version, "source": model.source},
            "online_store": {"fail_open": self.settings.serving.fail_open, **store},
            "queue": {
                "waiting_rows": self.batcher.waiting_rows,
                "limit": self.settings.serving.max_queue_rows,
            },
            "prediction_log": log_state,
            "stream_publisher": self.sidecar.stream_status() if self.publishing else None,
            "shadow": {"enabled": self.settings.serving.shadow, **shadow},
        }

    # --- metadata (GET /metadata) ------------------------------------------------------------
    @meta_app.get("/metadata")
    def metadata(self) -> dict[str, Any]:
        """The served model version and how the service is configured."""
        model = self.model
        return {
            "service": "FraudScorer",
            "model": None
            if model is None
            else {
                "name": model.name,
                "version": model.version,
                "source": model.source,
                "path": model.path,
                "threshold_review": model.threshold_review,
                "threshold_decline": model.threshold_decline,
                "alias": self.settings.serving.model_alias,
                "run_id": model.tags.get("mlflow_run_id") or model.tags.get("run_id"),
            },
            "registry": {
                "tracking_uri": self.settings.training.mlflow_tracking_uri,
                "poll_seconds": self.settings.serving.model_poll_seconds,
                "last_poll_error": self.last_poll_error,
                "refused": self.production.refused,
            },
            "fail_open": self.settings.serving.fail_open,
            "max_batch": self.settings.serving.max_batch,
            "features": {"numeric": self.numeric, "categorical": self.categorical},
            "predictions_log": None if self.writer is None else self.writer.status(),
            "shadow": {
                "enabled": self.settings.serving.shadow,
                "alias": self.settings.serving.shadow_alias,
                "last_error": self.last_shadow_error,
                **self.shadow.status(),
            },
            "feature_log": {
                "sample": self.settings.serving.feature_log_sample,
                "retention_days": self.settings.serving.served_features_retention_days,
            },
        }


FraudScorer.add_asgi_middleware(  # type: ignore[attr-defined]
    ScoringRequestGuard,
    max_body_bytes=SETTINGS.serving.max_body_bytes,
    on_abandoned=lambda: abandoned_requests().inc(),
)
