"""The prediction log: every scored request as one row of ``monitoring.predictions`` (drift and
live-performance monitoring read it once labels arrive), the staged version's score of it as a row of
``monitoring.shadow_predictions`` (shadow scoring) and, for all or a sample of the requests, the model
input row it was scored with as a row of ``monitoring.served_features`` (the training-serving skew check).
The three kinds of rows (``PredictionRow``, ``ShadowRow``, ``ServedFeaturesRow``) share one queue, one
spill and one writer: a batch is written to the three tables in one transaction.

``PredictionWriter`` never blocks the scoring event loop and never loses a row it accepted, whatever
PostgreSQL does:

* ``put`` appends to an in-memory queue (a ``collections.deque``: O(1), atomic under the GIL, no lock or
  wake-up, which on the event loop cost more than scoring a request) and returns; only a full queue
  (``queue_max``) makes it drop the row, counted;
* a writer thread ``COPY``s batches (``flush_rows`` rows, or whatever waits after ``flush_ms``);
* a spiller thread moves rows to local disk (``prediction_spill``: append-only JSON lines) whenever
  PostgreSQL is unreachable, a write has been stuck for ``stall_seconds`` (a hung server), or the queue
  is over half full; a batch whose write fails goes there too;
* once connected again, the writer drains the spill into the table before anything else — written once
  however often it is retried, since ``request_id`` is the primary key.

The writer connects (and creates the table) on its own: a scorer starts without PostgreSQL. ``close``
writes or spills everything queued before returning, so a clean stop loses nothing either. Counts
(``written``, ``spilled``, ``drained``, ``dropped``, ``rejected``) are kept per table (``counts``; the
attributes of those names are ``monitoring.predictions``'s, as before), and are reported to ``on_count``
(the scoring service's ``rtml_predictions_*`` and ``rtml_prediction_log_rows_total`` counters).

No BentoML here: the scoring service wraps it.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import operator
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg

from rtml import ddl
from rtml.doorbell import Doorbell
from rtml.monitoring.prediction_spill import Spill

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
-- the staged version's score of the same request (shadow scoring, after production's answer went out):
-- joined with production's row on request_id, and with the label on transaction_id
create table if not exists monitoring.shadow_predictions (
    request_id     text not null,
    transaction_id text not null,
    model_version  text not null,
    probability    double precision not null,
    decision       text not null,
    scored_at      timestamptz not null,
    primary key (request_id, model_version)
);
create index if not exists shadow_predictions_scored_at_idx on monitoring.shadow_predictions (scored_at);
-- the exact model input row each logged request was scored with (all requests, or a sample), for the
-- training-serving skew check: features = {column: value} (NaN as null), feature_versions = the online
-- views' build versions the values came from, speed_layer = the speed layer's result for the read
create table if not exists monitoring.served_features (
    request_id       text primary key,
    transaction_id   text not null,
    model_version    text not null,
    event_ts         timestamptz not null,
    scored_at        timestamptz not null,
    speed_layer      text not null,
    feature_versions jsonb not null,
    features         jsonb not null
);
create index if not exists served_features_scored_at_idx on monitoring.served_features (scored_at);
create index if not exists served_features_transaction_id_idx on monitoring.served_features (transaction_id);
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


@dataclass(frozen=True)
class ShadowRow:
    """The staged version's score of a request production answered (``request_id``: production's row)."""

    request_id: str
    transaction_id: str
    model_version: str
    probability: float
    decision: str
    """By the staged version's own thresholds."""
    scored_at: datetime


@dataclass(frozen=True)
class ServedFeaturesRow:
    """The model input row a request was scored with (``rtml.features.request_features.model_row``)."""

    request_id: str
    transaction_id: str
    model_version: str
    """Production's: the version the row was scored with for the answer."""
    event_ts: datetime
    scored_at: datetime
    speed_layer: str
    """The online read's speed-layer result (``merged``, ``beyond_horizon``, ``not_exact``,
    ``disabled``), or ``redis_unavailable`` when Redis was not read (the defaults were scored)."""
    feature_versions: dict[str, str]
    """View → the namespace (build) its values were read from (``OnlineFeatures.versions``)."""
    features: dict[str, Any]
    """Column → value as scored: floats (NaN stored as JSON null), categoricals as strings or None."""


