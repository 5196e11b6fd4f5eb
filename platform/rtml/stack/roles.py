"""PostgreSQL roles per service (least privilege): the scoring service's role may write the prediction log
and nothing else; the platform, Dagster and MLflow each own their database and reach no other.

``rtml_scorer`` (``ensure_scorer_role``): CONNECT and TEMP (the writer's staging table for a retried
batch) on the platform database, USAGE on schema ``monitoring``, INSERT on ``monitoring.predictions``
and INSERT / DELETE on ``monitoring.shadow_predictions`` and ``monitoring.served_features`` (the scorer
trims them, ``rtml.monitoring.retention``), SELECT on the three (the retention's batches select the rows
they delete; ``create temp table ... (like ...)`` reads the definition). No other schema: the features,
raw rows, quarantine and models are out of its reach. The tables are created here, by the admin, since
the role cannot create them; the scorer's writer then finds them and runs no DDL.

``rtml_platform``, ``rtml_dagster``, ``rtml_mlflow`` (``ensure_owner_role``): each the owner of one database
(the platform's, Dagster's, MLflow's) and of every schema, table, view and sequence in it, so its own
migrations (``dagster instance migrate``, ``mlflow db upgrade``, dbt's rebuilds) alter what they need;
CONNECT is revoked from PUBLIC on those databases, so none reaches another's (the scorer's CONNECT on the
platform database is granted to it by name).

Run by ``rtml up`` for each role whose password is set (``RTML_POSTGRES_*_PASSWORD``; the compose stack's
``init`` service, which alone connects as the superuser).
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from rtml.monitoring import predictions

SCORER_ROLE = "rtml_scorer"
PLATFORM_ROLE = "rtml_platform"
DAGSTER_ROLE = "rtml_dagster"
MLFLOW_ROLE = "rtml_mlflow"
_LOCK = "select pg_advisory_xact_lock(hashtext('rtml.stack.roles'))"
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
        conn.execute(_LOCK)
        name = _login_role(conn, role, password)
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


def _login_role(conn: psycopg.Connection, role: str, password: str) -> sql.Identifier:
    """Create ``role`` (or set its password) as a login role without any of the server's powers."""
    exists = conn.execute("select 1 from pg_roles where rolname = %s", (role,)).fetchone()
    name = sql.Identifier(role)
    conn.execute(
        sql.SQL("{} role {} with login nosuperuser nocreatedb nocreaterole password {}").format(
            sql.SQL("alter" if exists else "create"), name, sql.Literal(password)
        )
    )
    return name


# What a database's owner role takes over: every schema but the server's own, and every relation in them.
_FOREIGN_SCHEMAS = """
    select nspname from pg_namespace
    where nspname not like 'pg\\_%%' and nspname <> 'information_schema'
      and nspowner not in (select oid from pg_roles where rolname in (%(role)s, 'pg_database_owner'))
"""
_FOREIGN_RELATIONS = """
    select n.nspname, c.relname, c.relkind from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where n.nspname not like 'pg\\_%%' and n.nspname <> 'information_schema'
      and c.relkind in ('r', 'p', 'v', 'm', 'S', 'f')
      and c.relowner <> (select oid from pg_roles where rolname = %(role)s)
      -- a sequence owned by a column (serial, identity) follows its table
      and not (c.relkind = 'S' and exists (
        select 1 from pg_depend d where d.objid = c.oid and d.deptype in ('a', 'i')))
"""
_FOREIGN_TYPES = """
    select n.nspname, t.typname from pg_type t join pg_namespace n on n.oid = t.typnamespace
    where n.nspname not like 'pg\\_%%' and n.nspname <> 'information_schema' and t.typtype in ('e', 'd')
      and t.typowner <> (select oid from pg_roles where rolname = %(role)s)
"""
_ALTER = {
    "r": "table",
    "p": "table",
    "v": "view",
    "m": "materialized view",
    "S": "sequence",
    "f": "foreign table",
}


def ensure_owner_role(admin_url: str, role: str, password: str) -> None:
    """Create (or update the password of) ``role`` and make it the owner of the database of ``admin_url``
    (a superuser's URL) and of everything in it; revoke CONNECT from PUBLIC there. Idempotent: a later
    run hands over what another role created meanwhile (an admin's migration, say)."""
    with psycopg.connect(admin_url, autocommit=True) as conn, conn.transaction():
        conn.execute(_LOCK)
        name = _login_role(conn, role, password)
        database = sql.Identifier(conn.info.dbname)
        conn.execute(sql.SQL("alter database {} owner to {}").format(database, name))
        conn.execute(sql.SQL("revoke connect, temporary on database {} from public").format(database))
        for (schema,) in conn.execute(_FOREIGN_SCHEMAS, {"role": role}).fetchall():
            conn.execute(sql.SQL("alter schema {} owner to {}").format(sql.Identifier(schema), name))
        for schema, relation, kind in conn.execute(_FOREIGN_RELATIONS, {"role": role}).fetchall():
            conn.execute(
                sql.SQL("alter {} {} owner to {}").format(
                    sql.SQL(_ALTER[kind]), sql.Identifier(schema, relation), name
                )
            )
        for schema, type_name in conn.execute(_FOREIGN_TYPES, {"role": role}).fetchall():  # enums, domains
            conn.execute(sql.SQL("alter type {} owner to {}").format(sql.Identifier(schema, type_name), name))
