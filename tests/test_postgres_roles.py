"""PostgreSQL least privilege (issue 19): the scoring service's own role writes the prediction log (its
three tables, through the real ``PredictionWriter`` and the retention) and is refused everything else.
On the suite's real PostgreSQL; the role gets a name of its own (roles are per server) and is dropped."""

from __future__ import annotations

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
from rtml.stack.roles import ensure_scorer_role


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