COLUMNS = [f.name for f in fields(PredictionRow)]
_as_tuple = operator.attrgetter(*COLUMNS)  # dataclasses.astuple deep-copies every field: 10x slower
SHADOW_COLUMNS = [f.name for f in fields(ShadowRow)]
FEATURES_COLUMNS = [f.name for f in fields(ServedFeaturesRow)]
_shadow_tuple = operator.attrgetter(*SHADOW_COLUMNS)


def _json(value: dict[str, Any]) -> str:
    """JSON text, which COPY parses into jsonb. orjson writes NaN and infinities (not JSON) as null, as
    the table promises (``json.dumps`` wrote ``Infinity``, which jsonb refuses: the whole batch failed),
    and numpy scalars as numbers; 20 x faster than ``json``, which was most of the writer thread's hold
    on the scoring worker's GIL (docs/benchmarks.md, "Serving", round two)."""
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def _features_tuple(row: ServedFeaturesRow) -> tuple[Any, ...]:
    return (
        row.request_id,
        row.transaction_id,
        row.model_version,
        row.event_ts,
        row.scored_at,
        row.speed_layer,
        _json(row.feature_versions),
        _json(row.features),
    )


@dataclass(frozen=True)
class _Table:
    name: str
    kind: str
    """The ``table`` label of the counts (``counts``, ``on_count``)."""
    columns: list[str]
    values: Callable[[Any], tuple[Any, ...]]


TABLES: dict[type, _Table] = {
    PredictionRow: _Table(TABLE, "predictions", COLUMNS, _as_tuple),
    ShadowRow: _Table("monitoring.shadow_predictions", "shadow_predictions", SHADOW_COLUMNS, _shadow_tuple),
    ServedFeaturesRow: _Table(
        "monitoring.served_features", "served_features", FEATURES_COLUMNS, _features_tuple
    ),
}
KINDS = tuple(table.kind for table in TABLES.values())
LogRow = PredictionRow | ShadowRow | ServedFeaturesRow


def prediction_row(
    transaction: Mapping[str, Any],
    *,
    request_id: str,
    model_version: str,
    probability: float,
    decision: str,
    features_missing: Sequence[str] = (),
    degraded: bool = False,
    scored_at: datetime | None = None,
    latency_ms: float = 0.0,
) -> PredictionRow:
    """The ``monitoring.predictions`` row of a scored transaction: the one place that maps a request
    (the scoring service's ``Transaction`` fields: ``transaction_id``, ``customer_id``, ``merchant_id``,
    ``amount``, ``currency``, ``channel``, ``timestamp``, optional ``merchant_category`` / ``country``)
    and its score onto the table's columns (the service and the tests build rows with it)."""
    return PredictionRow(
        request_id=request_id,
        transaction_id=transaction["transaction_id"],
        customer_id=transaction["customer_id"],
        merchant_id=transaction["merchant_id"],
        amount=transaction["amount"],
        currency=transaction["currency"],
        channel=transaction["channel"],
        merchant_category=transaction.get("merchant_category"),
        country=transaction.get("country"),
        event_ts=transaction["timestamp"],
        model_version=model_version,
        probability=probability,
        decision=decision,
        features_missing=list(features_missing),
        degraded=degraded,
        scored_at=scored_at,
        latency_ms=latency_ms,
    )


