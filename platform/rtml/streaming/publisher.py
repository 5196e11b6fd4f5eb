"""The scorer's stream publisher: events of scored transactions to the stream, off the request path.

As the prediction log's writer (``rtml.monitoring.predictions``): ``put`` appends to a bounded
``collections.deque`` (O(1), atomic under the GIL, never waits) and a background thread sends what
waits in pipelined batches (``publish``: one round trip per ``batch`` events). A full queue drops the
event, counted. Unlike the prediction log there is no spill to disk: the stream feeds the speed layer,
whose events are worth little minutes later, and in the demo ``raw.transactions`` is fed by the
simulator (``transactions_feed``); where the stream is the feed, a publisher that must not lose events
needs a durable queue of its own (docs/streaming.md).

Redis slow or away never reaches a request: the thread has its own connection; while ``available()``
says no (the scorer passes its online-read circuit breaker, ``rtml/serving/breaker.py``, which a probe keeps
current) it does not even try, and a failed batch is kept at the head of the queue and sent again after
a back-off. A batch that failed midway may have been appended in part: sent again, those events are in
the stream twice, and consumers count them once (by ``transaction_id``).

Counts (``published``, ``dropped``) are attributes and are reported to ``on_count`` (the scorer's
``rtml_stream_events_*_total``). No BentoML here.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from rtml.doorbell import Doorbell
from rtml.streaming.events import TransactionEvent
from rtml.streaming.stream import REDIS_ERRORS, publish

log = logging.getLogger(__name__)

OUTCOMES = ("published", "dropped")
"""``published``: appended to the stream; ``dropped``: lost (queue full, or still queued at ``close``'s
deadline, or refused by Redis with an error that is not an outage)."""


def no_retries() -> Retry:
    """For the publisher's client: redis-py 8 retries a failed command with back-off by default, which
    would hold a batch (and ``close``) for seconds; the publisher keeps the batch and retries itself."""
    return Retry(NoBackoff(), 0)


class EventPublisher:
    def __init__(
        self,
        client: redis.Redis,
        key: str,
        *,
        retention_s: float,
        queue_max: int = 100_000,
        batch: int = 500,
        available: Callable[[], bool] | None = None,
        on_count: Callable[[str, int], None] | None = None,
        idle_wait_s: float = 0.02,
    ) -> None:
        self.client = client
        self.key = key
        self.retention_s = retention_s
        self.queue_max = max(2, queue_max)
        self.batch = max(1, batch)
        self.available = available or (lambda: True)
        self.on_count = on_count
        self.published = self.dropped = 0
        self.redis_ok = True
        self.last_error: str | None = None
        self._queue: collections.deque[TransactionEvent] = collections.deque()
        self._inflight = 0
        """Events the thread took and is sending."""
        self._abandoned = False
        """``close`` gave up waiting and counted the in-flight events dropped: the thread counts no more."""
        self._counts_lock = threading.Lock()
        self._stop = threading.Event()
        self._doorbell = Doorbell(poll_s=idle_wait_s)  # no wake-up per event while traffic flows
        self._thread = threading.Thread(target=self._run, name="stream-publisher", daemon=True)
        self._thread.start()

    # --- producer side (the scoring event loop) -----------------------------------------------------
    def put(self, event: TransactionEvent) -> bool:
        """Queue one event: O(1), never waits. False (and ``dropped`` + 1) when full or closed."""
        if len(self._queue) >= self.queue_max or self._stop.is_set():
            self._count("dropped", 1)
            return False
        self._queue.append(event)
        self._doorbell.ring()
        return True

    @property
    def pending(self) -> int:
        return len(self._queue) + self._inflight

    def status(self) -> dict[str, Any]:
        """For ``/health`` and ``/metadata``."""
        return {
            "stream": self.key,
            "redis": "ok" if self.redis_ok else "unavailable",
            "last_error": self.last_error,
            "pending": self.pending,
            **{outcome: getattr(self, outcome) for outcome in OUTCOMES},
        }

    def close(self, timeout: float = 5.0) -> None:
        """Stop taking events; send what is queued (no retries) for up to ``timeout`` seconds, drop and
        count the rest."""
        self._stop.set()
        self._doorbell.wake()
        self._thread.join(timeout)
        with self._counts_lock:
            self._abandoned = self._thread.is_alive()  # stuck on Redis: what it holds is lost
            lost = self._take_all() + (self._inflight if self._abandoned else 0)
        if lost:
            log.error("stream publisher: Redis unavailable at shutdown; dropping %d events", lost)
        self._count("dropped", lost)

    # --- the thread -----------------------------------------------------------------------------------
    def _run(self) -> None:
        backoff = 0.1
        while True:
            if not self._queue:
                if self._stop.is_set():
                    return
                self._doorbell.wait(lambda: bool(self._queue) or self._stop.is_set())
                continue
            if not self.available():  # the breaker is open: Redis does not answer reads either
                if self._stop.wait(backoff):
                    return  # closing with Redis away: close() drops and counts what is left
                backoff = min(backoff * 2, 1.0)
                continue
            # counted in flight before they leave the queue: `pending` never misses them
            self._inflight = min(self.batch, len(self._queue))
            events = self._take(self._inflight)
            self._inflight = len(events)
            try:
                publish(self.client, self.key, events, self.retention_s)
            except REDIS_ERRORS as exc:
                self._failed(exc)
                if self._stop.is_set():  # closing: no retries; close() drops (counts) the rest
                    self._count("dropped", len(events), settling=True)
                    return
                self._queue.extendleft(reversed(events))  # keep order; sent again (consumers dedupe)
                self._inflight = 0
                if self._stop.wait(backoff):
                    return
                backoff = min(backoff * 2, 1.0)
                continue
            except redis.exceptions.RedisError as exc:  # Redis answers but refuses (e.g. OOM): not retried
                log.error("stream publisher: %d events refused: %s", len(events), exc)
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._count("dropped", len(events), settling=True)
                continue
            if not self.redis_ok:
                log.warning("stream publisher: Redis is back")
            self.redis_ok, self.last_error, backoff = True, None, 0.1
            self._count("published", len(events), settling=True)

    def _take(self, limit: int) -> list[TransactionEvent]:
        events: list[TransactionEvent] = []
        while len(events) < limit:
            try:
                events.append(self._queue.popleft())
            except IndexError:
                break
        return events

    def _take_all(self) -> int:
        return len(self._take(len(self._queue) + 1))

    def _failed(self, exc: Exception) -> None:
        if self.redis_ok:
            log.warning("stream publisher: Redis unavailable (%s); events wait in memory", exc)
        self.redis_ok, self.last_error = False, f"{type(exc).__name__}: {exc}"

    def _count(self, outcome: str, events: int, *, settling: bool = False) -> None:
        """Add ``events`` to ``outcome``. ``settling``: they are the batch in flight, which leaves
        ``pending`` under the same lock (whoever sees pending == 0 sees it counted), unless close() has
        counted it already."""
        with self._counts_lock:
            if settling:
                events, self._inflight = (0 if self._abandoned else events), 0
            setattr(self, outcome, getattr(self, outcome) + events)
        if self.on_count is not None and events > 0:
            self.on_count(outcome, events)
