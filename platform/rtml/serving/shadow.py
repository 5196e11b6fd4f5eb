"""Shadow scoring: the version holding the ``staging`` alias (``RTML_SERVING_SHADOW_ALIAS``) scores every
request production answered, after the answer went out, so the challenger is measured on live traffic
before anyone promotes it. Its scores go to ``monitoring.shadow_predictions`` (keyed by production's
``request_id`` and its own version; decisions by its own thresholds).

Production never waits for it and never sees its failures:

* the event loop only appends the batch's model rows — the very rows production scored, built once —
  to a bounded queue (``RTML_SERVING_SHADOW_QUEUE_MAX`` transactions; beyond it they are dropped and
  counted), and a thread of its own scores them (treelite's C call releases the GIL);
* a version that is not gated, has no thresholds, does not load safely (skops, trusted types) or
  cannot score a warm-up row is refused — counted, logged once, shown in ``/health`` and
  ``/metadata`` — and retried only when the alias moves or the version's tags change;
* a version whose scoring raises is counted (``rtml_scoring_shadow_errors_total``), logged once per
  version, and its rows are skipped;
* no shadow when the staged version is the production one, when the alias is gone (promoted or
  removed: the loaded shadow is unloaded), or with ``RTML_SERVING_SHADOW=false``.

No BentoML here; ``service.py`` polls its ``slot`` on the registry thread and wires it to the metrics and
the prediction log.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rtml.doorbell import Doorbell
from rtml.monitoring.predictions import ShadowRow
from rtml.serving.lifecycle import ModelSlot
from rtml.serving.scoring import ServedModel, load_shadow, predict
from rtml.training.loading import ModelRefused

log = logging.getLogger("rtml.serving")


@dataclass(frozen=True)
class Job:
    production_version: str
    rows: Sequence[Mapping[str, Any]]
    request_ids: Sequence[str]
    transaction_ids: Sequence[str]


class Shadow:
    """The shadow model of one worker and its scoring thread. Its model follows ``alias`` in the registry
    at ``tracking_uri`` (``lifecycle.ModelSlot``, loaded through the gate: ``scoring.load_shadow``).
    ``put_row``: where its ``ShadowRow``s go (the prediction-log writer's ``put``); ``metrics``: the
    service's ``Metrics`` (``shadow``, ``shadow_model_info``, ``shadow_refused``)."""

    def __init__(
        self,
        numeric: Sequence[str],
        categorical: Sequence[str],
        *,
        tracking_uri: str | None,
        name: str,
        alias: str,
        queue_max: int,
        put_row: Callable[[ShadowRow], Any] | None,
        metrics: Any,
    ) -> None:
        self.numeric, self.categorical = list(numeric), list(categorical)
        self.queue_max = max(1, queue_max)
        self.put_row = put_row
        self.metrics = metrics
        self.slot = ModelSlot(
            tracking_uri,
            name,
            alias,
            load=load_shadow,
            features=(self.numeric, self.categorical),
            keep_last=False,
            on_change=self._changed,
            on_refused=self._refused,
        )
        self._failing: str | None = None  # the version whose scoring error was logged already
        self.counts = {"scored": 0, "errors": 0, "dropped": 0}
        self._queue: collections.deque[Job] = collections.deque()
        self._queued = 0  # transactions in the queue (jobs are batches)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._doorbell = Doorbell()  # no wake-up per request while traffic flows (rtml.doorbell)
        self._thread = threading.Thread(target=self._run, name="shadow-scorer", daemon=True)
        self._thread.start()

    @property
    def model(self) -> ServedModel | None:
        return self.slot.model

    # --- the event loop's side ------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        """O(1), never waits; nothing without a shadow model; a full queue drops the job (counted)."""
        model = self.model
        if model is None or model.version == job.production_version:
            return
        n = len(job.rows)
        if self._queued + n > self.queue_max:
            self._count("dropped", n)
            return
        with self._lock:
            self._queued += n
        self._queue.append(job)
        self._doorbell.ring()

    def status(self) -> dict[str, Any]:
        """For ``/health`` and ``/metadata``."""
        model = self.model
        return {
            "model": None
            if model is None
            else {"name": model.name, "version": model.version, "path": model.path},
            "refused": self.slot.refused,
            "waiting": self._queued,
            **self.counts,
        }

    # --- the registry poller's side (ModelSlot's hooks) -----------------------------------------
    def _changed(self, previous: ServedModel | None, served: ServedModel | None) -> None:
        if previous is not None:
            self.metrics.shadow_model_info.labels(previous.name, previous.version, previous.path).set(0)
            log.info("shadow: %s v%s unloaded", previous.name, previous.version)
        if served is not None:
            self.metrics.shadow_model_info.labels(served.name, served.version, served.path).set(1)
            log.info(
                "shadow: scoring with %s v%s (%s) beside production", served.name, served.version, served.path
            )

    def _refused(self, version: str, refusal: ModelRefused) -> None:
        self.metrics.shadow_refused.labels(refusal.reason).inc()
        log.error(
            "REFUSED shadow version %s (%s): %s; production is not affected", version, refusal.reason, refusal
        )

    # --- the scoring thread -----------------------------------------------------------------------
    def close(self) -> None:
        self._stop.set()
        self._doorbell.wake()
        self._thread.join(5)

    def _count(self, outcome: str, n: int) -> None:
        with self._lock:
            self.counts[outcome] += n
        self.metrics.shadow[outcome].inc(n)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                job = self._queue.popleft()
            except IndexError:
                self._doorbell.wait(lambda: bool(self._queue) or self._stop.is_set())
                continue
            with self._lock:
                self._queued -= len(job.rows)
            self._score(job)

    def _score(self, job: Job) -> None:
        model = self.model
        if model is None or model.version == job.production_version:
            return  # unloaded or promoted meanwhile
        try:
            probabilities = predict(model, job.rows, self.numeric, self.categorical)
        except Exception as exc:  # any failure of the shadow is the shadow's alone
            self._count("errors", len(job.rows))
            if self._failing != model.version:
                self._failing = model.version
                log.exception(
                    "shadow: %s v%s failed to score (counted from now on): %s", model.name, model.version, exc
                )
            return
        scored_at = datetime.now(UTC)
        if self.put_row is not None:
            for request_id, transaction_id, p in zip(
                job.request_ids, job.transaction_ids, probabilities, strict=True
            ):
                probability = float(p) if math.isfinite(p) else 1.0  # as production: the safe side
                self.put_row(
                    ShadowRow(
                        request_id=request_id,
                        transaction_id=transaction_id,
                        model_version=model.version,
                        probability=probability,
                        decision=model.decide(probability),
                        scored_at=scored_at,
                    )
                )
        self._count("scored", len(job.rows))
