"""Circuit breaker of the scoring service's online read (Redis), with its probe off the request path.

Without it, a hung Redis (SIGSTOP, a stalled network) costs every micro-batch a socket timeout plus a
reconnect: measured at 100 requests/s, p50 ~280 ms for the whole outage. With it:

* **closed**: reads go to Redis. The first connection error or timeout of a read (``trip``) opens it;
* **open**: ``lookup`` answers at once without touching Redis (fail-open: default features and
  ``degraded: true``; fail-closed: 503 with ``Retry-After``);
* a **probe** thread asks Redis for the views' pointers (``OnlineStore.probe``: one ``MGET`` on a
  connection of its own, no retry, the reader's socket timeout) every ``interval`` seconds, whatever
  the state: an answer closes the breaker (recovery within one interval of Redis answering), a failure
  opens it (a Redis that died between requests costs no request a timeout). No request ever waits for
  a probe, so there is no half-open state on the request path.

The probe's answer is also the service's view of the online store for ``GET /health``: which views'
pointers are gone (Redis restarted or flushed, TTL lapsed).

Hand-written on purpose: redis-py 8 has retries and backoff but its only breaker (``redis.multidb``,
on pybreaker) guards failover between the databases of a ``MultiDBClient`` (with one Redis there is
nothing to fail over to) and wraps redis-py's command path, which the reader bypasses for speed;
pybreaker's half-open trial would run on a request and make it wait for a timeout.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import redis

log = logging.getLogger("rtml.serving")

# a cluster without a reachable primary for a slot raises ClusterError (ClusterDownError, "TTL exhausted")
REDIS_ERRORS = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ClusterError,
)


class RedisBreaker:
    """``is_open`` is read on the request path without a lock (one attribute read); transitions take
    the lock, so each is reported once to ``on_change(is_open)``."""

    def __init__(
        self,
        probe: Callable[[], dict[str, str | None]],
        interval_s: float,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.probe = probe
        self.interval_s = interval_s
        self.on_change = on_change
        self.is_open = False
        self.opened_at: float | None = None  # time.monotonic() of the last opening
        self.last_error: str | None = None
        self.views: dict[str, str | None] | None = None  # view → namespace at the last probe; None: none yet
        self.checked_at: datetime | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- transitions ----------------------------------------------------------------------------
    def trip(self, error: BaseException) -> None:
        """A read failed with a connection error or a timeout: open (no-op when already open)."""
        self._set(True, f"{type(error).__name__}: {error}")

    def _set(self, is_open: bool, error: str | None) -> None:
        with self._lock:
            self.last_error = error if is_open else None
            if self.is_open == is_open:
                return
            if self.on_change is not None:  # first: whoever sees the new state sees its metrics
                self.on_change(is_open)
            self.opened_at = time.monotonic() if is_open else None
            self.is_open = is_open
        log.warning(
            "online store circuit breaker %s%s",
            "opened" if is_open else "closed",
            f": {error}" if error else "",
        )

    # --- the probe ------------------------------------------------------------------------------
    def probe_once(self) -> bool:
        """Probe Redis now; True when it answered (the breaker is then closed)."""
        try:
            views = self.probe()
        except REDIS_ERRORS as exc:
            self._set(True, f"{type(exc).__name__}: {exc}")
            return False
        except Exception as exc:  # e.g. a ResponseError: Redis answers, just not as expected
            log.warning("online store probe failed: %s", exc)
            return False
        self.views, self.checked_at = views, datetime.now(UTC)
        self._set(False, None)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.probe_once()

    def start(self) -> None:
        self.probe_once()
        self._thread = threading.Thread(target=self._run, name="redis-probe", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def state(self) -> dict[str, Any]:
        """For ``GET /health``."""
        return {
            "breaker": "open" if self.is_open else "closed",
            "open_for_s": None if self.opened_at is None else round(time.monotonic() - self.opened_at, 3),
            "last_error": self.last_error,
            "views": self.views,
            "missing_views": None
            if self.views is None
            else sorted(v for v, ns in self.views.items() if not ns),
            "checked_at": None if self.checked_at is None else self.checked_at.isoformat(),
        }
