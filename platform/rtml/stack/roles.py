"""PostgreSQL roles per service (least privilege): the scoring service's role may write the prediction log
and nothing else.

``rtml_scorer`` (``ensure_scorer_role``): CONNECT and TEMP (the writer's staging table for a retried
batch) on the platform database, USAGE on schema ``monitoring``, INSERT on ``monitoring.predictions``
and INSERT / DELETE on ``monitoring.shadow_predictions`` and ``monitoring.served_features`` (the scorer
trims them, ``rtml.monitoring.retention``), SELECT on the three (the retention's batches select the rows
they delete; ``create temp table ... (like ...)`` reads the definition). No other schema: the features,
raw rows, quarantine and models are out of its reach. The tables are created here, by the admin, since
the role cannot create them; the scorer's writer then finds them and runs no DDL.

Run by ``rtml up`` when ``RTML_POSTGRES_SCORER_PASSWORD`` is set (the compose stack's ``init`` service).
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from rtml.monitoring import predictions

SCORER_ROLE = "rtml_scorer"
SCORER_TABLES: dict[str, tuple[str, ...]] = {
    "monitoring.predictions": ("select", "insert"),
    "monitoring.shadow_predictions": ("select", "insert", "delete"),
    "monitoring.served_features": ("select", "insert", "delete"),
}


def ensure_scorer_role(admin_url: str, password: str, role: str = SCORER_ROLE) -> None:
    """Create (or update the password of) the scorer's role and grant it exactly its privileges on the
    database of ``admin_url`` (a superuser's or the database owner's URL). Idempotent."""
    predictions.ensure_table(admin_url)
    with psycopg.connect(admin_url, autocommit=True) as conn, conn.transaction():
        conn.execute("select pg_advisory_xact_lock(hashtext('rtml.stack.roles'))")
        exists = conn.execute("select 1 from pg_roles where rolname = %s", (role,)).fetchone()
        name = sql.Identifier(role)
        conn.execute(
            sql.SQL("{} role {} with login nosuperuser nocreatedb nocreaterole password {}").format(
                sql.SQL("alter" if exists else "create"), name, sql.Literal(password)
            )
        )
        database = sql.Identifier(conn.info.dbname)
        conn.execute(sql.SQL("grant connect, temporary on database {} to {}").format(database, name))
        conn.execute(sql.SQL("grant usage on schema monitoring to {}").format(name))
        for table, privileges in SCORER_TABLES.items():
            schema, relation = table.split(".")
            conn.execute(
                sql.SQL("grant {} on table {} to {}").format(
                    sql.SQL(", ").join(sql.SQL(p) for p in privileges), sql.Identifier(schema, relation), name
                )
            )
