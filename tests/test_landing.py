"""Landing folder: files end in processed/ or rejected/ with a receipt, never lost or changed; only
plain, complete, regular files of the folder are read; the sensor requests one run per drop."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from rtml.config import ServicesSettings, Settings, get_settings
from rtml.ingest.landing import (
    LandingFileChanged,
    Receipt,
    UnsafeLandingName,
    ingest_landing_file,
    landing_path,
    list_landing_files,
)
from rtml.sources.schema import TRANSACTIONS
from rtml.stack.local import StackInfo
from tests.code_location import code_location
from tests.isolation import TEST_NOW

T0 = datetime(2026, 11, 1, tzinfo=UTC)
NOW = TEST_NOW  # the load time passed in (after every event and label written here); Dagster runs' too


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = Settings(services=ServicesSettings(data_dir=tmp_path))
    settings.services.landing_dir.mkdir(parents=True)
    return settings


def transactions(n: int, prefix: str, start: datetime = T0) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "transaction_id": f"{prefix}-{i}",
                "event_ts": start + timedelta(minutes=i),
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
    path = settings.services.landing_dir / f"{prefix}{uuid.uuid4().hex[:10]}{suffix}"
    path.write_bytes(content)
    return path


def db_count(database_url: str, table: str, source: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table} WHERE source = %s", (source,)).fetchone()
        assert row is not None
        return int(row[0])


def check_receipt(receipt: Receipt, settings: Settings, status: str, content: bytes) -> dict[str, object]:
    folder = "processed" if status == "processed" else "rejected"
    moved = settings.services.landing_dir / folder / receipt.file
    assert receipt.status == status
    assert Path(receipt.moved_to) == moved
    assert moved.read_bytes() == content  # kept byte-identical, never deleted
    assert not (settings.services.landing_dir / receipt.file).exists()
    saved = json.loads(receipt.path.read_text())
    assert receipt.path == moved.with_name(moved.name + ".receipt.json")
    assert saved["status"] == status and saved["file"] == receipt.file
    assert saved["started_at"] and saved["finished_at"]
    return saved


def test_good_csv_is_loaded_and_moved(settings: Settings, database_url: str) -> None:
    content = csv_bytes(transactions(25, uuid.uuid4().hex))
    path = drop(settings, ".csv", content)
    assert list_landing_files(settings) == [path]
    receipt = ingest_landing_file(path.name, database_url, settings, now=NOW)
    saved = check_receipt(receipt, settings, "processed", content)
    assert saved["rows_read"] == saved["rows_loaded"] == 25 and saved["errors"] == []
    assert db_count(database_url, "raw.transactions", path.name) == 25
    assert list_landing_files(settings) == []


def test_good_parquet_is_loaded_and_moved(settings: Settings, database_url: str) -> None:
    path = settings.services.landing_dir / f"{uuid.uuid4().hex[:10]}.parquet"
    pq.write_table(transactions(30, uuid.uuid4().hex), path)
    content = path.read_bytes()
    receipt = ingest_landing_file(path.name, database_url, settings, now=NOW)
    check_receipt(receipt, settings, "processed", content)
    assert (receipt.rows_loaded, receipt.rows_quarantined) == (30, 0)
    assert db_count(database_url, "raw.transactions", path.name) == 30


def test_bad_rows_in_a_file_are_quarantined_not_rejected(settings: Settings, database_url: str) -> None:
    content = csv_bytes(transactions(3, uuid.uuid4().hex)).replace(b",5,", b",five,", 1)
    path = drop(settings, ".csv", content)
    receipt = ingest_landing_file(path.name, database_url, settings, now=NOW)
    check_receipt(receipt, settings, "processed", content)
    assert receipt.quarantine_by_rule == {"amount_unparseable": 1}
    assert db_count(database_url, "raw.transactions_quarantine", path.name) == 1


def test_labels_file_goes_to_labels(settings: Settings, database_url: str) -> None:
    content = b"transaction_id,is_fraud,label_ts,label_source\nx1,true,2026-11-02T00:00:00Z,chargeback\n"
    path = drop(settings, ".csv", content, prefix="labels_")
    receipt = ingest_landing_file(path.name, database_url, settings, now=NOW)
    check_receipt(receipt, settings, "processed", content)
    assert receipt.kind == "labels" and receipt.rows_loaded == 1
    assert db_count(database_url, "raw.labels", path.name) == 1


def test_truncated_last_line_is_quarantined_and_the_rest_loads(settings: Settings, database_url: str) -> None:
    content = csv_bytes(transactions(10, uuid.uuid4().hex))
    content = content[: content.rstrip(b"\n").rfind(b",", 0, len(content) - 40)]  # cut inside the last line
    path = drop(settings, ".csv", content)
    receipt = ingest_landing_file(path.name, database_url, settings, now=NOW)
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
    receipt = ingest_landing_file(path.name, database_url, settings, now=NOW)
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
    (settings.services.landing_dir / ".partial.csv").write_text("x")
    (settings.services.landing_dir / "partial.csv.part").write_text("x")
    (settings.services.landing_dir / "notes.txt").write_text("x")
    (settings.services.landing_dir / "b.parquet").write_text("x")
    (settings.services.landing_dir / "a.CSV").write_text("x")
    (settings.services.landing_dir / "folder.csv").mkdir()
    (settings.services.landing_dir / "c.csv").symlink_to(
        settings.services.landing_dir / "b.parquet"
    )  # listed, then rejected
    assert [p.name for p in list_landing_files(settings)] == ["a.CSV", "b.parquet", "c.csv"]


# --- what must never be read ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    [
        *("../outside.csv", "sub/x.csv", "/etc/passwd.csv", "..\\x.csv", ".hidden.csv", "..", "a...csv"),
        *("line\nbreak.csv", "nul\x00.csv", "x.txt", ""),
    ],
)
def test_names_that_are_not_plain_landing_files_are_refused(settings: Settings, name: str) -> None:
    with pytest.raises(UnsafeLandingName, match=r"is not a landing file name: .*nothing was read"):
        landing_path(settings, name)


def test_a_path_traversal_partition_key_fails_its_run_and_reads_nothing(
    settings: Settings, instance: dg.DagsterInstance, database_url: str
) -> None:
    """Any dynamic partition can be added through Dagster's API: the run of one naming a file outside the
    folder fails with the reason, and that file is neither read, loaded, moved nor given a receipt."""
    outside = settings.services.landing_dir.parent / f"{uuid.uuid4().hex[:10]}.csv"
    content = csv_bytes(transactions(3, uuid.uuid4().hex))
    outside.write_bytes(content)
    key = f"../{outside.name}"
    instance.add_dynamic_partitions("landing_files", [key])
    result = run_landing(instance, key, raise_on_error=False)
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.step_failure_data.error.message  # type: ignore[union-attr]
    assert f"'{key}' is not a landing file name: it contains a path separator" in message
    assert outside.read_bytes() == content
    assert (
        not (settings.services.landing_dir / "rejected").exists()
        and not (settings.services.landing_dir / "processed").exists()
    )
    assert db_count(database_url, "raw.transactions", key) == 0


def test_a_symbolic_link_is_rejected_and_its_target_never_read(settings: Settings, database_url: str) -> None:
    secret = settings.services.landing_dir.parent / "secret.csv"
    secret.write_bytes(csv_bytes(transactions(4, uuid.uuid4().hex)))
    link = settings.services.landing_dir / f"{uuid.uuid4().hex[:10]}.csv"
    link.symlink_to(secret)
    receipt = ingest_landing_file(link.name, database_url, settings, now=NOW)
    assert receipt.status == "rejected" and receipt.rows_read == 0 and receipt.sha256 == ""
    [error] = receipt.errors
    assert f"is a symbolic link (to '{secret}'); it was not followed or read" in error
    moved = settings.services.landing_dir / "rejected" / link.name
    assert moved.is_symlink() and os.readlink(moved) == str(secret)  # the link itself was moved
    assert db_count(database_url, "raw.transactions", link.name) == 0
    assert json.loads(receipt.path.read_text())["errors"] == [error]


def test_a_file_that_vanished_gets_a_rejected_receipt(settings: Settings, database_url: str) -> None:
    name = f"{uuid.uuid4().hex[:10]}.csv"
    receipt = ingest_landing_file(name, database_url, settings, now=NOW)
    assert receipt.status == "rejected" and receipt.moved_to == ""
    assert receipt.path == settings.services.landing_dir / "rejected" / f"{name}.receipt.json"
    saved = json.loads(receipt.path.read_text())
    assert saved["errors"] == [
        f"landing file {name} (transactions) vanished before it could be read "
        "(No such file or directory); nothing loaded."
    ]


def test_a_parquet_of_the_wrong_types(settings: Settings, database_url: str) -> None:
    """Columns the rules can read as text are validated row by row (an integer event_ts is quarantined);
    a column they cannot read at all (a list) rejects the file with the reader's error, never stays."""
    table = transactions(5, uuid.uuid4().hex)
    epoch = table.set_column(1, "event_ts", pa.array(range(5), pa.int64()))
    path = settings.services.landing_dir / f"{uuid.uuid4().hex[:10]}.parquet"
    pq.write_table(epoch, path)
    receipt = ingest_landing_file(path.name, database_url, settings, now=NOW)
    assert receipt.status == "processed"
    assert (receipt.rows_loaded, receipt.quarantine_by_rule) == (0, {"event_ts_unparseable": 5})

    lists = table.set_column(5, "amount", pa.array([[1, 2]] * 5, pa.list_(pa.int64())))
    path = settings.services.landing_dir / f"{uuid.uuid4().hex[:10]}.parquet"
    pq.write_table(lists, path)
    content = path.read_bytes()
    receipt = ingest_landing_file(path.name, database_url, settings, now=NOW)
    check_receipt(receipt, settings, "rejected", content)
    [error] = receipt.errors
    assert error.startswith(
        f"landing file {path.name} (transactions) could not be ingested: ArrowNotImplemented"
    )
    assert "Unsupported cast from list" in error and "Nothing was loaded" in error
    assert receipt.sha256 == hashlib.sha256(content).hexdigest()
    assert db_count(database_url, "raw.transactions", path.name) == 0


