"""The landing folder: CSV or Parquet files dropped in ``<data dir>/landing/`` are ingested one by one.

Conventions (see docs/data.md):
- ``*.csv`` (comma-separated, UTF-8, header row) or ``*.parquet`` with the TRANSACTIONS columns; a name
  starting with ``labels_`` holds LABELS instead. Other names and hidden files (``.name``) are ignored.
- Only plain names directly in the folder are ingested (``landing_path``): no path separators, no
  ``..`` or ``...``, not hidden, no control characters. The name is a Dagster partition key, which anyone
  with access to Dagster's API can add: a name outside the rule fails the run and nothing is read.
- Only regular files are read, through a descriptor opened without following symbolic links: a symbolic
  link (which could point anywhere) is rejected (moved to ``rejected/``, its target never read).
- Complete files only: the sensor picks a file up once it has not been modified for
  ``landing_settle_seconds``. A producer that may pause mid-write writes ``.name.csv`` or
  ``name.csv.part`` (both ignored) and renames it when complete; a rename is atomic.
- The file name is the load's ``source``: ingesting it again replaces its rows, never duplicates.
- After a load the file moves to ``landing/processed/``; any failure other than a database outage moves
  it to ``landing/rejected/``. Files are never deleted or changed. ``<name>.receipt.json`` next to the
  moved file records counts, rules, errors, the content's SHA-256 and timestamps. A name already taken
  there gets a UTC time suffix. A file that vanished before it could be read still gets its receipt in
  ``rejected/``.
- File-level failures (the whole file is rejected, nothing loaded): empty file (0 bytes), wrong delimiter
  or missing/unknown columns, bytes that are not UTF-8, unreadable Parquet, columns of a type the rules
  cannot read, values PostgreSQL refuses, a symbolic link or other non-regular file, a file that cannot
  be read (permissions) or vanished, and any other error of the reader or the loader.
- A line with too few or too many fields (for example a truncated last line) is not a file failure:
  that line is quarantined (``row_truncated`` / ``row_too_many_fields``, the line kept in ``raw_record``)
  and the rest loads. A header-only CSV is processed with 0 rows.
- Database outages (``TransientDatabaseError``) leave the file in ``landing/`` and propagate, so a retry
  finds it again.
- A corrected file dropped again under the same name is ingested again (and replaces the earlier load):
  the sensor's run key holds the name, the content's SHA-256 and the file's change time, which a drop
  (a copy or a rename into the folder) renews.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Literal

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


class UnsafeLandingName(ValueError):
    """A name that is not a plain file name of the landing folder: nothing is read or moved."""


class LandingFileChanged(RuntimeError):
    """The file is not the content its run was requested for (it changed since): it stays in the folder,
    and the sensor requests a run for the new content once it settles."""


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
    moved_to: str = ""  # where the file is now ("" if it vanished)
    sha256: str = ""  # of the content read ("" if it could not be read)
    path: Path = Path()  # the receipt file itself

    def to_json(self) -> str:
        data = asdict(self)
        data["path"] = str(self.path)
        return json.dumps(data, indent=2)


def processed_dir(settings: Settings) -> Path:
    return settings.services.landing_dir / "processed"


def rejected_dir(settings: Settings) -> Path:
    return settings.services.landing_dir / "rejected"


def landing_path(settings: Settings, name: str) -> Path:
    """``landing_dir / name`` for a plain landing file name; ``UnsafeLandingName`` for anything else."""
    problem = _name_problem(name)
    if problem:
        raise UnsafeLandingName(
            f"{name!r} is not a landing file name: {problem}. A landing file is a plain name directly in "
            f"{settings.services.landing_dir} ending in {' or '.join(SUFFIXES)}; nothing was read."
        )
    return settings.services.landing_dir / name


def _name_problem(name: str) -> str:
    if not name:
        return "it is empty"
    if "/" in name or "\\" in name:
        return "it contains a path separator"
    if name.startswith("."):
        return "it is hidden or a relative path (starts with '.')"
    if "..." in name:
        return "it contains '...' (Dagster refuses it in a partition key)"
    if any(ord(char) < 32 or ord(char) == 127 for char in name):
        return "it contains a control character"
    if not name.lower().endswith(SUFFIXES):
        return "its suffix is not one the folder ingests"
    return ""


def list_landing_files(settings: Settings) -> list[Path]:
    """Files waiting in the landing folder, oldest name first: regular files and symbolic links (which a
    run rejects) with an ingested suffix; subfolders, hidden files and unsafe names are ignored."""
    folder = settings.services.landing_dir
    if not folder.is_dir():
        return []
    return sorted(
        path
        for path in folder.iterdir()
        if not _name_problem(path.name) and (path.is_symlink() or path.is_file())
    )


@dataclass(frozen=True)
class ReadyFile:
    """A landing file that has stopped changing, with what identifies this drop of it."""

    name: str
    sha256: str  # of the content; of the link's target path for a symbolic link (never followed)
    changed_ns: int  # st_ctime_ns: a copy or a rename into the folder (a new drop) renews it

    @property
    def drop_key(self) -> str:
        return f"{self.name}@{self.sha256}@{self.changed_ns}"


def ready_files(settings: Settings, digests: dict[str, str], now: float | None = None) -> list[ReadyFile]:
    """The waiting files not modified for ``landing_settle_seconds`` (a file still being written keeps
    changing its modification time), oldest name first.

    ``digests`` caches the SHA-256 of each file by its stat signature across calls (the sensor keeps it
    in its cursor, so a waiting file is hashed once); it is updated in place to the files seen now.
    """
    now = time.time() if now is None else now
    ready, current = [], {}
    for path in list_landing_files(settings):
        try:
            info = path.lstat()
            if now - info.st_mtime < settings.ingest.landing_settle_seconds:
                continue
            signature = f"{path.name}|{info.st_size}|{info.st_mtime_ns}|{info.st_ctime_ns}"
            digest = digests.get(signature) or _digest(path, info)
        except FileNotFoundError:  # moved away meanwhile (its run processed it)
            continue
        current[signature] = digest
        ready.append(ReadyFile(path.name, digest, info.st_ctime_ns))
    digests.clear()
    digests.update(current)
    return ready


def _digest(path: Path, info: os.stat_result) -> str:
    """The content's SHA-256; "" when it cannot be read (its run then rejects it, saying why)."""
    if stat.S_ISLNK(info.st_mode):
        return hashlib.sha256(b"symlink:" + os.fsencode(os.readlink(path))).hexdigest()
    try:
        with _open_regular(path) as file:
            return hashlib.file_digest(file, "sha256").hexdigest()
    except FileNotFoundError:
        raise
    except (OSError, LandingFileError):
        return ""


