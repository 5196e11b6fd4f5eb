"""Idempotent loading of one source (a partition key or a landing file name) into the raw tables.

One transaction per source: delete the source's previous rows (raw and quarantine), then stream the
batches chunk by chunk (``IngestSettings.chunk_rows``, the first chunks smaller): validate, COPY the good
rows, COPY the quarantined rows, and finally record the load in ``raw.loads`` (counts and the time range
of the rows loaded). Reruns therefore never duplicate, and readers see either the old or the new version
of a source.

The previous rows are found through ``raw.loads``: ``source = %s AND <time> BETWEEN min_ts AND max_ts``
uses the BRIN time index, so the big tables need no index on ``source`` (see ``rtml.ingest.tables``).

Speed: the good rows go to the server in PostgreSQL's binary COPY format, encoded from the Arrow chunk by
pgpq: the server then skips parsing text into timestamps and floats (server-side COPY into the indexed
table measured 1.1-1.5x the rate of CSV, see docs/benchmarks.md), and encoding costs the client about a
fifth of pyarrow's CSV writer (0.3 s vs 1.5 s per 1M rows). Validation and encoding of chunk N+1 run in
a background thread while the server copies chunk N (pyarrow, pgpq and libpq release the GIL), so the
client mostly hides behind the server's COPY. Quarantine rows are all text and few: they stay CSV.

A transaction_id already loaded from a *different* source would break the primary key. The common case
takes the fast path (COPY straight into the table inside a savepoint); only on a unique violation does
the chunk roll back to the savepoint, look up which ids exist already, move those rows to quarantine
(``transaction_id_duplicate``, naming the other source) and COPY the rest. Repeats of an id of the
previous chunk of the same source are quarantined before the COPY (see ``_drop_repeats``), as that slow
path costs far more than checking.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Generic, Literal, TypeVar

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from pgpq import ArrowToPostgresBinaryEncoder
from psycopg import sql

from rtml.config import IngestSettings
from rtml.ingest.errors import IngestError, TransientDatabaseError
from rtml.ingest.tables import (
    LABELS_QUARANTINE_TABLE,
    LABELS_TABLE,
    LOADS_TABLE,
    TRANSACTIONS_QUARANTINE_TABLE,
    TRANSACTIONS_TABLE,
    ensure_tables,
)
from rtml.ingest.validation import (
    LABELS_QUARANTINE,
    TRANSACTIONS_QUARANTINE,
    Validated,
    quarantine_rows,
    validate_labels,
    validate_transactions,
)
from rtml.sources.schema import LABELS, TRANSACTIONS

__all__ = [
    "IngestError",
    "LoadResult",
    "TransientDatabaseError",
    "delete_source",
    "load_labels",
    "load_transactions",
]

_CSV_OPTIONS = pacsv.WriteOptions(include_header=False, batch_size=8192)
_FIRST_CHUNK_ROWS = 25_000
_MAX_CONFLICT_ROUNDS = 5  # each round removes the conflicts seen; more means concurrent writers of the ids


@dataclass(frozen=True)
class LoadResult:
    rows_read: int
    rows_loaded: int
    rows_quarantined: int
    quarantine_by_rule: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def __str__(self) -> str:
        rate = self.rows_read / self.seconds if self.seconds else 0.0
        return (
            f"{self.rows_read} rows read, {self.rows_loaded} loaded, {self.rows_quarantined} quarantined "
            f"{dict(self.quarantine_by_rule)} in {self.seconds:.2f} s ({rate:,.0f} rows/s)"
        )


@dataclass(frozen=True)
class _Target:
    """What differs between the two streams."""

    what: str  # also the ``kind`` in raw.loads
    table: str
    quarantine_table: str
    record: pa.Schema
    quarantine: pa.Schema
    validate: Callable[..., Validated]
    # Which existing rows conflict with an incoming id: transactions' key is the id alone, labels' key
    # is (id, source) so only the same source (an earlier chunk of this load) can conflict.
    conflict_scope: sql.Composable
    time_column: str  # BRIN-indexed; its range per source is logged in raw.loads


TRANSACTIONS_TARGET = _Target(
    "transactions",
    TRANSACTIONS_TABLE,
    TRANSACTIONS_QUARANTINE_TABLE,
    TRANSACTIONS,
    TRANSACTIONS_QUARANTINE,
    validate_transactions,
    sql.SQL("true"),
    "event_ts",
)
LABELS_TARGET = _Target(
    "labels",
    LABELS_TABLE,
    LABELS_QUARANTINE_TABLE,
    LABELS,
    LABELS_QUARANTINE,
    validate_labels,
    sql.SQL("existing.source = {}").format(sql.Placeholder("source")),
    "label_ts",
)
_TARGETS = {target.what: target for target in (TRANSACTIONS_TARGET, LABELS_TARGET)}


def load_transactions(
    conn_or_url: psycopg.Connection | str,
    batches: Iterable[pa.Table],
    source: str,
    ingest: IngestSettings,
    *,
    reader_rejects: list[pa.Table] | None = None,
    now: datetime | None = None,
) -> LoadResult:
    """Replace source ``source`` in ``raw.transactions`` (and its quarantine) with ``batches``.

    ``reader_rejects``: quarantine rows (TRANSACTIONS_QUARANTINE schema) that the reader produced while
    the batches were consumed (e.g. truncated CSV lines); read after the last batch and loaded with the
    rest. With a connection, an already open transaction of the caller is not committed here.
    ``now``: the load time validation measures "in the future" against (default: the clock); a
    reproducible load (tests, the DVC pipeline) passes its own, so it does not depend on the day it runs.
    """
    return _load(TRANSACTIONS_TARGET, conn_or_url, batches, source, ingest, reader_rejects, now)


def load_labels(
    conn_or_url: psycopg.Connection | str,
    batches: Iterable[pa.Table],
    source: str,
    ingest: IngestSettings,
    *,
    reader_rejects: list[pa.Table] | None = None,
    now: datetime | None = None,
) -> LoadResult:
    """Replace source ``source`` in ``raw.labels`` (and its quarantine) with ``batches``. ``now``: as for
    :func:`load_transactions`."""
    return _load(LABELS_TARGET, conn_or_url, batches, source, ingest, reader_rejects, now)


# --- the load ------------------------------------------------------------------------------------------
@dataclass
class _Chunk:
    batch: pa.Table  # as read: original values for quarantine
    validated: Validated
    good_copy: list[bytes]  # good rows + source as one complete binary COPY stream
    row_offset: int
    min_ts: datetime | None  # time range of the good rows (null if none)
    max_ts: datetime | None


def _load(
    target: _Target,
    conn_or_url: psycopg.Connection | str,
    batches: Iterable[pa.Table],
    source: str,
    ingest: IngestSettings,
    reader_rejects: list[pa.Table] | None,
    now: datetime | None = None,
) -> LoadResult:
    started = time.perf_counter()
    rows_read = rows_loaded = 0
    by_rule: Counter[str] = Counter()
    min_ts: datetime | None = None
    max_ts: datetime | None = None
    try:
        with _connection(conn_or_url) as conn:
            ensure_tables(conn)
            with conn.transaction():
                _replace_source(conn, target, source)
                chunks = _prepare(target, batches, source, ingest, now)
                for chunk in _in_background(chunks):
                    loaded, conflicts = _copy_good(conn, target, chunk, source)
                    quarantined = pa.concat_tables(
                        [t for t in (chunk.validated.quarantined, *conflicts) if t.num_rows]
                        or [chunk.validated.quarantined]
                    )
                    _copy_quarantine(conn, target, quarantined, source)
                    rows_read += chunk.batch.num_rows
                    rows_loaded += loaded
                    by_rule.update(_count_rules(quarantined))
                    if chunk.min_ts is not None and chunk.max_ts is not None:
                        min_ts = chunk.min_ts if min_ts is None else min(min_ts, chunk.min_ts)
                        max_ts = chunk.max_ts if max_ts is None else max(max_ts, chunk.max_ts)
                if reader_rejects:
                    rejects = pa.concat_tables(reader_rejects)
                    _copy_quarantine(conn, target, rejects, source)
                    rows_read += rejects.num_rows
                    by_rule.update(_count_rules(rejects))
                _log_load(conn, target, source, (min_ts, max_ts), rows_read, rows_loaded, by_rule.total())
    except psycopg.OperationalError as error:
        raise TransientDatabaseError(
            f"Loading {target.what} source {source!r} into {target.table} hit a transient database error "
            f"(rolled back, safe to retry): {error}"
        ) from error
    except psycopg.Error as error:
        raise IngestError(
            f"Loading {target.what} source {source!r} into {target.table} failed (rolled back): "
            f"{type(error).__name__}: {error}"
        ) from error
    return LoadResult(
        rows_read=rows_read,
        rows_loaded=rows_loaded,
        rows_quarantined=sum(by_rule.values()),
        quarantine_by_rule=dict(sorted(by_rule.items())),
        seconds=time.perf_counter() - started,
    )


@contextmanager
def _connection(conn_or_url: psycopg.Connection | str) -> Iterator[psycopg.Connection]:
    if isinstance(conn_or_url, psycopg.Connection):
        with _canceled_when_interrupted(conn_or_url):
            yield conn_or_url
        return
    # autocommit: conn.transaction() then means BEGIN ... COMMIT rather than an implicit transaction.
    with psycopg.connect(conn_or_url, autocommit=True) as conn, _canceled_when_interrupted(conn):
        yield conn


@contextmanager
def _canceled_when_interrupted(conn: psycopg.Connection) -> Iterator[None]:
    """A stop (Dagster's ``DagsterExecutionInterruptedError`` when a run is terminated, SystemExit) that
    arrives while the server executes a statement cancels that statement, as psycopg does for Ctrl-C
    only: else the backend kept waiting on its lock, or deleting, after the run had ended. The stop itself
    propagates unchanged (it is not a database error: never retried)."""
    try:
        yield
    except Exception:
        raise
    except BaseException:
        if conn.info.transaction_status == psycopg.pq.TransactionStatus.ACTIVE:
            with suppress(psycopg.Error):
                conn.cancel_safe(timeout=5.0)
        raise


def delete_source(conn: psycopg.Connection, kind: str, source: str) -> None:
    """Remove everything source ``source`` of ``kind`` ('transactions' | 'labels') loaded, and its log row.

    Runs in the caller's transaction if one is open (else its own)."""
    target = _TARGETS[kind]
    with conn.transaction():
        _replace_source(conn, target, source)
        conn.execute(
            sql.SQL("DELETE FROM {} WHERE kind = %s AND source = %s").format(_ident(LOADS_TABLE)),
            (target.what, source),
        )


def _replace_source(conn: psycopg.Connection, target: _Target, source: str) -> None:
    # A load is reported done (landing file moved, run successful) as soon as it commits, so the commit
    # must be durable: never under `synchronous_commit = off` (a session's or the server's), which
    # acknowledges before the WAL is flushed, and a crash right after would lose the load. A stronger
    # setting (`remote_apply` with a standby) is kept.
    conn.execute(
        "SELECT set_config('synchronous_commit', 'on', true) "
        "WHERE current_setting('synchronous_commit') = 'off'"
    )
    # Two loads of the same source would otherwise interleave their deletes and inserts.
    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"{target.table}:{source}",))
    # The previous load's time range bounds its rows: the delete is a BRIN bitmap scan of that range,
    # not a scan of the whole table (there is no index on source). Never loaded / no rows: nothing.
    previous = conn.execute(
        sql.SQL("SELECT min_ts, max_ts FROM {} WHERE kind = %s AND source = %s").format(_ident(LOADS_TABLE)),
        (target.what, source),
    ).fetchone()
    if previous is not None and previous[0] is not None:
        conn.execute(
            sql.SQL("DELETE FROM {} WHERE source = %s AND {} BETWEEN %s AND %s").format(
                _ident(target.table), sql.Identifier(target.time_column)
            ),
            (source, previous[0], previous[1]),
        )
    conn.execute(  # quarantine tables are small and keep their source index
        sql.SQL("DELETE FROM {} WHERE source = %s").format(_ident(target.quarantine_table)), (source,)
    )