def test_control_bytes_and_a_huge_id_are_quarantined_and_the_rest_loads(
    settings: Settings, database_url: str
) -> None:
    prefix = uuid.uuid4().hex[:12]
    lines = csv_bytes(transactions(6, prefix)).split(b"\n")
    lines[1] = lines[1].replace(f"{prefix}-0".encode(), f"{prefix}\x00-0".encode())  # NUL in an id
    lines[2] = lines[2].replace(b'"c1"', b'"c\x011"')  # a control byte in customer_id
    lines[3] = lines[3].replace(f"{prefix}-2".encode(), b"h" * 100_000)  # a 100 kB id
    content = b"\n".join(lines)
    path = drop(settings, ".csv", content)
    receipt = ingest_landing_file(path.name, database_url, settings, now=NOW)
    check_receipt(receipt, settings, "processed", content)
    assert (receipt.rows_read, receipt.rows_loaded) == (6, 3)
    assert receipt.quarantine_by_rule == {"transaction_id_invalid": 2, "customer_id_invalid": 1}
    with psycopg.connect(database_url) as conn:
        kept = conn.execute(
            "SELECT source_row, transaction_id, customer_id, length(error) FROM raw.transactions_quarantine "
            "WHERE source = %s ORDER BY source_row",
            (path.name,),
        ).fetchall()
    assert [row[:3] for row in kept] == [
        (0, f"{prefix}\\x00-0", "c0"),
        (1, f"{prefix}-1", "c\x011"),
        (2, "h" * 100_000, "c2"),
    ]
    assert all(row[3] < 200 for row in kept)  # the message quotes at most 80 characters of a value


