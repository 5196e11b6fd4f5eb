"""Ingestion throughput: validation + COPY through ``load_transactions`` vs plain COPY of the same rows.

    .venv/bin/python benchmarks/ingest.py --rows 1000000

Uses RTML_DATABASE_URL if set, else starts the local stack (``LocalStack(get_settings()).up()``).
The rows are generated once (simulator, ~0.2 % deliberately dirty rows), kept in memory, and their ids
get a ``bench-`` prefix so they never collide with partitions the platform itself loaded. Timed:
(a) ``load_transactions`` in streaming chunks of ``ingest_chunk_rows`` into ``raw.transactions``;
(b) the limit: the same binary COPY encoding (pgpq) COPYed without validation into an identical table
(``LIKE raw.transactions INCLUDING ALL``: same PK, collation and BRIN index); (c) for reference, (b) into
a table without any index, and (e) that COPY followed by building the same PK and BRIN index (what a
backfill into an unindexed table would pay); (d) for reference, (b) with pyarrow's CSV writer and
``FORMAT csv`` (the loader's encoding before binary COPY). (a) and (b) alternate ``--repeat`` times, so
that their ratio is taken side by side (best of each, and the worst pair's). The benchmark's rows are
deleted afterwards (``delete_source``),
and ``raw.transactions`` is compacted (``VACUUM FULL``, untimed) before each run, so that like the
TRUNCATEd baseline tables it starts without the dead space of the previous run (COPY into the free space
of 1M just-deleted rows measured 30-60 % slower here). The last line
of output is one JSON object.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from pgpq import ArrowToPostgresBinaryEncoder

from _machine import json_line, load_average
from rtml.config import Settings, get_settings
from rtml.ingest.loader import delete_source, load_transactions
from rtml.ingest.tables import ensure_tables
from rtml.ingest.validation import validate_transactions
from rtml.sources.scenarios import timeline_path
from rtml.sources.schema import TRANSACTIONS
from rtml.sources.simulator import Simulator

SIM_START = datetime(2026, 11, 1, tzinfo=UTC)

SOURCE = "benchmark"
PLAIN = "raw.bench_plain_copy"
PLAIN_NO_INDEX = "raw.bench_plain_copy_no_index"
INDEX_AFTER = "raw.bench_plain_copy_index_after"


def database_url(settings: Settings) -> str:
    if url := os.environ.get("RTML_DATABASE_URL"):
        return url
    from rtml.stack.local import LocalStack

    return LocalStack(settings).up().database_url


def generate(settings: Settings, rows: int) -> pa.Table:
    """At least ``rows`` simulator rows (whole days), cut to exactly ``rows``."""
    simulator = Simulator(settings.simulator, settings.ingest, timeline_path(settings.services))
    parts: list[pa.Table] = []
    day, have = settings.simulator.start, 0
    while have < rows:
        part = simulator.transactions(day, day + timedelta(days=1))
        parts.append(part)
        have += part.num_rows
        day += timedelta(days=1)
    table = pa.concat_tables(parts).slice(0, rows).combine_chunks()
    ids = pc.binary_join_element_wise(pa.scalar("bench-"), table["transaction_id"], "")
    return table.set_column(0, pa.field("transaction_id", pa.string(), nullable=False), ids)


def plain_copy(
    url: str, table: pa.Table, target: str, chunk_rows: int, fmt: str = "binary", then: str = ""
) -> float:
    """Seconds to COPY ``table`` (one COPY, no validation, encoded chunk by chunk) into ``target``, and
    to run the statements ``then`` in the same transaction.

    ``fmt``: "binary" (pgpq, as the loader) or "csv" (pyarrow's CSV writer)."""
    columns = ", ".join([*TRANSACTIONS.names, "source"])
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {target}")
        started = time.perf_counter()
        # committed durably (synchronous_commit on), as the loader does
        copy_sql = f"COPY {target} ({columns}) FROM STDIN (FORMAT {fmt})"
        with conn.transaction():
            _copy(conn, copy_sql, table, chunk_rows, fmt)
            if then:
                conn.execute(then)
        seconds = time.perf_counter() - started
        conn.execute(f"TRUNCATE {target}")
    return seconds


def _copy(conn: psycopg.Connection, copy_sql: str, table: pa.Table, chunk_rows: int, fmt: str) -> None:
    options = pacsv.WriteOptions(include_header=False, batch_size=8192)
    with conn.cursor().copy(copy_sql) as copy:
        encoder = None
        for start in range(0, table.num_rows, chunk_rows):
            chunk = table.slice(start, chunk_rows)
            chunk = chunk.append_column("source", pa.repeat(pa.scalar(SOURCE), chunk.num_rows))
            if fmt == "csv":
                sink = pa.BufferOutputStream()
                pacsv.write_csv(chunk, sink, options)
                copy.write(memoryview(sink.getvalue()))
                continue
            if encoder is None:
                encoder = ArrowToPostgresBinaryEncoder(chunk.schema)
                copy.write(encoder.write_header())
            for batch in chunk.to_batches():
                copy.write(encoder.write_batch(batch))
        if encoder is not None:
            copy.write(encoder.finish())


def best(repeat: int, run: Callable[[], float]) -> float:
    return min(run() for _ in range(repeat))


def alternating(
    repeat: int, first: Callable[[], float], second: Callable[[], float]
) -> list[tuple[float, float]]:
    """``repeat`` pairs of (first, second), run one after the other: a ratio within a pair compares the
    two under the same load."""
    return [(first(), second()) for _ in range(repeat)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk-rows", type=int, default=None, help="default: RTML_INGEST_CHUNK_ROWS")
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs of each measurement (the best is kept); pairs of (b) and (a)",
    )
    args = parser.parse_args()
    load_start = load_average()

    # the simulated days are pinned (SIM_START), not the platform's default start, which follows the day
    settings = get_settings().model_copy(
        update={"simulator": get_settings().simulator.model_copy(update={"start": SIM_START})}
    )
    if args.chunk_rows:
        settings = settings.model_copy(
            update={"ingest": settings.ingest.model_copy(update={"chunk_rows": args.chunk_rows})}
        )
    url = database_url(settings)
    print(f"database: {url}")
    started = time.perf_counter()
    table = generate(settings, args.rows)
    print(f"generated {table.num_rows:,} rows in {time.perf_counter() - started:.1f} s (not timed)")

    with psycopg.connect(url, autocommit=True) as conn:
        ensure_tables(conn)
        conn.execute(f"CREATE TABLE IF NOT EXISTS {PLAIN} (LIKE raw.transactions INCLUDING ALL)")
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {PLAIN_NO_INDEX} (LIKE raw.transactions INCLUDING DEFAULTS)"
        )
        delete_source(conn, "transactions", SOURCE)
        conn.execute("VACUUM FULL raw.transactions")

    results = []

    def ingest() -> float:
        result = load_transactions(url, [table], SOURCE, settings.ingest)
        results.append(result)
        # Leave the table as it was, so that a repeat measures the same work (untimed).
        with psycopg.connect(url, autocommit=True) as conn:
            delete_source(conn, "transactions", SOURCE)
            conn.execute("VACUUM FULL raw.transactions")
        return result.seconds

    chunk_rows = settings.ingest.chunk_rows
    # The simulator's dirty rows include duplicate ids, which a plain COPY cannot take: the baseline
    # copies the rows that validation accepts (about 99.8 %), validated here untimed.
    clean = validate_transactions(table, settings.ingest).good
    pairs = alternating(args.repeat, lambda: plain_copy(url, clean, PLAIN, chunk_rows), ingest)
    plain_seconds, ingest_seconds = min(p for p, _ in pairs), min(i for _, i in pairs)
    no_index_seconds = best(args.repeat, lambda: plain_copy(url, clean, PLAIN_NO_INDEX, chunk_rows))

    def copy_then_index() -> float:
        with psycopg.connect(url, autocommit=True) as conn:  # a new table without indexes (untimed)
            conn.execute(f"DROP TABLE IF EXISTS {INDEX_AFTER}")
            conn.execute(f"CREATE TABLE {INDEX_AFTER} (LIKE raw.transactions INCLUDING DEFAULTS)")
        index_after = (  # the indexes of raw.transactions (rtml/ingest/tables.py), built once the rows are in
            f"ALTER TABLE {INDEX_AFTER} ADD PRIMARY KEY (transaction_id); "
            f"CREATE INDEX ON {INDEX_AFTER} USING brin (event_ts)"
        )
        return plain_copy(url, clean, INDEX_AFTER, chunk_rows, then=index_after)

    index_after_seconds = best(args.repeat, copy_then_index)
    csv_seconds = best(args.repeat, lambda: plain_copy(url, clean, PLAIN, chunk_rows, "csv"))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {PLAIN}, {PLAIN_NO_INDEX}, {INDEX_AFTER}")

    result = results[-1]
    rows = table.num_rows
    ingest_rate, plain_rate = rows / ingest_seconds, clean.num_rows / plain_seconds
    # rows/s ratio of each pair: the loader's rows read against the plain COPY's rows written
    pair_ratios = [(rows / i) / (clean.num_rows / p) for p, i in pairs]
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(
        f"load_transactions: {ingest_rate:,.0f} rows/s ({ingest_seconds:.2f} s, best): "
        f"{result.rows_loaded:,} loaded, {result.rows_quarantined:,} quarantined {result.quarantine_by_rule}"
    )
    print(
        f"plain COPY (same binary encoding, same indexes): {plain_rate:,.0f} rows/s ({plain_seconds:.2f} s)"
    )
    print(
        f"plain COPY, no indexes: {clean.num_rows / no_index_seconds:,.0f} rows/s ({no_index_seconds:.2f} s)"
    )
    print(
        f"plain COPY, no indexes, then the PK and BRIN index built: "
        f"{clean.num_rows / index_after_seconds:,.0f} rows/s ({index_after_seconds:.2f} s)"
    )
    print(
        f"plain COPY as CSV, same indexes: {clean.num_rows / csv_seconds:,.0f} rows/s ({csv_seconds:.2f} s)"
    )
    print(
        f"ratio ingest / plain: {ingest_rate / plain_rate:.2f} (best of each); pairs: "
        f"{', '.join(f'{r:.2f}' for r in pair_ratios)}; peak RSS {peak_rss_mib:,.0f} MiB"
    )
    print(
        json_line(
            {
                "rows": rows,
                "chunk_rows": chunk_rows,
                "ingest_rows_per_s": round(ingest_rate),
                "plain_copy_rows_per_s": round(plain_rate),
                "plain_copy_no_index_rows_per_s": round(clean.num_rows / no_index_seconds),
                "plain_copy_then_index_rows_per_s": round(clean.num_rows / index_after_seconds),
                "plain_copy_csv_rows_per_s": round(clean.num_rows / csv_seconds),
                "ratio": round(ingest_rate / plain_rate, 3),
                "ratio_worst_pair": round(min(pair_ratios), 3),
                "rows_loaded": result.rows_loaded,
                "rows_quarantined": result.rows_quarantined,
                "peak_rss_mib": round(peak_rss_mib, 1),
                "ingest_seconds": round(ingest_seconds, 3),
                "plain_copy_seconds": round(plain_seconds, 3),
            },
            load_start,
        )
    )


if __name__ == "__main__":
    main()