def _log_load(
    conn: psycopg.Connection,
    target: _Target,
    source: str,
    time_range: tuple[datetime | None, datetime | None],
    rows_read: int,
    rows_loaded: int,
    rows_quarantined: int,
) -> None:
    """Upsert the load's row in raw.loads (same transaction as the load, so the range is exact)."""
    conn.execute(
        sql.SQL(
            "INSERT INTO {} AS l (kind, source, min_ts, max_ts, rows_read, rows_loaded, rows_quarantined) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (kind, source) DO UPDATE SET "
            "min_ts = excluded.min_ts, max_ts = excluded.max_ts, rows_read = excluded.rows_read, "
            "rows_loaded = excluded.rows_loaded, rows_quarantined = excluded.rows_quarantined, "
            "loaded_at = now()"
        ).format(_ident(LOADS_TABLE)),
        (target.what, source, *time_range, rows_read, rows_loaded, rows_quarantined),
    )


def _prepare(
    target: _Target, batches: Iterable[pa.Table], source: str, ingest: IngestSettings, now: datetime | None
) -> Iterator[_Chunk]:
    """Validate and serialize chunk by chunk (runs in the background thread)."""
    now = now or datetime.now(UTC)
    offset = 0
    chunk_rows = max(1, ingest.chunk_rows)
    # The server idles until the first chunk is validated and encoded (0.16 s for 200,000 rows): start
    # small and double up to chunk_rows, so it starts copying after about 20 ms, and each next chunk is
    # ready about when the server has copied the one before (preparation runs at about 1 M rows/s, the
    # COPY into the indexed table at about 0.6 M rows/s). Measured: 5 % less time per 1 M rows.
    step = min(chunk_rows, _FIRST_CHUNK_ROWS)
    previous_ids: pa.Array | None = None
    for batch in batches:
        start = 0
        while start == 0 or start < batch.num_rows:
            part = batch.slice(start, step)
            validated = target.validate(part, ingest, now=now, row_offset=offset)
            validated = _drop_repeats(target, part, validated, previous_ids, offset)
            previous_ids = validated.good["transaction_id"].combine_chunks()
            bounds = pc.min_max(validated.good[target.time_column]).as_py()
            yield _Chunk(
                part,
                validated,
                _binary_with_source(validated.good, source),
                offset,
                bounds["min"],
                bounds["max"],
            )
            offset += part.num_rows
            start += max(part.num_rows, 1)
            step = min(chunk_rows, 2 * step)


