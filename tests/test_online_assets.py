"""The ``online_features`` asset and its parity check through Dagster, on real PostgreSQL and Redis:
the first materialization pushes everything (full), the next one writes nothing (incremental, nothing
changed), ``full_refresh`` switches to a new namespace; the parity check passes each time."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest

from rtml.defs.online.assets import online_features
from rtml.defs.online.checks import online_offline_parity
from rtml.defs.online.resources import RedisResource
from rtml.defs.resources import PostgresResource
from rtml.features.registry import get_registry
from tests.test_online_store import build_latest_db


@pytest.fixture(scope="module")
def latest_db(scratch_database: Callable[[str], str], separate_dbt_target: Path) -> Iterator[str]:
    url = build_latest_db(scratch_database("online_assets"))
    get_registry.cache_clear()  # the asset reads the registry of this module's dbt target
    yield url
    get_registry.cache_clear()


@pytest.fixture
def redis_resource(redis_url: str) -> Iterator[RedisResource]:
    resource = RedisResource(url=redis_url, key_prefix=f"rtmltest-assets-{uuid.uuid4().hex[:8]}")
    yield resource
    store = resource.online_store()
    store.purge()
    store.close()


def _materialize(
    latest_db: str, redis_resource: RedisResource, full_refresh: bool = False
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [online_features, online_offline_parity],
        resources={"postgres": PostgresResource(url=latest_db), "redis": redis_resource},
        run_config={"ops": {"online_features": {"config": {"full_refresh": full_refresh}}}},
    )


def _metadata(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    [materialization] = result.asset_materializations_for_node("online_features")
    return {key: getattr(value, "value", value) for key, value in materialization.metadata.items()}


def _parity_passed(result: dg.ExecuteInProcessResult) -> bool:
    [evaluation] = result.get_asset_check_evaluations()
    assert evaluation.check_name == "online_offline_parity"
    return evaluation.passed


def test_online_features_asset_pushes_and_checks_parity(
    latest_db: str, redis_resource: RedisResource
) -> None:
    with psycopg.connect(latest_db) as conn:
        customers, merchants = conn.execute(
            "select (select count(*) from features.customer_features_latest),"
            " (select count(*) from features.merchant_features_latest)"
        ).fetchone()  # type: ignore[misc]

    first = _materialize(latest_db, redis_resource)
    assert first.success and _parity_passed(first)
    meta = _metadata(first)
    assert meta["entities_written"] == meta["entities_total"] == customers + merchants
    assert meta["customer_features/mode"] == meta["merchant_features/mode"] == "full"
    assert int(meta["bytes_sent"]) > 0 and float(meta["duration_s"]) > 0

    again = _metadata(second := _materialize(latest_db, redis_resource))
    assert second.success and _parity_passed(second)
    assert again["customer_features/mode"] == "incremental" and again["entities_written"] == 0
    assert again["customer_features/unchanged"] == customers

    rebuilt = _metadata(third := _materialize(latest_db, redis_resource, full_refresh=True))
    assert third.success and _parity_passed(third)
    assert rebuilt["customer_features/namespace"] != meta["customer_features/namespace"]
    assert rebuilt["deleted_namespaces"] == sorted(
        [meta["customer_features/namespace"], meta["merchant_features/namespace"]]
    )
