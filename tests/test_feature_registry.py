"""The feature registry read from the dbt manifest, and the dbt connection environment (no database)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtml.features.dbt import dbt_env, ensure_manifest
from rtml.features.feature_registry import DTYPES, load_registry


@pytest.fixture(scope="module")
def registry():  # type: ignore[no-untyped-def]
    ensure_manifest()  # `dbt parse` when target/manifest.json is missing
    return load_registry()


def test_feature_views_and_their_features(registry) -> None:  # type: ignore[no-untyped-def]
    customer = registry.by_entity("customer")
    assert (customer.name, customer.entity_key, customer.relation) == (
        "customer_features",
        "customer_id",
        "features.customer_features",
    )
    assert customer.online_relation == "features.customer_features_latest"
    assert {
        "txn_count_1h",
        "amount_sum_24h",
        "amount_zscore_30d",
        "distinct_merchants_24h",
        "seconds_since_prev_txn",
        "night_share_7d",
        "is_new_merchant",
    } <= set(customer.feature_names)
    merchant = registry.view("merchant_features")
    assert merchant.entity_key == "merchant_id"
    assert merchant.feature("merchant_fraud_rate_30d").window == "30d"
    assert len(registry.manifest_hash) == 64


def test_every_feature_is_fully_defined(registry) -> None:  # type: ignore[no-untyped-def]
    for feature in registry.features:
        assert feature.description and feature.owner and feature.version >= 1, feature
        assert feature.dtype in DTYPES and feature.window, feature
        assert feature.online in {"stored", "request"}


def test_request_time_features_are_derived_by_the_scorer(registry) -> None:  # type: ignore[no-untyped-def]
    customer = registry.view("customer_features")
    derived = {f.name for f in customer.features if f.online == "request"}
    assert derived == {"amount_zscore_30d", "seconds_since_prev_txn", "is_new_merchant"}
    assert all(f.name not in derived for f in customer.stored_features)


def test_dbt_env_from_tcp_and_socket_urls() -> None:
    env = dbt_env("postgresql://alice:s%40cret@db.example:6543/rtml")
    assert (env["DBT_HOST"], env["DBT_PORT"], env["DBT_USER"], env["DBT_PASSWORD"], env["DBT_DBNAME"]) == (
        "db.example",
        "6543",
        "alice",
        "s@cret",
        "rtml",
    )
    socket = dbt_env("postgresql://postgres:@/rtml?host=/tmp/pg%20sock")
    assert (socket["DBT_HOST"], socket["DBT_PORT"], socket["DBT_USER"], socket["DBT_PASSWORD"]) == (
        "/tmp/pg sock",
        "5432",
        "postgres",
        "",
    )
    assert socket["DBT_SEND_ANONYMOUS_USAGE_STATS"] == "false"
    with pytest.raises(ValueError):
        dbt_env("mysql://x@y/z")


def test_definitions_hash_follows_definitions_not_invocations() -> None:
    import copy
    import json

    from rtml.features.feature_registry import definitions_hash

    manifest = json.loads(ensure_manifest().read_text())
    base = definitions_hash(manifest)
    rerun = copy.deepcopy(manifest)  # another dbt invocation, another target schema: same definitions
    rerun["metadata"]["invocation_id"] = "another"
    rerun["metadata"]["generated_at"] = "2030-01-01T00:00:00Z"
    for node in rerun["nodes"].values():
        node["schema"] = "elsewhere"
    assert definitions_hash(rerun) == base

    edited = copy.deepcopy(manifest)
    node = edited["nodes"]["model.rtml.customer_features"]
    node["columns"]["txn_count_1h"]["description"] = "changed"
    assert definitions_hash(edited) != base


def test_a_manifest_older_than_a_project_file_is_stale(tmp_path: Path) -> None:
    """After a `git pull` or an edit, the code location parses again: a stale manifest lacks the new
    tests, and Dagster fails on the events of tests it does not know (seen after a merge)."""
    import os
    import time

    from rtml.features.dbt import manifest_is_stale, project_dir

    manifest = tmp_path / "manifest.json"
    manifest.write_text("{}")
    newest = max(f.stat().st_mtime for f in (project_dir() / "models").rglob("*.sql"))
    os.utime(manifest, (newest - 60, newest - 60))
    assert manifest_is_stale(manifest)
    os.utime(manifest, (time.time() + 60, time.time() + 60))
    assert not manifest_is_stale(manifest)