def _drop_repeats(
    target: _Target, part: pa.Table, validated: Validated, previous_ids: pa.Array | None, row_offset: int
) -> Validated:
    """Quarantine good rows whose id is among the previous chunk's good rows (same source, first kept).

    Validation only sees one chunk, and the primary key catches the rest, but each unique violation
    costs a rolled-back COPY plus a lookup of the whole chunk's ids (measured about 0.15 s each, several
    per 1M simulator rows, whose duplicates copy an id from the same hour). Re-sent rows sit close
    together in time-ordered sources, so checking the previous chunk (bounded memory) avoids most of them.
    """
    good = validated.good
    if previous_ids is None or len(previous_ids) == 0 or good.num_rows == 0:
        return validated
    ids = good["transaction_id"].combine_chunks()
    hit = np.asarray(pc.is_in(ids, value_set=previous_ids).to_numpy(zero_copy_only=False), dtype=bool)
    if not hit.any():
        return validated
    errors = pc.binary_join_element_wise(
        pa.scalar("transaction_id '"),
        ids.filter(pa.array(hit)),
        pa.scalar("' appears earlier in the same source; the first copy was kept"),
        "",
    )
    repeats = quarantine_rows(
        part, target.record, validated.good_rows[hit], row_offset, "transaction_id_duplicate", errors
    )
    return Validated(
        good.filter(pa.array(~hit)),
        pa.concat_tables([validated.quarantined, repeats]),
        validated.good_rows[~hit],
    )


