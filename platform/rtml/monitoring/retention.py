"""Retention of the scoring service's bulkiest logs: ``monitoring.served_features`` (about 1 kB a row,
one per logged request) and ``monitoring.shadow_predictions``, trimmed by ``scored_at``.

Why the scorer does it (a thread next to the prediction-log writer) rather than a Dagster schedule: the
scorer writes these rows, so wherever a scorer runs, its log is bounded too — with or without the
orchestrator. Each worker runs the thread; a session-level advisory lock lets one of them delete at a
time (the others skip that round). Deletes go in batches of ``batch_rows`` (each its own short
transaction) so the table is never locked for long and the writer's COPYs keep landing.

No BentoML here: the scoring service starts it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Mapping

import psycopg

log = logging.getLogger(__name__)

TABLES = ("monitoring.served_features", "monitoring.shadow_predictions")
EVERY_SECONDS = 3600.0


def purge(conn: psycopg.Connection, table: str, days: float, batch_rows: int = 50_000) -> int:
    """Delete the rows of ``table`` scored more than ``days`` ago; how many. ``conn`` in autocommit."""
    if table not in TABLES:
        raise ValueError(f"no retention for {table}: one of {', '.join(TABLES)}")
    deleted = 0
    while True:
        cur = conn.execute(
            f"delete from {table} where ctid = any(array(select ctid from {table} "
            "where scored_at < now() - make_interval(secs => %s) limit %s))",
            (days * 86400.0, batch_rows),
        )
        deleted += cur.rowcount
        if cur.rowcount < batch_rows:
            return deleted


def purge_all(
    database_url: str, retention_days: Mapping[str, float], connect_timeout: int = 5
) -> dict[str, int]:
    """One round: ``purge`` every table with a positive retention, unless another process is at it."""
    deleted: dict[str, int] = {}
    with psycopg.connect(database_url, autocommit=True, connect_timeout=connect_timeout) as conn:
        locked = conn.execute("select pg_try_advisory_lock(hashtext('rtml.monitoring.retention'))").fetchone()
        if not (locked and locked[0]):
            return deleted
        try:
            for table, days in retention_days.items():
                if days > 0:
                    with contextlib.suppress(psycopg.errors.UndefinedTable):  # the writer creates them
                        deleted[table] = purge(conn, table, days)
        finally:
            conn.execute("select pg_advisory_unlock(hashtext('rtml.monitoring.retention'))")
    return deleted


class Retention:
    """A daemon thread running ``purge_all`` now and every ``every_seconds``; errors are logged and
    retried next round (PostgreSQL may be away: the rows then wait, nothing is lost)."""

    def __init__(
        self, database_url: str, retention_days: Mapping[str, float], every_seconds: float = EVERY_SECONDS
    ) -> None:
        self.database_url = database_url
        self.retention_days = dict(retention_days)
        self.every_seconds = every_seconds
        self.last_deleted: dict[str, int] = {}
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="log-retention", daemon=True)
        if any(days > 0 for days in self.retention_days.values()):
            self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                self.last_deleted = purge_all(self.database_url, self.retention_days)
                self.last_error = None
                if any(self.last_deleted.values()):
                    log.info("log retention: deleted %s", self.last_deleted)
            except psycopg.Error as exc:
                self.last_error = f"{type(exc).__name__}: {exc}".strip()
                log.warning("log retention: %s (next round in %.0f s)", exc, self.every_seconds)
            if self._stop.wait(self.every_seconds):
                return

    def close(self) -> None:
        self._stop.set()
