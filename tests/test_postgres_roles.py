"""PostgreSQL least privilege (issue 19): the scoring service's own role writes the prediction log (its
three tables, through the real ``PredictionWriter`` and the retention) and is refused everything else;
the platform's, Dagster's and MLflow's roles own their databases (MLflow's real migrations run as its role)
and cannot connect to another's. On the suite's real PostgreSQL; each role gets a name of its own (roles are
per server) and is dropped."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from rtml.monitoring import retention
from rtml.monitoring.predictions import PredictionWriter, ServedFeaturesRow, ShadowRow, prediction_row
from rtml.stack import postgres
from rtml.stack.roles import ensure_owner_role, ensure_scorer_role


@pytest.fixture(scope="module")
def scorer_db(scratch_database: Callable[[str], str]) -> Iterator[tuple[str, str]]:
    """(admin URL, scorer URL) of a fresh platform database whose scorer role was provisioned."""
    admin = scratch_database("roles")
    postgres.ensure_schemas(admin)
    role = f"rtml_scorer_{uuid.uuid4().hex[:8]}"
    ensure_scorer_role(admin, "first-password", role)
    ensure_scorer_role(admin, "second-password", role)  # idempotent: run by every `rtml up`
    scorer = (
        make_url(admin).set(username=role, password="second-password").render_as_string(hide_password=False)
    )
    yield admin, scorer
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'drop owned by "{role}"')
        conn.execute(f'drop role "{role}"')


def test_the_scorer_role_writes_the_prediction_log_and_nothing_else(
    scorer_db: tuple[str, str], tmp_path: Path
) -> None:
    admin, scorer = scorer_db
    now = datetime.now(UTC)
    request = uuid.uuid4().hex
    writer = PredictionWriter(scorer, spill_dir=tmp_path / "spill", flush_ms=20)
    transaction = {
        "transaction_id": "t-roles",
        "customer_id": "c1",
        "merchant_id": "m1",
        "amount": 10.0,
        "currency": "EUR",
        "channel": "pos",
        "timestamp": now,
    }
    writer.put(
        prediction_row(
            transaction,
            request_id=request,
            model_version="1",
            probability=0.25,
            decision="approve",
            scored_at=now,
        )
    )
    writer.put(ShadowRow(request, "t-roles", "2", 0.5, "review", now - timedelta(days=400)))
    writer.put(
        ServedFeaturesRow(request, "t-roles", "1", now, now - timedelta(days=400), "merged", {}, {"x": 1.0})
    )
    writer.close()
    assert writer.status()["database"] == "ok" and writer.written == 1 and writer.spilled == 0, (
        writer.status()
    )
    with psycopg.connect(admin) as conn:
        for table in ("predictions", "shadow_predictions", "served_features"):
            count = conn.execute(f"select count(*) from monitoring.{table} where request_id = %s", (request,))
            assert count.fetchone() == (1,), table
    # the retention runs as the scorer too: the 400-day-old shadow and feature rows go
    deleted = retention.purge_all(scorer, {t: 30.0 for t in retention.TABLES})
    assert deleted == {t: 1 for t in retention.TABLES}

    refused = [
        "select * from raw.transactions limit 1",
        "create table raw.mine (x int)",
        "create table monitoring.mine (x int)",
        "create schema mine",
        "update monitoring.predictions set probability = 0",
        "delete from monitoring.predictions",
        "drop table monitoring.served_features",
    ]
    with psycopg.connect(scorer, autocommit=True) as conn:
        for statement in refused:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
        role = conn.execute(
            "select rolsuper, rolcreatedb, rolcreaterole from pg_roles where rolname = current_user"
        )
        assert role.fetchone() == (False, False, False)


def _as(url: str, role: str, password: str) -> str:
    return make_url(url).set(username=role, password=password).render_as_string(hide_password=False)


@pytest.fixture
def owner_roles(scratch_database: Callable[[str], str]) -> Iterator[dict[str, tuple[str, str]]]:
    """{purpose: (admin URL, role URL)} of two fresh databases, each owned by a role of its own."""
    token = uuid.uuid4().hex[:8]
    made = {
        purpose: (scratch_database(f"own_{purpose}_{token}"), f"rtml_{purpose}_{token}")
        for purpose in ("mlflow", "platform")
    }
    yield {purpose: (admin, _as(admin, role, "pw")) for purpose, (admin, role) in made.items()}
    for admin, role in made.values():
        maintenance = make_url(admin).set(database="postgres").render_as_string(hide_password=False)
        with psycopg.connect(maintenance, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{make_url(admin).database}" with (force)')
            conn.execute(f'drop role if exists "{role}"')


def test_each_service_role_owns_its_database_and_reaches_no_other(
    owner_roles: dict[str, tuple[str, str]],
) -> None:
    platform_admin, platform = owner_roles["platform"]
    # what an earlier deploy left, created by the superuser: the new owner must be able to change all of it
    with psycopg.connect(platform_admin, autocommit=True) as conn:
        conn.execute("create schema features")
        conn.execute("create table features.old (id serial primary key, v int)")
        conn.execute("create table features.ident (id int generated always as identity, v int)")
        conn.execute("create view features.old_view as select v from features.old")
        conn.execute("create type features.mood as enum ('ok')")
    role = make_url(platform).username
    ensure_owner_role(platform_admin, role, "first")
    ensure_owner_role(platform_admin, role, "pw")  # idempotent: run by every `rtml up`
    with psycopg.connect(platform, autocommit=True) as conn:
        conn.execute("alter table features.old add column w int")  # dbt and migrations alter their tables
        conn.execute("insert into features.old (v) values (1)")  # the serial's sequence came along
        conn.execute("insert into features.ident (v) values (1)")
        conn.execute("drop view features.old_view")
        conn.execute("alter type features.mood add value 'bad'")
        conn.execute("create schema monitoring")
        conn.execute("create table monitoring.mine (x int)")
        assert conn.execute(
            "select rolsuper, rolcreatedb, rolcreaterole from pg_roles where rolname = current_user"
        ).fetchone() == (False, False, False)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("create database other")

    mlflow_admin, mlflow = owner_roles["mlflow"]
    ensure_owner_role(mlflow_admin, make_url(mlflow).username, "pw")
    # MLflow's own migrations, as its role: they create and alter every table of the backend store
    sqlalchemy_url = (
        make_url(mlflow).set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
    )
    upgrade = subprocess.run(
        [sys.executable, "-m", "mlflow", "db", "upgrade", sqlalchemy_url],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert upgrade.returncode == 0, upgrade.stderr[-2000:]
    with psycopg.connect(mlflow_admin) as conn:
        owners = conn.execute(
            "select distinct tableowner from pg_tables where schemaname = 'public'"
        ).fetchall()
    assert owners == [(make_url(mlflow).username,)]

    # CONNECT is revoked from PUBLIC: neither role reaches the other's database
    for own, other in ((platform, mlflow_admin), (mlflow, platform_admin)):
        intruder = make_url(own).set(database=make_url(other).database).render_as_string(hide_password=False)
        with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
            psycopg.connect(intruder).close()
