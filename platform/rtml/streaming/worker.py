"""The stream worker (``rtml stream run``): the transaction stream into the speed layer's per-customer state.

A consumer of the group ``stream_worker_group`` (default ``features``); several workers of one group,
side by side, share the stream's entries (Redis hands each new entry to one of them). Each loop takes one
batch: this consumer's own unacknowledged entries after a restart under the same name, else pending
entries of a consumer idle for ``stream_claim_idle_ms`` (taken to be dead, ``XAUTOCLAIM``), else new
entries (``XREADGROUP``, waiting up to ``stream_worker_block_ms``). The batch's events are applied with
``redis_state``'s APPLY script (idempotent by ``transaction_id``; an event before the batch watermark is
``late``); its ``XACK`` follows in a second round trip, once every write was answered, so an entry is
acknowledged only after its event was written, and a worker that dies before then leaves its batch
pending for the others to claim. An event applied twice (a claim racing a slow worker, a replay, a
batch written but not acknowledged) is a ``duplicate``, counted once, so the state is the same whoever
applied what.

An entry that is not a transaction event of a known schema version is acknowledged and counted as
``malformed`` with a log line saying what was wrong: it could never succeed, and left pending it
would be claimed again and again.

A Redis that refuses the writes (``maxmemory`` reached, a read-only replica): nothing of the batch is
acknowledged; the worker logs the refused events and stops with an error (``StateWriteRefused``), and the
batch stays pending, applied again once Redis accepts writes (the part written meanwhile as duplicates).

Metrics (a registry per worker; ``rtml stream run`` serves it over HTTP): events processed by outcome,
the group's lag (entries not yet acknowledged, and the age of the oldest of them, from its entry id's
arrival time), the freshness of each applied event (event time to state written) and the time per
batch. Nothing here imports Dagster or BentoML.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import redis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from rtml.config import Settings
from rtml.streaming import stream
from rtml.streaming.events import SECOND_US, EventSchemaError, TransactionEvent
from rtml.streaming.redis_state import SpeedStore
from rtml.streaming.state import Outcome

log = logging.getLogger(__name__)

MALFORMED = "malformed"
OUTCOMES = (*(o.value for o in Outcome), MALFORMED)
LAG_INTERVAL_S = 1.0
"""How often a worker measures the group's lag (two or three commands)."""


class StateWriteRefused(RuntimeError):
    """Redis refused APPLY writes of a batch whose acknowledgement went out in the same round trip."""