@contextmanager
def _open_regular(path: Path) -> Iterator[io.BufferedReader]:
    """Open ``path`` for reading without following a symbolic link and only if it is a regular file
    (O_NONBLOCK: opening a named pipe must not block)."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise LandingFileError(
                f"landing file {path.name} is a symbolic link (to {os.readlink(path)!r}); it was not "
                "followed or read. Copy the file itself into the landing folder."
            ) from error
        raise
    with os.fdopen(descriptor, "rb") as file:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise LandingFileError(
                f"landing file {path.name} is not a regular file (a folder, pipe or device?); it was not "
                "read. Drop a regular CSV or Parquet file."
            )
        yield file


def ingest_landing_file(
    name: str,
    conn_or_url: psycopg.Connection | str,
    settings: Settings,
    *,
    expected_sha256: str | None = None,
    now: datetime | None = None,
) -> Receipt:
    """Validate and load the landing file ``name`` (source = its name), then move it and write its receipt.

    ``now``: the load time validation measures "in the future" against (default: the clock).

    ``expected_sha256``: the content the run was requested for; other content raises
    ``LandingFileChanged`` and leaves the file where it is. ``UnsafeLandingName`` for a name that is not
    a plain file of the folder (nothing read); ``TransientDatabaseError`` leaves the file for a retry.
    Every other failure rejects the file with a receipt stating the error.
    """
    path = landing_path(settings, name)
    kind = "labels" if name.startswith(LABELS_PREFIX) else "transactions"
    receipt = Receipt(file=name, kind=kind, status="processed", started_at=_now())
    where = f"landing file {name} ({kind})"
    vanished = False
    try:
        with _open_regular(path) as file:
            receipt.sha256 = hashlib.file_digest(file, "sha256").hexdigest()
            if expected_sha256 and receipt.sha256 != expected_sha256:
                raise LandingFileChanged(
                    f"{where} changed since its run was requested (SHA-256 {receipt.sha256[:12]}..., "
                    f"requested {expected_sha256[:12]}...); left in the folder: the sensor requests a run "
                    "for the new content once it stops changing."
                )
            file.seek(0)
            result = _load(file, path, kind, conn_or_url, settings, now)
    except (TransientDatabaseError, LandingFileChanged):
        raise  # the file stays in landing/
    except LandingFileError as error:
        receipt.errors.append(str(error))
    except FileNotFoundError as error:
        vanished = True
        receipt.errors.append(f"{where} vanished before it could be read ({error.strerror}); nothing loaded.")
    except PermissionError as error:
        receipt.errors.append(
            f"{where} cannot be read: {error.strerror}. Make it readable by the platform's user and drop "
            "it again; nothing loaded."
        )
    except Exception as error:  # whatever the reader or loader raises: reject, never retry forever
        receipt.errors.append(
            f"{where} could not be ingested: {type(error).__name__}: {error}. Nothing was loaded (rolled "
            "back). Check the file against the schema in docs/data.md, fix it and drop it again."
        )
    else:
        receipt.rows_read = result.rows_read
        receipt.rows_loaded = result.rows_loaded
        receipt.rows_quarantined = result.rows_quarantined
        receipt.quarantine_by_rule = dict(result.quarantine_by_rule)
    if receipt.errors:
        receipt.status = "rejected"
    folder = processed_dir(settings) if receipt.status == "processed" else rejected_dir(settings)
    if vanished:
        receipt.path = _free_name(folder, name + ".receipt.json")
    else:
        moved = _move(path, folder)
        receipt.moved_to = str(moved)
        receipt.path = moved.with_name(moved.name + ".receipt.json")
    receipt.finished_at = _now()
    receipt.path.write_text(receipt.to_json() + "\n", encoding="utf-8")
    return receipt


# --- loading -------------------------------------------------------------------------------------------
def _load(
    file: BinaryIO,
    path: Path,
    kind: str,
    conn_or_url: psycopg.Connection | str,
    settings: Settings,
    now: datetime | None = None,
) -> LoadResult:
    record = LABELS if kind == "labels" else TRANSACTIONS
    load = load_labels if kind == "labels" else load_transactions
    where = f"landing file {path.name} ({kind})"
    if os.fstat(file.fileno()).st_size == 0:
        raise LandingFileError(
            f"{where} is empty (0 bytes). Expected a header row with {record.names} and data rows; "
            "re-export the file and drop it again."
        )
    rejects: list[pa.Table] = []
    if path.suffix.lower() == ".parquet":
        batches = _parquet_batches(file, settings.ingest.chunk_rows)
    else:
        batches = _csv_batches(file, record, settings.ingest.chunk_rows, rejects)
    try:
        return load(conn_or_url, batches, path.name, settings.ingest, reader_rejects=rejects, now=now)
    except SchemaMismatchError as error:
        raise LandingFileError(f"{where}: {error}") from error
    except pa.ArrowInvalid as error:
        raise LandingFileError(_describe_read_error(file, path, where, error)) from error
    except IngestError as error:
        if isinstance(error.__cause__, psycopg.errors.DataError):  # e.g. a NUL character in a value
            raise LandingFileError(f"{where}: PostgreSQL refused a value: {error}. Fix the file.") from error
        raise


def _parquet_batches(file: BinaryIO, chunk_rows: int) -> Iterator[pa.Table]:
    for batch in pq.ParquetFile(file).iter_batches(batch_size=chunk_rows):
        yield pa.Table.from_batches([batch])


def _csv_batches(
    file: BinaryIO, record: pa.Schema, chunk_rows: int, rejects: list[pa.Table]
) -> Iterator[pa.Table]:
    """Stream the CSV as all-string columns (validation sees raw values), ``chunk_rows`` at a time.

    Lines with a wrong number of fields are collected into ``rejects`` as quarantine rows.
    """
    bad_lines: list[pacsv.InvalidRow] = []

    def on_invalid_row(row: pacsv.InvalidRow) -> str:
        bad_lines.append(row)
        return "skip"

    reader = pacsv.open_csv(
        file,
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


def _describe_read_error(file: BinaryIO, path: Path, where: str, error: pa.ArrowInvalid) -> str:
    message = str(error)
    if "UTF8" in message or "UTF-8" in message:
        line = _first_invalid_utf8_line(file)
        at = f" (first at line {line})" if line else ""
        return (
            f"{where}: bytes that are not valid UTF-8{at}: {message}. Re-export the file as UTF-8 "
            "(for example `iconv -f latin1 -t utf-8`) and drop it again."
        )
    if path.suffix.lower() == ".parquet":
        return f"{where}: not a readable Parquet file: {message}. Re-export it and drop it again."
    return (
        f"{where}: the CSV cannot be parsed: {message}. Expected comma-separated UTF-8 with the header "
        "row; fix the file and drop it again."
    )


def _first_invalid_utf8_line(file: BinaryIO) -> int | None:
    file.seek(0)
    for line, raw in enumerate(file, start=1):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return line
    return None


# --- moving --------------------------------------------------------------------------------------------
def _move(path: Path, folder: Path) -> Path:
    """Move ``path`` (a symbolic link itself, not its target) into ``folder``, never overwriting."""
    return Path(shutil.move(str(path), str(_free_name(folder, path.name))))


def _free_name(folder: Path, name: str) -> Path:
    """``folder / name``, or with a UTC time before the suffix when an earlier file holds the name."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    if target.exists() or target.is_symlink():
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        target = folder / f"{target.stem}.{stamp}{target.suffix}"
    return target


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
