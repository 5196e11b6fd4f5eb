"""The prediction log: every scored request as one row of ``monitoring.predictions`` (drift and
live-performance monitoring read it once labels arrive).

``PredictionWriter`` is a background batch writer: ``put`` appends to a bounded queue and returns at
once; a thread ``COPY``s batches (``flush_rows`` rows, or whatever is waiting after ``flush_ms``).
The queue is a ``collections.deque`` (appends and pops are atomic under the GIL) that the thread
polls: a ``queue.Queue`` locks and wakes the writer on every put, and on the scoring event loop that
hand-off cost more than scoring a request (measured with py-spy).
``close`` drains the queue and writes everything before returning, so a clean stop loses nothing.
A database outage keeps the batch and retries (with back-off); meanwhile the queue fills and, once
full, ``put`` waits ``put_timeout`` and then counts the row as dropped (``dropped``), so scoring never
blocks on the log for long.

No BentoML here: the scoring service wraps it.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import operator
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime

import psycopg

log = logging.getLogger(__name__)

TABLE = "monitoring.predictions"

DDL = """
create schema if not exists monitoring;
create table if not exists monitoring.predictions (
    request_id        text primary key,
    transaction_id    text not null,
    customer_id       text not null,
    merchant_id       text not null,
    amount            numeric(14, 2) not null,
    currency          text not null,
    channel           text not null,
    merchant_category text,
    country           text,
    event_ts          timestamptz not null,
    model_version     text not null,
    probability       double precision not null,
    decision          text not null,
    features_missing  text[] not null,
    degraded          boolean not null,
    scored_at         timestamptz not null,
    latency_ms        double precision not null
);
create index if not exists predictions_scored_at_idx on monitoring.predictions (scored_at);
create index if not exists predictions_transaction_id_idx on monitoring.predictions (transaction_id);
"""


@dataclass(frozen=True)
class PredictionRow:
    request_id: str
    transaction_id: str
    customer_id: str
    merchant_id: str
    amount: float
    currency: str
    channel: str
    merchant_category: str | None
    country: str | None
    event_ts: datetime
    model_version: str
    probability: float
    decision: str
    features_missing: list[str] = field(default_factory=list)
    degraded: bool = False
    scored_at: datetime | None = None
    latency_ms: float = 0.0


COLUMNS = [f.name for f in fields(PredictionRow)]
_as_tuple = operator.attrgetter(*COLUMNS)  # dataclasses.astuple deep-copies every field: 10x slower


def ensure_table(database_url: str) -> None:
    """Create ``monitoring.predictions`` (idempotent)."""
    # concurrent workers may race on `create ... if not exists`: serialise them
    with psycopg.connect(database_url, autocommit=True) as conn, conn.transaction():
        conn.execute("select pg_advisory_xact_lock(hashtext('rtml.monitoring.predictions'))")
        conn.execute(DDL)


def write_rows(conn: psycopg.Connection, rows: Sequence[PredictionRow]) -> None:
    """COPY ``rows`` into the table in one transaction. A retried batch that had landed after all (the
    connection broke while committing) is refused by the primary key: it then goes through a staging
    table and ``on conflict (request_id) do nothing``, so it is written once."""
    try:
        with conn.transaction():
            _copy(conn, TABLE, rows)
        return
    except psycopg.errors.UniqueViolation:
        pass
    staging = "_predictions_batch"
    with conn.transaction():
        conn.execute(f"create temp table if not exists {staging} (like {TABLE}) on commit delete rows")
        _copy(conn, staging, rows)
        conn.execute(f"insert into {TABLE} select * from {staging} on conflict (request_id) do nothing")


def _copy(conn: psycopg.Connection, table: str, rows: Sequence[PredictionRow]) -> None:
    with conn.cursor().copy(f"copy {table} ({', '.join(COLUMNS)}) from stdin") as copy:
        for row in rows:
            copy.write_row(_as_tuple(row))


class PredictionWriter:
    def __init__(
        self,
        database_url: str,
        *,
        queue_max: int = 100_000,
        flush_rows: int = 500,
        flush_ms: float = 200.0,
        put_timeout: float = 0.05,
        create_table: bool = True,
    ) -> None:
        self.database_url = database_url
        self.flush_rows = max(1, flush_rows)
        self.flush_seconds = max(0.001, flush_ms / 1000)
        self.put_timeout = put_timeout
        self.queue_max = max(1, queue_max)
        self._queue: collections.deque[PredictionRow] = collections.deque()
        self._stop = threading.Event()
        self._conn: psycopg.Connection | None = None
        self.written = 0
        self.dropped = 0
        self.failed_flushes = 0
        self.rejected = 0
        """Rows the table refused (a data error), logged and skipped."""
        if create_table:
            ensure_table(database_url)
        self._thread = threading.Thread(target=self._run, name="prediction-writer", daemon=True)
        self._thread.start()

    # --- producer side ------------------------------------------------------------------------------
    def put(self, row: PredictionRow) -> bool:
        """Queue one row; False (and ``dropped`` + 1) when the queue stayed full for ``put_timeout``."""
        if self._stop.is_set():
            self.dropped += 1
            return False
        if len(self._queue) >= self.queue_max:  # the database is away (or slow): wait a little
            deadline = time.monotonic() + self.put_timeout
            while len(self._queue) >= self.queue_max:
                if time.monotonic() >= deadline:
                    self.dropped += 1
                    return False
                time.sleep(0.001)
        self._queue.append(row)
        return True

    @property
    def pending(self) -> int:
        return len(self._queue)

    def close(self, timeout: float = 30.0) -> None:
        """Stop taking rows, write every queued row, close the connection."""
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error(
                "prediction writer did not finish within %.0fs; %d rows unwritten", timeout, self.pending
            )
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # --- the writer thread ----------------------------------------------------------------------
    def _collect(self, batch: list[PredictionRow], block: bool) -> None:
        """Add queued rows to ``batch`` (up to ``flush_rows``); with ``block``, first waits up to 20 ms
        for rows to arrive (so a stop is noticed quickly)."""
        if block and not self._queue:
            self._stop.wait(0.02)
        while len(batch) < self.flush_rows:
            try:
                batch.append(self._queue.popleft())
            except IndexError:
                return

    def _run(self) -> None:
        batch: list[PredictionRow] = []
        first_at = 0.0
        backoff = 0.1
        while True:
            stopping = self._stop.is_set()
            was_empty = not batch
            self._collect(batch, block=not stopping)
            if was_empty and batch:
                first_at = time.monotonic()
            due = (
                stopping or len(batch) >= self.flush_rows or time.monotonic() - first_at >= self.flush_seconds
            )
            if batch and due:
                try:
                    self._flush(batch)
                    backoff = 0.1
                except psycopg.OperationalError as exc:  # the database is away: keep the batch, retry
                    self.failed_flushes += 1
                    log.warning("prediction log: flush of %d rows failed (%s); retrying", len(batch), exc)
                    self._reset_connection()
                    if stopping and self.failed_flushes > 50:
                        log.error("prediction log: giving up on %d rows at shutdown", len(batch))
                        return
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                except psycopg.Error as exc:  # a row the table refuses: write the others one by one
                    log.warning("prediction log: batch refused (%s); writing row by row", exc)
                    self._reset_connection()
                    batch = self._flush_one_by_one(batch)
                    if batch:  # the database went away meanwhile: retry the rest
                        continue
                batch = []
            elif stopping and not batch and not self._queue:
                return

    def _flush_one_by_one(self, batch: list[PredictionRow]) -> list[PredictionRow]:
        """Write rows singly, skipping refused ones; the unwritten rest if the database goes away."""
        for index, row in enumerate(batch):
            try:
                self._flush([row])
            except psycopg.OperationalError:
                self._reset_connection()
                return batch[index:]
            except psycopg.Error as exc:
                self.rejected += 1
                log.error("prediction log: row %s rejected: %s", row.request_id, exc)
                self._reset_connection()
        return []

    def _flush(self, batch: list[PredictionRow]) -> None:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.database_url)
        write_rows(self._conn, batch)
        self.written += len(batch)

    def _reset_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None
