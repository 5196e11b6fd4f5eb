"""The landing folder: CSV or Parquet files dropped in ``<data dir>/landing/`` are ingested one by one.

Conventions (see docs/data.md):
- ``*.csv`` (comma-separated, UTF-8, header row) or ``*.parquet`` with the TRANSACTIONS columns; a name
  starting with ``labels_`` holds LABELS instead. Other names and hidden files (``.name``) are ignored,
  so producers should write ``.name.csv`` and rename when complete.
- The file name is the load's ``source``: ingesting it again replaces its rows, never duplicates.
- After a load the file moves to ``landing/processed/``; a file-level failure moves it to
  ``landing/rejected/``. Files are never deleted or changed. ``<name>.receipt.json`` next to the moved
  file records counts, rules, errors and timestamps. A name already taken there gets a UTC time suffix.
- File-level failures (the whole file is rejected, nothing loaded): empty file (0 bytes), wrong delimiter
  or missing/unknown columns, bytes that are not UTF-8, unreadable Parquet, values PostgreSQL refuses.
- A line with too few or too many fields (for example a truncated last line) is not a file failure:
  that line is quarantined (``row_truncated`` / ``row_too_many_fields``, the line kept in ``raw_record``)
  and the rest loads. A header-only CSV is processed with 0 rows.
- Database outages (``TransientDatabaseError``) leave the file in ``landing/`` and propagate, so a retry
  finds it again.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from rtml.config import Settings
from rtml.ingest.errors import IngestError, SchemaMismatchError, TransientDatabaseError
from rtml.ingest.loader import LoadResult, load_labels, load_transactions
from rtml.ingest.validation import quarantine_schema
from rtml.sources.schema import LABELS, TRANSACTIONS

SUFFIXES = (".csv", ".parquet")
LABELS_PREFIX = "labels_"
Status = Literal["processed", "rejected"]


class LandingFileError(Exception):
    """The file as a whole cannot be ingested; the message says what, where and how to fix it."""


@dataclass
class Receipt:
    file: str  # original file name (= the load's source)
    kind: str  # "transactions" or "labels"
    status: Status
    rows_read: int = 0
    rows_loaded: int = 0
    rows_quarantined: int = 0
    quarantine_by_rule: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    started_at: str = ""
    finished_at: str = ""
    moved_to: str = ""  # where the file is now
    path: Path = Path()  # the receipt file itself

    def to_json(self) -> str:
        data = asdict(self)
        data["path"] = str(self.path)
        return json.dumps(data, indent=2)


def processed_dir(settings: Settings) -> Path:
    return settings.landing_dir / "processed"


def rejected_dir(settings: Settings) -> Path:
    return settings.landing_dir / "rejected"


def list_landing_files(settings: Settings) -> list[Path]:
    """Files waiting in the landing folder, oldest name first (subfolders and hidden files ignored)."""
    folder = settings.landing_dir
    if not folder.is_dir():
        return []
    return sorted(
        path
        for path in folder.iterdir()
        if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in SUFFIXES
    )


def ingest_landing_file(
    path: Path | str, conn_or_url: psycopg.Connection | str, settings: Settings
) -> Receipt:
    """Validate and load one landing file (source = its name), then move it and write its receipt."""
    path = Path(path)
    kind = "labels" if path.name.startswith(LABELS_PREFIX) else "transactions"
    receipt = Receipt(file=path.name, kind=kind, status="processed", started_at=_now())
    if not path.is_file():
        raise FileNotFoundError(f"Landing file {path} does not exist (already processed or moved?)")
    try:
        result = _load(path, kind, conn_or_url, settings)
    except TransientDatabaseError:
        raise  # the file stays in landing/ for the retry
    except LandingFileError as error:
        receipt.status = "rejected"
        receipt.errors.append(str(error))
    else:
        receipt.rows_read = result.rows_read
        receipt.rows_loaded = result.rows_loaded
        receipt.rows_quarantined = result.rows_quarantined
        receipt.quarantine_by_rule = dict(result.quarantine_by_rule)
    folder = processed_dir(settings) if receipt.status == "processed" else rejected_dir(settings)
    moved = _move(path, folder)
    receipt.moved_to = str(moved)
    receipt.finished_at = _now()
    receipt.path = moved.with_name(moved.name + ".receipt.json")
    receipt.path.write_text(receipt.to_json() + "\n", encoding="utf-8")
    return receipt


# --- loading -------------------------------------------------------------------------------------------
def _load(path: Path, kind: str, conn_or_url: psycopg.Connection | str, settings: Settings) -> LoadResult:
    record = LABELS if kind == "labels" else TRANSACTIONS
    load = load_labels if kind == "labels" else load_transactions
    where = f"landing file {path.name} ({kind})"
    if path.stat().st_size == 0:
        raise LandingFileError(
            f"{where} is empty (0 bytes). Expected a header row with {record.names} and data rows; "
            "re-export the file and drop it again under a new name."
        )
    rejects: list[pa.Table] = []
    if path.suffix.lower() == ".parquet":
        batches = _parquet_batches(path, settings.ingest_chunk_rows)
    else:
        batches = _csv_batches(path, record, settings.ingest_chunk_rows, rejects)
    try:
        return load(conn_or_url, batches, path.name, settings, reader_rejects=rejects)
    except SchemaMismatchError as error:
        raise LandingFileError(f"{where}: {error}") from error
    except pa.ArrowInvalid as error:
        raise LandingFileError(_describe_read_error(path, where, error)) from error
    except IngestError as error:
        if isinstance(error.__cause__, psycopg.errors.DataError):  # e.g. a NUL character in a value
            raise LandingFileError(f"{where}: PostgreSQL refused a value: {error}. Fix the file.") from error
        raise


def _parquet_batches(path: Path, chunk_rows: int) -> Iterator[pa.Table]:
    for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows):
        yield pa.Table.from_batches([batch])


def _csv_batches(
    path: Path, record: pa.Schema, chunk_rows: int, rejects: list[pa.Table]
) -> Iterator[pa.Table]:
    """Stream the CSV as all-string columns (validation sees raw values), ``chunk_rows`` at a time.

    Lines with a wrong number of fields are collected into ``rejects`` as quarantine rows.
    """
    bad_lines: list[pacsv.InvalidRow] = []

    def on_invalid_row(row: pacsv.InvalidRow) -> str:
        bad_lines.append(row)
        return "skip"

    reader = pacsv.open_csv(
        path,
        # Single-threaded so the reader reports line numbers of bad lines.
        read_options=pacsv.ReadOptions(use_threads=False, block_size=8 << 20),
        parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid_row),
        convert_options=pacsv.ConvertOptions(
            column_types={name: pa.string() for name in record.names}, strings_can_be_null=False
        ),
    )
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    for batch in reader:
        pending.append(batch)
        pending_rows += batch.num_rows
        if pending_rows >= chunk_rows:
            yield pa.Table.from_batches(pending)
            pending, pending_rows = [], 0
    if pending or not bad_lines:  # a header-only file still yields its (empty) table for the schema check
        yield pa.Table.from_batches(pending, schema=reader.schema)
    if bad_lines:
        rejects.append(_bad_lines_table(bad_lines, record))


def _bad_lines_table(rows: list[pacsv.InvalidRow], record: pa.Schema) -> pa.Table:
    # Few rows by nature (one per malformed line): plain Python is fine here.
    n = len(rows)
    rules = [
        "row_truncated" if r.actual_columns < r.expected_columns else "row_too_many_fields" for r in rows
    ]
    errors = [
        f"line {r.number}: {r.actual_columns} field(s) where the header has {r.expected_columns}"
        + (" (truncated line?)" if r.actual_columns < r.expected_columns else " (unquoted comma?)")
        for r in rows
    ]
    return pa.Table.from_arrays(
        [
            *[pa.nulls(n, pa.string()) for _ in record.names],
            pa.array(np.array([(r.number or 0) - 2 if r.number else -1 for r in rows]), pa.int64()),
            pa.array(rules, pa.string()),
            pa.array(errors, pa.string()),
            pa.array([r.text for r in rows], pa.string()),
        ],
        schema=quarantine_schema(record),
    )


def _describe_read_error(path: Path, where: str, error: pa.ArrowInvalid) -> str:
    message = str(error)
    if "UTF8" in message or "UTF-8" in message:
        line = _first_invalid_utf8_line(path)
        at = f" (first at line {line})" if line else ""
        return (
            f"{where}: bytes that are not valid UTF-8{at}: {message}. Re-export the file as UTF-8 "
            "(for example `iconv -f latin1 -t utf-8`) and drop it again under a new name."
        )
    if path.suffix.lower() == ".parquet":
        return f"{where}: not a readable Parquet file: {message}. Re-export it and drop it again."
    return (
        f"{where}: the CSV cannot be parsed: {message}. Expected comma-separated UTF-8 with the header "
        "row; fix the file and drop it again under a new name."
    )


def _first_invalid_utf8_line(path: Path) -> int | None:
    line = 1
    with path.open("rb") as file:
        for raw in file:
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return line
            line += 1
    return None


# --- moving --------------------------------------------------------------------------------------------
def _move(path: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / path.name
    if target.exists():  # never overwrite an earlier file of the same name
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        target = folder / f"{path.stem}.{stamp}{path.suffix}"
    return Path(shutil.move(str(path), str(target)))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