def _csv_with_source(table: pa.Table, source: str) -> pa.Buffer:
    # pyarrow 25's CSV writer emits NUL bytes for a table whose first chunk is empty (as after
    # concat_tables([empty, rows])): write contiguous columns (a no-op for single-chunk tables).
    table = table.combine_chunks()
    with_source = table.append_column("source", pa.repeat(pa.scalar(source), table.num_rows))
    sink = pa.BufferOutputStream()
    pacsv.write_csv(with_source, sink, _CSV_OPTIONS)
    return sink.getvalue()


def _binary_with_source(table: pa.Table, source: str) -> list[bytes]:
    """``table`` + a ``source`` column as a binary COPY stream (header, rows, trailer).

    pgpq encodes from the Arrow types: string -> text, float64 -> float8, bool -> bool, and
    timestamp[us, UTC] as microseconds since 2000-01-01 UTC, which is the binary form of timestamptz as
    well as timestamp (binary COPY carries no type per field; the table's column types decide). The
    record schemas match the raw tables' column types one to one (tests round-trip them).
    """
    with_source = table.append_column("source", pa.repeat(pa.scalar(source), table.num_rows))
    encoder = ArrowToPostgresBinaryEncoder(with_source.schema)
    return [
        encoder.write_header(),
        *(encoder.write_batch(batch) for batch in with_source.to_batches()),
        encoder.finish(),
    ]