def test_content_other_than_requested_stays_in_the_folder(settings: Settings, database_url: str) -> None:
    content = csv_bytes(transactions(2, uuid.uuid4().hex))
    path = drop(settings, ".csv", content)
    with pytest.raises(LandingFileChanged, match="changed since its run was requested"):
        ingest_landing_file(path.name, database_url, settings, expected_sha256="0" * 64)
    assert path.read_bytes() == content and db_count(database_url, "raw.transactions", path.name) == 0
    receipt = ingest_landing_file(
        path.name, database_url, settings, expected_sha256=hashlib.sha256(content).hexdigest(), now=NOW
    )
    assert receipt.status == "processed" and receipt.rows_loaded == 2


# --- the sensor and the runs it requests (Dagster instance on PostgreSQL) --------------------------------
# The runs validate at the session's world time (TEST_NOW, tests/conftest.py), like the direct loads above.
@pytest.fixture(scope="module")
def instance(stack: StackInfo) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_config(str(stack.dagster_home))


@pytest.fixture
def platform_landing(settings: Settings) -> Iterator[Settings]:
    """The platform's settings with the test's landing folder and a 1 s settle time (the sensor and the
    asset read ``get_settings()``)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RTML_DATA_DIR", str(settings.services.data_dir))
        patch.setenv("RTML_LANDING_SETTLE_SECONDS", "1")
        get_settings.cache_clear()
        yield get_settings()
    get_settings.cache_clear()


def run_landing(
    instance: dg.DagsterInstance, key: str, tags: dict[str, str] | None = None, raise_on_error: bool = True
) -> dg.ExecuteInProcessResult:
    return (
        code_location()
        .resolve_job_def("landing_ingestion_job")
        .execute_in_process(
            instance=instance, partition_key=key, tags=tags or {}, raise_on_error=raise_on_error
        )
    )


class Ticks:
    """Evaluates the landing sensor tick after tick, carrying its cursor as the daemon does, and adds
    the partitions it asks for."""

    def __init__(self, instance: dg.DagsterInstance):
        self.instance, self.cursor = instance, None

    def __call__(self) -> list[dg.RunRequest]:
        from rtml.defs.ingestion.sensors import landing_files_sensor

        context = dg.build_sensor_context(
            instance=self.instance, cursor=self.cursor, resources={"settings": get_settings()}
        )
        result = landing_files_sensor(context)
        self.cursor = result.cursor
        for request in result.dynamic_partitions_requests or []:
            self.instance.add_dynamic_partitions("landing_files", list(request.partition_keys or []))
        return list(result.run_requests or [])


def test_a_file_is_requested_only_once_it_stops_growing(
    platform_landing: Settings, instance: dg.DagsterInstance, database_url: str
) -> None:
    table = transactions(40, uuid.uuid4().hex)
    lines = csv_bytes(table).splitlines(keepends=True)
    path = platform_landing.services.landing_dir / f"{uuid.uuid4().hex[:10]}.csv"
    path.write_bytes(b"".join(lines[:2]))
    tick = Ticks(instance)

    def write_the_rest() -> None:  # a slow producer: a line every 0.1 s for 4 s
        for line in lines[2:]:
            time.sleep(0.1)
            with path.open("ab") as file:
                file.write(line)

    writer = threading.Thread(target=write_the_rest)
    writer.start()
    while writer.is_alive():
        assert tick() == [], "requested while still being written"
        time.sleep(0.3)
    deadline = time.monotonic() + 10
    while not (requests := tick()):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    [request] = requests
    content = path.read_bytes()
    digest = hashlib.sha256(content).hexdigest()
    assert request.partition_key == path.name
    assert request.run_key.startswith(f"{path.name}@{digest}@")  # type: ignore[union-attr]
    assert request.tags["rtml/landing_sha256"] == digest
    assert tick() == []  # requested once

    assert run_landing(instance, path.name, request.tags).success
    receipt = json.loads(
        (platform_landing.services.landing_dir / "processed" / f"{path.name}.receipt.json").read_text()
    )
    assert (receipt["rows_read"], receipt["rows_loaded"], receipt["sha256"]) == (40, 40, digest)
    assert db_count(database_url, "raw.transactions", path.name) == 40


def test_a_corrected_file_dropped_again_under_its_name_is_ingested(
    platform_landing: Settings, instance: dg.DagsterInstance, database_url: str
) -> None:
    name = f"{uuid.uuid4().hex[:10]}.csv"
    good = csv_bytes(transactions(7, uuid.uuid4().hex))
    landing = platform_landing.services.landing_dir
    tick = Ticks(instance)

    def drop_settled(content: bytes) -> None:
        (landing / name).write_bytes(content)
        old = time.time() - 10  # written 10 s ago: settled
        os.utime(landing / name, (old, old))

    drop_settled(good.replace(b",", b";"))  # the wrong delimiter: rejected
    [first] = tick()
    failed = run_landing(instance, name, first.tags, raise_on_error=False)
    assert not failed.success
    assert json.loads((landing / "rejected" / f"{name}.receipt.json").read_text())["status"] == "rejected"
    assert tick() == []

    drop_settled(good)  # corrected, same name
    [second] = tick()
    assert second.run_key != first.run_key and second.partition_key == name
    assert run_landing(instance, name, second.tags).success
    assert db_count(database_url, "raw.transactions", name) == 7
    assert (landing / "processed" / name).read_bytes() == good

    # The same file moved back in (same content and modification time): a new drop, a new run.
    (landing / "processed" / name).rename(landing / name)
    [third] = tick()
    assert third.run_key not in {first.run_key, second.run_key}
    assert third.tags == second.tags  # same content


def test_the_sensor_pushes_how_long_files_have_waited(
    platform_landing: Settings, instance: dg.DagsterInstance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What alert LandingFileStuck reads, pushed to a real Pushgateway: the count of waiting files and
    when the oldest was first seen (kept across ticks), back to 0 and the tick's time once it is gone."""
    from tests.monitoring_stack import pushgateway, scrape

    group = 'asset="landing_files",instance="",job="rtml"'
    with pushgateway(tmp_path) as gateway:
        monkeypatch.setenv("RTML_PUSHGATEWAY_URL", gateway.url)
        get_settings.cache_clear()
        path = platform_landing.services.landing_dir / f"{uuid.uuid4().hex[:10]}.csv"
        path.write_bytes(b"being written")  # not settled: waits, no run requested
        tick = Ticks(instance)
        before = time.time()
        assert tick() == []
        first = scrape(gateway.url)
        assert first[f"rtml_landing_files_waiting{{{group}}}"] == 1
        seen = first[f"rtml_landing_oldest_waiting_timestamp_seconds{{{group}}}"]
        assert before <= seen <= time.time()
        time.sleep(0.1)
        assert tick() == []
        assert scrape(gateway.url)[f"rtml_landing_oldest_waiting_timestamp_seconds{{{group}}}"] == seen

        path.unlink()
        before = time.time()
        tick()
        last = scrape(gateway.url)
        assert last[f"rtml_landing_files_waiting{{{group}}}"] == 0
        assert last[f"rtml_landing_oldest_waiting_timestamp_seconds{{{group}}}"] >= before