class WorkerMetrics:
    """The worker's Prometheus metrics, in a registry of their own (several workers in one test process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.processed = Counter(
            "rtml_stream_events_processed_total",
            "Stream entries processed by the worker, by outcome: applied to the customer state, "
            "duplicate (transaction id already applied), late (before the batch watermark: the batch "
            "layer's), malformed (not a transaction event; acknowledged and skipped).",
            ["outcome"],
            registry=self.registry,
        )
        self.lag_events = Gauge(
            "rtml_stream_consumer_lag_events",
            "Entries of the stream the worker group has not acknowledged yet (never delivered + pending).",
            registry=self.registry,
        )
        self.lag_seconds = Gauge(
            "rtml_stream_consumer_lag_seconds",
            "Age of the oldest entry the worker group has not acknowledged (its arrival in the stream); "
            "0 when the group is caught up.",
            registry=self.registry,
        )
        self.freshness = Histogram(
            "rtml_stream_freshness_seconds",
            "Event time to the event written in the speed layer's state, per applied event.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "rtml_stream_batch_seconds",
            "Time to process one batch: parse, watermark, apply and acknowledge.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )
        for outcome in OUTCOMES:  # every series from the start: rate() sees the first increase
            self.processed.labels(outcome)


@dataclass
class WorkerCounts:
    applied: int = 0
    duplicate: int = 0
    late: int = 0
    malformed: int = 0
    claimed: int = 0
    """Entries taken over from a consumer idle for ``stream_claim_idle_ms`` (among the outcomes)."""
    trimmed: int = 0
    """Pending entries that retention trimmed before anyone applied them (lost; not among the outcomes)."""
    batches: int = 0

    @property
    def processed(self) -> int:
        return self.applied + self.duplicate + self.late + self.malformed

    def __str__(self) -> str:
        return ", ".join(f"{f.name} {getattr(self, f.name)}" for f in fields(self))


class StreamWorker:
    def __init__(
        self,
        client: redis.Redis,
        settings: Settings,
        *,
        consumer: str,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.client, self.settings, self.consumer = client, settings, consumer
        self.key, self.group = settings.stream.key, settings.stream.worker_group
        self.store = SpeedStore(client, settings.online.key_prefix)
        self.metrics = metrics or WorkerMetrics()
        self.counts = WorkerCounts()
        self._recovered = False
        self._claim_from = "0-0"
        self._next_claim = 0.0
        self._claim_every_s = max(0.05, min(5.0, settings.stream.claim_idle_ms / 2000))
        self._next_lag = 0.0
        stream.ensure_group(client, self.key, self.group, start="0")

    # --- the loop ----------------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> WorkerCounts:
        """Process batches until ``stop`` is set; the batch in hand is finished (applied and acknowledged)
        first. A Redis outage is waited out: what was read and not acknowledged stays pending."""
        backoff = 0.5
        while not stop.is_set():
            try:
                self.process_once()
                backoff = 0.5
            except stream.REDIS_ERRORS as exc:
                log.warning("stream worker: %s; retrying in %.1f s (nothing acknowledged)", exc, backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
            except redis.exceptions.ResponseError as exc:
                if not stream.stream_gone(exc):
                    raise
                # the stream was deleted (a flush, a restore): start over on what it holds from now on
                log.warning("stream worker: %s; creating group %s again", exc, self.group)
                stream.ensure_group(self.client, self.key, self.group, start="0")
        return self.counts

    def process_once(self, block_ms: int | None = None) -> int:
        """Take one batch and process it; the number of entries processed (0: none arrived)."""
        entries = self._next_batch(self.settings.stream.worker_block_ms if block_ms is None else block_ms)
        if entries:
            self.process(entries)
        if time.monotonic() >= self._next_lag:
            self.measure_lag()
        return len(entries)

    def _next_batch(self, block_ms: int) -> list[stream.Entry]:
        limit = self.settings.stream.worker_batch_events
        if not self._recovered:  # after a restart under the same name: what it read and never acknowledged
            own = stream.read_own_pending(self.client, self.key, self.group, self.consumer, limit)
            if own:
                return own
            self._recovered = True
        if time.monotonic() >= self._next_claim:
            claimed = stream.claim_idle(
                self.client,
                self.key,
                self.group,
                self.consumer,
                self.settings.stream.claim_idle_ms,
                limit,
                self._claim_from,
            )
            self._claim_from = claimed.next_start
            if claimed.next_start == "0-0":  # the whole pending list was scanned: look again later
                self._next_claim = time.monotonic() + self._claim_every_s
            if claimed.trimmed:
                self.counts.trimmed += len(claimed.trimmed)
                log.error(
                    "stream worker: %d pending events were trimmed before they were applied (lost)",
                    len(claimed.trimmed),
                )
            if claimed.entries:
                self.counts.claimed += len(claimed.entries)
                log.warning(
                    "stream worker %s: claimed %d events a dead consumer had read and not acknowledged",
                    self.consumer,
                    len(claimed.entries),
                )
                return claimed.entries
        return stream.read_new(self.client, self.key, self.group, self.consumer, limit, block_ms)

    # --- one batch ---------------------------------------------------------------------------------------
    def process(self, entries: Sequence[stream.Entry]) -> list[str]:
        """Apply ``entries``' events and acknowledge every entry, in one round trip; the outcome of each
        entry, in order."""
        started = time.perf_counter()
        events: list[TransactionEvent] = []
        positions: list[int] = []
        outcomes = [MALFORMED] * len(entries)
        for position, entry in enumerate(entries):
            try:
                events.append(TransactionEvent.from_fields(entry.fields))
                positions.append(position)
            except EventSchemaError as exc:
                log.warning(
                    "stream worker: entry %s is not a transaction event, acknowledged and skipped: %s",
                    entry.id,
                    exc,
                )
        newest = self.store.watermark()  # None before the first snapshot push: nothing is late yet
        pipe = self.client.pipeline(transaction=False)
        self.store.queue_apply(pipe, events, newest[0] if newest else 0)
        ids = [entry.id for entry in entries]
        # The XACK is a second round trip, sent once every write was answered: behind the writes in one
        # pipeline it would also run when Redis refused them (maxmemory, a read-only replica), and on a
        # cluster the stream's node may answer before the customers' nodes.
        replies = pipe.execute(raise_on_error=False) if events else []
        if not any(isinstance(r, Exception) for r in replies):
            replies.append(_reply(lambda: self.client.xack(self.key, self.group, *ids)))
        written = time.time()
        refused = [(e, r) for e, r in zip(events, replies, strict=False) if isinstance(r, Exception)]
        if refused:
            for event, error in refused:
                log.error("stream worker: Redis refused event %s: %s", event.transaction_id, error)
            raise StateWriteRefused(
                f"Redis refused {len(refused)} of {len(events)} state writes of a batch "
                f"({entries[0].id}..{entries[-1].id}); the batch is not acknowledged: it stays pending and "
                "is applied again (the written part as duplicates) once Redis accepts writes"
            )
        if isinstance(replies[-1], Exception):  # written, not acknowledged: read again later, duplicates
            log.warning("stream worker: acknowledging %d entries failed: %s", len(entries), replies[-1])
        for position, event, result in zip(
            positions, events, self.store.outcomes(replies[: len(events)]), strict=True
        ):
            outcomes[position] = result.value
            if result is Outcome.APPLIED:
                self.metrics.freshness.observe(max(0.0, written - event.event_ts_us / SECOND_US))
        for outcome in outcomes:
            setattr(self.counts, outcome, getattr(self.counts, outcome) + 1)
            self.metrics.processed.labels(outcome).inc()
        self.counts.batches += 1
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        return outcomes

    # --- lag ---------------------------------------------------------------------------------------------
    def measure_lag(self) -> tuple[int, float]:
        """The group's entries not acknowledged yet and the age (s) of the oldest of them; sets the gauges."""
        self._next_lag = time.monotonic() + LAG_INTERVAL_S
        lag, age = stream.group_lag(self.client, self.key, self.group)
        self.metrics.lag_events.set(lag)
        self.metrics.lag_seconds.set(age)
        return lag, age


def _reply(command: Any) -> Any:
    """A command's reply, or the error it raised (as a pipeline with ``raise_on_error=False`` gives it)."""
    try:
        return command()
    except redis.exceptions.ResponseError as exc:
        return exc