def _copy_good(
    conn: psycopg.Connection, target: _Target, chunk: _Chunk, source: str
) -> tuple[int, list[pa.Table]]:
    """COPY the chunk's good rows; returns (rows loaded, quarantine tables of cross-source conflicts)."""
    good = chunk.validated.good
    keep = np.arange(good.num_rows)  # positions in `good` still to load
    payload = chunk.good_copy
    conflicts: list[pa.Table] = []
    for _ in range(_MAX_CONFLICT_ROUNDS):
        if len(keep) == 0:
            return 0, conflicts
        try:
            with conn.transaction():  # savepoint: a unique violation costs only this chunk's COPY
                _copy(conn, target.table, [*target.record.names, "source"], payload, "binary")
            return len(keep), conflicts
        except psycopg.errors.UniqueViolation:
            pass
        # Slow path: which of these ids exist already, and under which source?
        ids = pc.take(good["transaction_id"], pa.array(keep))
        existing_ids, existing_sources = _existing(conn, target, ids, source)
        hit = pc.fill_null(pc.is_in(ids, existing_ids), False).to_numpy(zero_copy_only=False)
        if not hit.any():
            raise IngestError(
                f"COPY into {target.table} raised a unique violation, but none of the ids exists: "
                "a concurrent writer?"
            )
        hit_positions = keep[hit]
        hit_ids = pc.take(good["transaction_id"], pa.array(hit_positions))
        other_source = pc.take(existing_sources, pc.index_in(hit_ids, existing_ids))
        errors = pc.binary_join_element_wise(
            pa.scalar("transaction_id '"),
            hit_ids,
            pa.scalar("' is already loaded from source '"),
            other_source,
            pa.scalar("'"),
            "",
        )
        batch_rows = chunk.validated.good_rows[hit_positions]
        conflicts.append(
            quarantine_rows(
                chunk.batch, target.record, batch_rows, chunk.row_offset, "transaction_id_duplicate", errors
            )
        )
        keep = keep[~hit]
        payload = _binary_with_source(good.take(pa.array(keep)), source)
    raise IngestError(
        f"Loading {target.what} source {source!r}: ids kept conflicting after {_MAX_CONFLICT_ROUNDS} "
        f"rounds; is another process loading the same ids into {target.table}? Rerun the load."
    )


