"""Landing folder: files end in processed/ or rejected/ with a receipt, never lost or changed."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from rtml.config import Settings
from rtml.sources.landing import Receipt, ingest_landing_file, list_landing_files
from rtml.sources.schema import TRANSACTIONS

T0 = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = Settings(data_dir=tmp_path)
    settings.landing_dir.mkdir(parents=True)
    return settings


def transactions(n: int, prefix: str) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "transaction_id": f"{prefix}-{i}",
                "event_ts": T0 + timedelta(minutes=i),
                "customer_id": f"c{i}",
                "merchant_id": "m1",
                "merchant_category": "travel",
                "amount": 5.0 + i,
                "currency": "USD",
                "channel": "online",
                "country": "US",
            }
            for i in range(n)
        ],
        schema=TRANSACTIONS,
    )


def csv_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pacsv.write_csv(table, sink)
    return sink.getvalue().to_pybytes()


def drop(settings: Settings, suffix: str, content: bytes, prefix: str = "") -> Path:
    path = settings.landing_dir / f"{prefix}{uuid.uuid4().hex[:10]}{suffix}"
    path.write_bytes(content)
    return path


def db_count(database_url: str, table: str, source: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table} WHERE source = %s", (source,)).fetchone()
        assert row is not None
        return int(row[0])


def check_receipt(receipt: Receipt, settings: Settings, status: str, content: bytes) -> dict[str, object]:
    folder = "processed" if status == "processed" else "rejected"
    moved = settings.landing_dir / folder / receipt.file
    assert receipt.status == status
    assert Path(receipt.moved_to) == moved
    assert moved.read_bytes() == content  # kept byte-identical, never deleted
    assert not (settings.landing_dir / receipt.file).exists()
    saved = json.loads(receipt.path.read_text())
    assert receipt.path == moved.with_name(moved.name + ".receipt.json")
    assert saved["status"] == status and saved["file"] == receipt.file
    assert saved["started_at"] and saved["finished_at"]
    return saved


def test_good_csv_is_loaded_and_moved(settings: Settings, database_url: str) -> None:
    content = csv_bytes(transactions(25, uuid.uuid4().hex))
    path = drop(settings, ".csv", content)
    assert list_landing_files(settings) == [path]
    receipt = ingest_landing_file(path, database_url, settings)
    saved = check_receipt(receipt, settings, "processed", content)
    assert saved["rows_read"] == saved["rows_loaded"] == 25 and saved["errors"] == []
    assert db_count(database_url, "raw.transactions", path.name) == 25
    assert list_landing_files(settings) == []


def test_good_parquet_is_loaded_and_moved(settings: Settings, database_url: str) -> None:
    path = settings.landing_dir / f"{uuid.uuid4().hex[:10]}.parquet"
    pq.write_table(transactions(30, uuid.uuid4().hex), path)
    content = path.read_bytes()
    receipt = ingest_landing_file(path, database_url, settings)
    check_receipt(receipt, settings, "processed", content)
    assert (receipt.rows_loaded, receipt.rows_quarantined) == (30, 0)
    assert db_count(database_url, "raw.transactions", path.name) == 30


def test_bad_rows_in_a_file_are_quarantined_not_rejected(settings: Settings, database_url: str) -> None:
    content = csv_bytes(transactions(3, uuid.uuid4().hex)).replace(b",5,", b",five,", 1)
    path = drop(settings, ".csv", content)
    receipt = ingest_landing_file(path, database_url, settings)
    check_receipt(receipt, settings, "processed", content)
    assert receipt.quarantine_by_rule == {"amount_unparseable": 1}
    assert db_count(database_url, "raw.transactions_quarantine", path.name) == 1


def test_labels_file_goes_to_labels(settings: Settings, database_url: str) -> None:
    content = b"transaction_id,is_fraud,label_ts,label_source\nx1,true,2026-11-02T00:00:00Z,chargeback\n"
    path = drop(settings, ".csv", content, prefix="labels_")
    receipt = ingest_landing_file(path, database_url, settings)
    check_receipt(receipt, settings, "processed", content)
    assert receipt.kind == "labels" and receipt.rows_loaded == 1
    assert db_count(database_url, "raw.labels", path.name) == 1


def test_truncated_last_line_is_quarantined_and_the_rest_loads(settings: Settings, database_url: str) -> None:
    content = csv_bytes(transactions(10, uuid.uuid4().hex))
    content = content[: content.rstrip(b"\n").rfind(b",", 0, len(content) - 40)]  # cut inside the last line
    path = drop(settings, ".csv", content)
    receipt = ingest_landing_file(path, database_url, settings)
    check_receipt(receipt, settings, "processed", content)
    assert (receipt.rows_read, receipt.rows_loaded) == (10, 9)
    assert receipt.quarantine_by_rule == {"row_truncated": 1}
    with psycopg.connect(database_url) as conn:
        [(rule, error, raw_record, source_row)] = conn.execute(
            "SELECT rule, error, raw_record, source_row FROM raw.transactions_quarantine WHERE source = %s",
            (path.name,),
        ).fetchall()
    last_line = content.rsplit(b"\n", 1)[1].decode()
    assert (rule, raw_record, source_row) == ("row_truncated", last_line, 9)
    assert "line 11" in error


def rejected(settings: Settings, database_url: str, content: bytes, suffix: str = ".csv") -> Receipt:
    path = drop(settings, suffix, content)
    receipt = ingest_landing_file(path, database_url, settings)
    saved = check_receipt(receipt, settings, "rejected", content)
    assert saved["rows_loaded"] == 0 and len(saved["errors"]) == 1  # type: ignore[arg-type]
    assert db_count(database_url, "raw.transactions", path.name) == 0
    assert db_count(database_url, "raw.transactions_quarantine", path.name) == 0
    return receipt


def test_wrong_delimiter_is_rejected(settings: Settings, database_url: str) -> None:
    content = csv_bytes(transactions(3, uuid.uuid4().hex)).replace(b",", b";")
    [error] = rejected(settings, database_url, content).errors
    assert "missing column(s)" in error and "delimited by ';'" in error


def test_missing_column_is_rejected(settings: Settings, database_url: str) -> None:
    content = csv_bytes(transactions(3, uuid.uuid4().hex).drop_columns(["currency"]))
    [error] = rejected(settings, database_url, content).errors
    assert "missing column(s) ['currency']" in error and "Expected exactly the columns" in error


def test_undecodable_bytes_are_rejected(settings: Settings, database_url: str) -> None:
    content = csv_bytes(transactions(3, uuid.uuid4().hex)).replace(b"travel", b"trav\xe9l", 1)
    [error] = rejected(settings, database_url, content).errors
    assert "not valid UTF-8 (first at line 2)" in error and "iconv" in error


def test_empty_file_is_rejected(settings: Settings, database_url: str) -> None:
    [error] = rejected(settings, database_url, b"").errors
    assert "is empty (0 bytes)" in error


def test_unreadable_parquet_is_rejected(settings: Settings, database_url: str) -> None:
    [error] = rejected(settings, database_url, b"PAR1 not really", suffix=".parquet").errors
    assert "not a readable Parquet file" in error


def test_listing_ignores_hidden_and_other_files(settings: Settings) -> None:
    (settings.landing_dir / ".partial.csv").write_text("x")
    (settings.landing_dir / "notes.txt").write_text("x")
    (settings.landing_dir / "b.parquet").write_text("x")
    (settings.landing_dir / "a.CSV").write_text("x")
    assert [p.name for p in list_landing_files(settings)] == ["a.CSV", "b.parquet"]
