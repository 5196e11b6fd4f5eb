"""The prediction log's spill: rows waiting on local disk while PostgreSQL is unreachable or too slow.

A folder of append-only JSON-lines segments (one row per line: the columns of ``monitoring.predictions``,
as ever; a row of another kind — ``monitoring.shadow_predictions``, ``monitoring.served_features`` — with
its columns and a ``"kind"`` key naming it, so segments written before those existed drain unchanged).
The writer of a segment holds an exclusive ``flock`` on it for as long as it appends (it is created
under a temporary name, locked, then renamed, so no drainer ever sees it unlocked); a drainer takes the
lock without waiting, so it reads only finished segments, and two drainers (the scorer's workers
share the folder) never read the same one at once. A segment is deleted only after its rows are
committed; a drainer that dies midway leaves it for the next, and the table's primary key
(``request_id``) makes the rewrite harmless. Locks die with their process: a crashed scorer's
segments are drained by the next.

Durability: every append is flushed to the operating system, so rows survive the scorer's own crash or
``kill -9``; ``fsync`` runs at most once per ``FSYNC_SECONDS`` and when a segment is closed, so a crash
of the machine loses at most the last second of spilled rows. A torn last line (a crash mid-write) is
skipped and counted as ``corrupt``.

The folder has a size limit: rows that would pass it are not written (the caller counts them dropped).
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import fields
from datetime import datetime
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

SUFFIX = ".jsonl"
FSYNC_SECONDS = 1.0
SEGMENT_MAX_BYTES = 64 << 20
"""A long outage is spread over several segments, so a drain makes progress segment by segment."""


class Spill:
    """Spilled rows in ``folder``; ``row_type`` is the row dataclass of lines without a kind
    (``PredictionRow``), ``kinds`` those of the other kinds (kind → dataclass)."""

    KIND = "kind"

    def __init__(
        self, folder: Path, max_bytes: int, row_type: type, kinds: Mapping[str, type] | None = None
    ) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.row_type = row_type
        self._by_kind: dict[str | None, type] = {None: row_type}
        self._by_kind.update(kinds or {})
        self._kind_of = {t: kind for kind, t in self._by_kind.items()}
        self._names = {t: [f.name for f in fields(t)] for t in self._by_kind.values()}
        self._datetimes = {
            t: [f.name for f in fields(t) if "datetime" in str(f.type)] for t in self._by_kind.values()
        }
        self._lock = threading.Lock()
        self._segment: IO[bytes] | None = None
        self._segment_bytes = 0
        self._synced_at = 0.0
        self._sequence = 0
        self.corrupt = 0
        """Lines that could not be read back (a torn write at a crash)."""
        folder.mkdir(parents=True, exist_ok=True)
        self._folder_bytes = self.size()

    # --- writing ------------------------------------------------------------------------------------
    def append(self, rows: Sequence[Any]) -> int:
        """Append ``rows`` (thread-safe); how many were written (fewer when the size limit is reached)."""
        if not rows:
            return 0
        lines = [self._encode(row) for row in rows]
        with self._lock:
            room = self.max_bytes - self._folder_bytes
            kept, size = 0, 0
            for line in lines:
                if size + len(line) > room:
                    break
                kept, size = kept + 1, size + len(line)
            if kept:
                segment = self._open_segment()
                segment.write(b"".join(lines[:kept]))
                segment.flush()
                self._segment_bytes += size
                self._folder_bytes += size
                now = time.monotonic()
                if now - self._synced_at >= FSYNC_SECONDS:
                    os.fsync(segment.fileno())
                    self._synced_at = now
                if self._segment_bytes >= SEGMENT_MAX_BYTES:
                    self._close_segment()
        if kept < len(rows):
            log.error(
                "prediction spill %s is full (%d bytes, limit %d): %d rows not kept",
                self.folder,
                self._folder_bytes,
                self.max_bytes,
                len(rows) - kept,
            )
        return kept

    def seal(self) -> None:
        """Close the segment being written (fsync, unlock): drainers may take it."""
        with self._lock:
            self._close_segment()

    def _open_segment(self) -> IO[bytes]:
        if self._segment is None:
            self._sequence += 1
            name = f"{time.time_ns():020d}-{os.getpid()}-{self._sequence}"
            partial = self.folder / f"{name}.partial"
            segment = open(partial, "ab")  # noqa: SIM115 -- kept open (and locked) across appends
            fcntl.flock(segment.fileno(), fcntl.LOCK_EX)
            partial.rename(self.folder / f"{name}{SUFFIX}")  # visible to drainers only once locked
            self._segment, self._segment_bytes = segment, 0
            self._folder_bytes = self.size()  # other workers' segments count too
        return self._segment

    def _close_segment(self) -> None:
        if self._segment is not None:
            self._segment.flush()
            os.fsync(self._segment.fileno())
            self._segment.close()  # releases the lock
            self._segment = None

    def _encode(self, row: Any) -> bytes:
        row_type = type(row)
        values = {name: getattr(row, name) for name in self._names[row_type]}
        for name in self._datetimes[row_type]:
            if values[name] is not None:
                values[name] = values[name].isoformat()
        kind = self._kind_of[row_type]
        if kind is not None:
            values[self.KIND] = kind
        return json.dumps(values, separators=(",", ":")).encode() + b"\n"

    # --- draining -----------------------------------------------------------------------------------
    def size(self) -> int:
        """Bytes waiting in the folder (every worker's segments)."""
        total = 0
        for path in self.folder.glob(f"*{SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                total += path.stat().st_size
        return total

    @property
    def waiting_bytes(self) -> int:
        """Bytes waiting, as of this process's last write or drain (``size`` looks again)."""
        return self._folder_bytes

    def drain(
        self,
        write: Callable[[list[Any]], Mapping[str, int]],
        done: Callable[[collections.Counter[str]], None],
        chunk_rows: int = 5000,
    ) -> None:
        """Pass every finished segment's rows to ``write`` (chunks of ``chunk_rows``; it returns how
        many it wrote, per kind), delete the segment once all its rows are through, then report the
        rows written to ``done``. An exception from ``write`` (the database went away again) leaves the
        segment for the next drain."""
        for path in sorted(self.folder.glob(f"*{SUFFIX}")):
            with self._claim(path) as segment:
                if segment is None:
                    continue  # being written, or another worker drains it
                rows: collections.Counter[str] = collections.Counter()
                batch: list[Any] = []
                for line in segment:
                    row = self._decode(line, path)
                    if row is not None:
                        batch.append(row)
                    if len(batch) >= chunk_rows:
                        rows.update(write(batch))
                        batch = []
                if batch:
                    rows.update(write(batch))
                path.unlink(missing_ok=True)
                done(rows)
        with self._lock:
            self._folder_bytes = self.size()

    @contextlib.contextmanager
    def _claim(self, path: Path) -> Iterator[IO[bytes] | None]:
        try:
            segment = open(path, "rb")  # noqa: SIM115 -- closed below
        except FileNotFoundError:
            yield None
            return
        try:
            try:
                fcntl.flock(segment.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield None
                return
            yield segment
        finally:
            segment.close()

    def _decode(self, line: bytes, path: Path) -> Any | None:
        try:
            values = json.loads(line)
            row_type = self._by_kind[values.pop(self.KIND, None)]
            for name in self._datetimes[row_type]:
                if values.get(name) is not None:
                    values[name] = datetime.fromisoformat(values[name])
            return row_type(**values)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            self.corrupt += 1
            log.error("prediction spill %s: unreadable line skipped (%s): %r", path.name, exc, line[:200])
            return None