def _existing(
    conn: psycopg.Connection, target: _Target, ids: pa.Array, source: str
) -> tuple[pa.Array, pa.Array]:
    """(ids, sources) of rows in the target table that share an id with ``ids``."""
    conn.execute(  # same collation as the key, so the join can use the primary key index
        'CREATE TEMP TABLE IF NOT EXISTS rtml_incoming_ids (transaction_id text COLLATE "C") ON COMMIT DROP'
    )
    conn.execute("TRUNCATE rtml_incoming_ids")
    sink = pa.BufferOutputStream()
    pacsv.write_csv(pa.table({"transaction_id": ids}), sink, _CSV_OPTIONS)
    _copy(conn, "rtml_incoming_ids", ["transaction_id"], [sink.getvalue()], "csv")
    query = sql.SQL(
        "SELECT existing.transaction_id, existing.source FROM {} AS existing "
        "JOIN rtml_incoming_ids USING (transaction_id) WHERE {}"
    ).format(_ident(target.table), target.conflict_scope)
    rows = conn.execute(query, {"source": source}).fetchall()
    return pa.array([r[0] for r in rows], pa.string()), pa.array([r[1] for r in rows], pa.string())


def _copy_quarantine(conn: psycopg.Connection, target: _Target, quarantined: pa.Table, source: str) -> None:
    if quarantined.num_rows == 0:
        return
    _copy(
        conn,
        target.quarantine_table,
        [*quarantined.column_names, "source"],
        [_csv_with_source(_escape_nul(quarantined), source)],
        "csv",
    )


def _escape_nul(table: pa.Table) -> pa.Table:
    """PostgreSQL text cannot hold NUL: quarantined values (kept as they came) write it as ``\\x00``."""
    columns = [
        pc.replace_substring(column, "\x00", "\\x00") if pa.types.is_string(column.type) else column
        for column in table.columns
    ]
    return pa.Table.from_arrays(columns, schema=table.schema)


def _copy(
    conn: psycopg.Connection,
    table: str,
    columns: list[str],
    payload: Iterable[bytes | pa.Buffer],
    format: Literal["csv", "binary"],
) -> None:
    """One COPY of ``payload``: the parts of one complete stream in ``format``."""
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT {})").format(
        _ident(table), sql.SQL(", ").join(map(sql.Identifier, columns)), sql.SQL(format)
    )
    with conn.cursor() as cursor, cursor.copy(statement) as copy:
        for part in payload:
            copy.write(memoryview(part))


def _ident(name: str) -> sql.Identifier:
    return sql.Identifier(*name.split("."))


def _count_rules(quarantined: pa.Table) -> Counter[str]:
    if quarantined.num_rows == 0:
        return Counter()
    counts = pc.value_counts(quarantined["rule"].combine_chunks())
    return Counter({str(item["values"]): int(item["counts"]) for item in counts.to_pylist()})


# --- background preparation ----------------------------------------------------------------------------
T = TypeVar("T")


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


class _Done:
    pass


class _Background(Generic[T]):
    """Runs an iterator in a thread, one item ahead of the consumer (bounded memory)."""

    def __init__(self, items: Iterator[T], depth: int = 1):
        self._items = items
        self._queue: queue.Queue[T | _Failed | _Done] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rtml-ingest-prepare", daemon=True)

    def _put(self, item: T | _Failed | _Done) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self._items:
                if not self._put(item):
                    return
            self._put(_Done())
        except BaseException as error:
            self._put(_Failed(error))

    def __iter__(self) -> Iterator[T]:
        self._thread.start()
        try:
            while True:
                item = self._queue.get()
                if isinstance(item, _Done):
                    return
                if isinstance(item, _Failed):
                    raise item.error
                yield item
        finally:
            self._stop.set()
            self._thread.join()


def _in_background(items: Iterator[T]) -> Iterator[T]:
    return iter(_Background(items))