def ensure_table(database_url: str) -> None:
    """Create ``monitoring.predictions`` (idempotent)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        create_table(conn)


def create_table(conn: psycopg.Connection) -> None:
    """Create the prediction log's tables unless all exist (the scorer's role may not run DDL)."""
    ddl.create_if_missing(conn, DDL, lock=f"rtml.{TABLE}", tables=[t.name for t in TABLES.values()])


def write_rows(conn: psycopg.Connection, rows: Sequence[LogRow]) -> None:
    """COPY ``rows`` (of any of the three kinds) into their tables in one transaction. A retried batch
    that had landed after all (the connection broke while committing) is refused by a primary key: it
    then goes through staging tables and ``on conflict do nothing``, so it is written once."""
    groups: dict[type, list[LogRow]] = {}
    for row in rows:
        groups.setdefault(type(row), []).append(row)
    try:
        with conn.transaction():
            for row_type, group in groups.items():
                _copy(conn, TABLES[row_type].name, TABLES[row_type], group)
        return
    except psycopg.errors.UniqueViolation:
        pass
    with conn.transaction():
        for row_type, group in groups.items():
            table = TABLES[row_type]
            staging = f"_{table.kind}_batch"
            conn.execute(
                f"create temp table if not exists {staging} (like {table.name}) on commit delete rows"
            )
            _copy(conn, staging, table, group)
            columns = ", ".join(table.columns)
            conn.execute(
                f"insert into {table.name} ({columns}) select {columns} from {staging} on conflict do nothing"
            )


def _copy(conn: psycopg.Connection, into: str, table: _Table, rows: Sequence[LogRow]) -> None:
    with conn.cursor().copy(f"copy {into} ({', '.join(table.columns)}) from stdin") as copy:
        for row in rows:
            copy.write_row(table.values(row))


def kinds(rows: Sequence[LogRow]) -> collections.Counter[str]:
    """Rows per table kind (``predictions``, ``shadow_predictions``, ``served_features``)."""
    return collections.Counter(TABLES[type(row)].kind for row in rows)


OUTCOMES = ("written", "spilled", "drained", "dropped", "rejected")
"""What happens to rows: ``written`` from memory into the table; ``spilled`` to disk; ``drained`` from
disk into the table; ``dropped`` lost (queue full, spill full, an unreadable spilled line);
``rejected`` refused by the table (a data error), logged and skipped."""

DRAIN_EVERY_SECONDS = 1.0
_OUTAGE = (psycopg.OperationalError, psycopg.InterfaceError, psycopg.errors.UndefinedTable)
"""The database is away (or lost the table): keep the rows, reconnect (which creates the table)."""


class LogQueue:
    """The prediction log's front, shared by ``PredictionWriter`` and the process that hosts one
    (the scorer's sidecar, ``rtml.serving.sidecar``): the queue the scoring event loop appends to and the
    counts per table (``on_count(kind, outcome, rows)``: kind one of ``KINDS``, outcome one of
    ``OUTCOMES``)."""

    def __init__(
        self, queue_max: int, on_count: Callable[[str, str, int], None] | None, doorbell: Doorbell
    ) -> None:
        self.queue_max = max(2, queue_max)
        self.on_count = on_count
        self.counts: dict[str, dict[str, int]] = {kind: dict.fromkeys(OUTCOMES, 0) for kind in KINDS}
        self._counts_lock = threading.Lock()
        self._queue: collections.deque[LogRow] = collections.deque()
        # no wake-up per request while traffic flows (rtml.doorbell)
        self._doorbell = doorbell
        self._stop = threading.Event()

    def put(self, row: LogRow) -> bool:
        """Queue one row (any of the three kinds): O(1), never waits. False (and ``dropped`` + 1) when
        the queue is full or the log is closed."""
        if len(self._queue) >= self.queue_max or self._stop.is_set():
            self._count("dropped", {TABLES[type(row)].kind: 1})
            return False
        self._queue.append(row)
        self._doorbell.ring()
        return True

    # the counts of monitoring.predictions, by their names of old (tests and /metadata read them)
    @property
    def written(self) -> int:
        return self.counts["predictions"]["written"]

    @property
    def spilled(self) -> int:
        return self.counts["predictions"]["spilled"]

    @property
    def drained(self) -> int:
        return self.counts["predictions"]["drained"]

    @property
    def dropped(self) -> int:
        return self.counts["predictions"]["dropped"]

    @property
    def rejected(self) -> int:
        return self.counts["predictions"]["rejected"]

    def _count(self, outcome: str, per_kind: Mapping[str, int]) -> None:
        for kind, rows in per_kind.items():
            if rows <= 0:
                continue
            with self._counts_lock:  # several threads count
                self.counts[kind][outcome] += rows
            if self.on_count is not None:
                self.on_count(kind, outcome, rows)


class PredictionWriter(LogQueue):
    def __init__(
        self,
        database_url: str,
        *,
        spill_dir: Path,
        spill_max_bytes: int = 1 << 30,
        queue_max: int = 100_000,
        flush_rows: int = 500,
        flush_ms: float = 200.0,
        connect_timeout: int = 2,
        stall_seconds: float = 5.0,
        on_count: Callable[[str, str, int], None] | None = None,
        on_spill_bytes: Callable[[int], None] | None = None,
    ) -> None:
        self.database_url = database_url
        self.flush_rows = max(1, flush_rows)
        self.flush_seconds = max(0.001, flush_ms / 1000)
        # no wake-up per request while traffic flows; asleep, it still wakes in time for a flush and for
        # the spill's drain
        super().__init__(queue_max, on_count, Doorbell(sleep_s=min(self.flush_seconds, DRAIN_EVERY_SECONDS)))
        self.spill_at = self.queue_max // 2
        self.connect_timeout = max(2, connect_timeout)  # libpq's minimum
        self.stall_seconds = stall_seconds
        """A write (or drain) taking longer means a hung server: new rows go to disk meanwhile."""
        self.on_spill_bytes = on_spill_bytes
        self.database_ok = True
        """False from a failed connection or write until the next successful connection."""
        self.last_error: str | None = None
        # prediction lines as they always were (a spill of an earlier scorer drains unchanged); the
        # other kinds' lines carry their kind
        self._spill = Spill(
            spill_dir,
            spill_max_bytes,
            PredictionRow,
            {TABLES[t].kind: t for t in (ShadowRow, ServedFeaturesRow)},
        )
        self._corrupt_counted = 0
        self._conn: psycopg.Connection | None = None
        self._batch: list[LogRow] = []
        """Rows the writer took from the queue, waiting for ``flush_rows`` or ``flush_ms``."""
        self._inflight: list[LogRow] = []
        """The rows being written."""
        self._spilling: list[LogRow] = []
        """The rows the spiller took from the queue, being written to disk."""
        self._busy_since: float | None = None
        self._writer_done = threading.Event()
        self._abandoned = False
        self._writer = threading.Thread(target=self._run_writer, name="prediction-writer", daemon=True)
        self._spiller = threading.Thread(target=self._run_spiller, name="prediction-spiller", daemon=True)
        self._writer.start()
        self._spiller.start()

    @property
    def pending(self) -> int:
        """Rows in memory: queued, or taken by the writer or the spiller and not yet written."""
        return len(self._queue) + len(self._batch) + len(self._inflight) + len(self._spilling)

    @property
    def stalled(self) -> bool:
        """A write (or drain) has been waiting on PostgreSQL for over ``stall_seconds``."""
        busy = self._busy_since
        return busy is not None and time.monotonic() - busy > self.stall_seconds

    def status(self) -> dict[str, Any]:
        """For ``/metadata``: the database's state, what waits where, and the counts (at the top level
        ``monitoring.predictions``'s, then the other tables')."""
        return {
            "database": "unavailable" if not self.database_ok else "stalled" if self.stalled else "ok",
            "last_error": self.last_error,
            "pending": self.pending,
            "spill_dir": str(self._spill.folder),
            "spill_bytes": self._spill.size(),
            **self.counts["predictions"],
            **{kind: dict(self.counts[kind]) for kind in KINDS if kind != "predictions"},
        }

    def close(self, timeout: float = 30.0) -> None:
        """Stop taking rows; write every queued row, or spill it when the database is away or hung."""
        self._stop.set()
        self._doorbell.wake()
        deadline = time.monotonic() + timeout
        while self._writer.is_alive() and not self.stalled and time.monotonic() < deadline:
            self._writer.join(0.05)
        if self._writer.is_alive():  # stuck on a hung database: its rows go to disk too
            log.error("prediction log: PostgreSQL does not answer; spilling what is left")
            self._abandoned = True
            self._spill_rows([*self._inflight, *self._batch])
        self._spiller.join(timeout)
        self._spill.seal()
        if not self._writer.is_alive():
            self._reset_connection()

    # --- counting -----------------------------------------------------------------------------------
    def _report_spill_bytes(self) -> None:
        if self.on_spill_bytes is not None:
            self.on_spill_bytes(self._spill.waiting_bytes)

    # --- the writer thread: memory and spill → PostgreSQL ------------------------------------------
    def _run_writer(self) -> None:
        first_at = 0.0
        backoff = 0.1
        next_drain = 0.0
        try:
            while True:
                stopping = self._stop.is_set()
                if self._conn is None:
                    if not self._connect():
                        try:
                            self._spill_rows(self._batch)  # pending counts them until they are spilled
                        finally:
                            self._batch = []
                        if stopping:
                            return  # the spiller keeps the rest
                        self._stop.wait(backoff)
                        backoff = min(backoff * 2, 1.0)
                        continue
                    backoff, next_drain = 0.1, 0.0
                if not stopping and time.monotonic() >= next_drain:
                    next_drain = time.monotonic() + DRAIN_EVERY_SECONDS
                    self._drain()
                    continue
                was_empty = not self._batch
                self._collect(self._batch, block=not stopping)
                if was_empty and self._batch:
                    first_at = time.monotonic()
                due = (
                    stopping
                    or len(self._batch) >= self.flush_rows
                    or time.monotonic() - first_at >= self.flush_seconds
                )
                if self._batch and due:
                    self._inflight, self._batch = self._batch, []  # pending counts it throughout
                    self._write_or_spill(self._inflight)
                elif stopping and not self._batch and not self._queue:
                    return
        finally:
            self._writer_done.set()

    def _collect(self, batch: list[LogRow], block: bool) -> None:
        """Add queued rows to ``batch`` (up to ``flush_rows``); with ``block``, first waits for rows to
        arrive (a stop ends the wait)."""
        if block and not self._queue:
            self._doorbell.wait(lambda: bool(self._queue) or self._stop.is_set())
        while len(batch) < self.flush_rows:
            try:
                batch.append(self._queue.popleft())
            except IndexError:
                return

    def _connect(self) -> bool:
        try:
            conn = psycopg.connect(self.database_url, connect_timeout=self.connect_timeout)
        except psycopg.Error as exc:
            self._failed(exc)
            return False
        try:
            create_table(conn)
        except psycopg.Error as exc:
            conn.close()
            self._failed(exc)
            return False
        self._conn = conn
        if not self.database_ok:
            log.warning("prediction log: PostgreSQL is back")
        self.database_ok, self.last_error = True, None
        return True

    def _write_or_spill(self, batch: list[LogRow]) -> None:
        self._busy_since = time.monotonic()
        try:
            self._count("written", self._write(batch))
        except _OUTAGE as exc:
            self._failed(exc)
            self._spill_rows(batch)
        finally:
            self._inflight, self._busy_since = [], None

    def _drain(self) -> None:
        """Spilled rows (this worker's or another's, this run's or an earlier one's) into the table."""
        self._busy_since = time.monotonic()
        try:
            self._spill.drain(self._write, done=lambda rows: self._count("drained", rows))
        except _OUTAGE as exc:
            self._failed(exc)
        finally:
            self._busy_since = None
        # an unreadable line's kind is unknown: counted as a prediction row
        self._count("dropped", {"predictions": self._spill.corrupt - self._corrupt_counted})
        self._corrupt_counted = self._spill.corrupt
        self._report_spill_bytes()

    def _write(self, rows: list[LogRow]) -> collections.Counter[str]:
        """``write_rows``; a batch the table refuses (a data error, or a value COPY cannot encode) is
        written row by row, skipping and counting the refused rows, so one bad row never blocks the
        log. The rows written, per kind; raises ``_OUTAGE`` errors."""
        assert self._conn is not None
        try:
            write_rows(self._conn, rows)
            return kinds(rows)
        except _OUTAGE:
            raise
        except Exception as exc:
            log.warning("prediction log: batch refused (%s); writing row by row", exc)
        written: collections.Counter[str] = collections.Counter()
        for row in rows:
            try:
                write_rows(self._conn, [row])
                written[TABLES[type(row)].kind] += 1
            except _OUTAGE:
                raise
            except Exception as exc:
                self._count("rejected", {TABLES[type(row)].kind: 1})
                log.error("prediction log: row %s rejected: %s", row.request_id, exc)
        return written

    def _failed(self, exc: Exception) -> None:
        if self.database_ok:
            log.warning("prediction log: PostgreSQL unavailable (%s); rows go to %s", exc, self._spill.folder)
        self.database_ok, self.last_error = False, f"{type(exc).__name__}: {exc}".strip()
        self._reset_connection()

    def _reset_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None

    # --- the spiller thread: memory → disk -----------------------------------------------------------
    def _run_spiller(self) -> None:
        while True:
            writer_gone = self._writer_done.is_set() or self._abandoned
            if not self.database_ok or self.stalled or writer_gone or len(self._queue) > self.spill_at:
                self._pop_into(self._spilling, 5000)  # pending counts them until they are spilled
                if self._spilling:
                    try:
                        self._spill_rows(self._spilling)
                    finally:
                        self._spilling = []
                    continue
            else:
                self._spill.seal()  # a finished segment can be drained
            if self._stop.is_set() and writer_gone and not self._queue:
                return
            time.sleep(0.02)

    def _pop_into(self, rows: list[LogRow], limit: int) -> None:
        with contextlib.suppress(IndexError):
            while len(rows) < limit:
                rows.append(self._queue.popleft())

    def _spill_rows(self, rows: list[LogRow]) -> None:
        if not rows:
            return
        kept = self._spill.append(rows)  # the first `kept` rows
        self._count("spilled", kinds(rows[:kept]))
        self._count("dropped", kinds(rows[kept:]))
        self._report_spill_bytes()
