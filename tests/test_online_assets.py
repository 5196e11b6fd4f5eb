"""The ``online_features`` asset and its parity check through Dagster, on real PostgreSQL and Redis:
the first materialization pushes everything (full), the next one writes nothing (incremental, nothing
changed), ``full_refresh`` switches to a new namespace; the parity check passes each time. A truncated
``*_latest`` table fails the push (nothing written) until the override; a corrupted Redis field fails
the parity check, which names the entity and the field."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest

from rtml.config import get_settings
from rtml.defs.online.assets import online_features
from rtml.defs.online.checks import online_offline_parity
from rtml.defs.online.resources import RedisResource
from rtml.defs.resources import PostgresResource
from rtml.features.registry import get_registry
from tests.test_online_store import build_latest_db, shrunk_table


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
    latest_db: str, redis_resource: RedisResource, full_refresh: bool = False, **config: bool
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [online_features, online_offline_parity],
        resources={"postgres": PostgresResource(url=latest_db), "redis": redis_resource},
        run_config={"ops": {"online_features": {"config": {"full_refresh": full_refresh, **config}}}},
        raise_on_error=False,
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


def test_a_truncated_latest_table_fails_the_push_until_overridden(
    latest_db: str, redis_resource: RedisResource
) -> None:
    assert _materialize(latest_db, redis_resource).success
    before = redis_resource.online_store().current_namespaces()
    with shrunk_table(latest_db, "customer_features_latest", "customer_id < 'c0005'"):
        with psycopg.connect(latest_db) as conn:
            kept, total = conn.execute(
                "select (select count(*) from features.customer_features_latest),"
                " (select count(*) from features.customer_features_latest_full)"
            ).fetchone()  # type: ignore[misc]
        assert 0 < kept < total / 2

        refused = _materialize(latest_db, redis_resource)
        assert not refused.success
        failure = refused.failure_data_for_node("online_features")
        assert failure is not None and failure.user_failure_data is not None
        description = str(failure.user_failure_data.description)
        assert description.startswith(
            f"refused to push the online store (nothing was written): customer_features: {total - kept:,} "
            f"of the {total:,} entities in Redis"
        ), description
        assert "full_refresh: true\n      allow_mass_removal: true" in description
        meta = {k: v.value for k, v in failure.user_failure_data.metadata.items()}
        assert meta["customer_features/would_remove"] == total - kept
        assert meta["customer_features/table_rows"] == kept
        assert redis_resource.online_store().current_namespaces() == before  # untouched

        overridden = _materialize(latest_db, redis_resource, full_refresh=True, allow_mass_removal=True)
        assert overridden.success and _parity_passed(overridden)
        meta = _metadata(overridden)
        assert (meta["customer_features/entities"], meta["customer_features/removed"]) == (kept, total - kept)


def test_parity_fails_on_a_corrupted_redis_field_and_names_it(
    latest_db: str, redis_resource: RedisResource, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _materialize(latest_db, redis_resource).success
    store = redis_resource.online_store()
    view = store.customer_view
    with psycopg.connect(latest_db) as conn:
        customer_id, count = conn.execute(
            "select customer_id, txn_count_30d from features.customer_features_latest limit 1"
        ).fetchone()  # type: ignore[misc]
    namespace = store.current_namespaces()["customer_features"]
    field_id = view.field_ids[view.field_names.index("txn_count_30d")]
    store.client.hset(f"{namespace}:e:{customer_id}", field_id, str(count + 1000))
    store.close()

    monkeypatch.setenv("RTML_ONLINE_PARITY_SAMPLE", "100000")  # every entity: the corrupted one too
    get_settings.cache_clear()
    try:
        # the incremental push trusts its digests: the corrupted hash is not rewritten
        result = _materialize(latest_db, redis_resource)
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert result.success and _metadata(result)["entities_written"] == 0
    [evaluation] = result.get_asset_check_evaluations()
    assert not evaluation.passed
    meta = {key: value.value for key, value in evaluation.metadata.items()}
    expected = f"customer_features/{customer_id}/txn_count_30d: postgres={count} redis={count + 1000}"
    assert meta["mismatches"] == 1 and meta["first_mismatches"] == [expected]
    assert (
        evaluation.description
        == f"differing values: 1 (first: {expected}) (compared: "
        + ", ".join(f"{view}: {n}" for view, n in meta["entities_checked"].items())
        + ")"
    )
