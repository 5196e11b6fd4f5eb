"""One way for a module to create its PostgreSQL tables if missing (the raw layer, the prediction log,
drift reports, challenger comparisons, live performance, notifications).

Each module keeps its own DDL of ``create ... if not exists`` statements; concurrent runs of the same
statements can still collide in PostgreSQL's catalog (a unique violation), so they are serialised by a
transaction-level advisory lock named after the module's tables.
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg


def create_if_missing(conn: psycopg.Connection, ddl: str, *, lock: str, tables: Sequence[str] = ()) -> None:
    """Run ``ddl`` in a transaction of its own (committed unless the caller has one open) under the advisory
    lock ``lock``. With ``tables``, nothing is run when they all exist already: a role that may only write
    them (the scorer's, ``rtml.stack.roles``) may not run DDL, not even ``create ... if not exists``."""
    with conn.transaction():
        if tables:
            found = conn.execute(
                "select count(to_regclass(t)) from unnest(%s::text[]) as t", (list(tables),)
            ).fetchone()
            if found and found[0] == len(tables):
                return
        conn.execute("select pg_advisory_xact_lock(hashtext(%s))", (lock,))
        conn.execute(ddl)  # several statements: allowed without parameters


def ensure(database_url: str, ddl: str, *, lock: str) -> None:
    """``create_if_missing`` on a connection of its own to ``database_url``."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        create_if_missing(conn, ddl, lock=lock)
