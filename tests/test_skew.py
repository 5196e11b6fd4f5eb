"""The training-serving skew check against real PostgreSQL, dbt and Redis.

A world is built and pushed to the online store (batch views and the speed layer's snapshot); an hour
of transactions after the watermark is then "scored" exactly as the scorer does — ``OnlineStore.read_many``
at the transaction's time (with the speed layer: ``merged``; without: the batch values), the scorer's
``model_row``, each event applied to the speed layer after its read — and logged to
``monitoring.served_features``. Some customers and merchants are new (defaults served). Then the hour is
loaded and dbt builds its features, and ``check_skew`` compares.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from rtml.config import OnlineSettings, get_settings
from rtml.features.dbt import run_dbt
from rtml.features.feature_registry import FeatureRegistry, load_registry
from rtml.features.online import OnlineStore
from rtml.features.request_features import model_row
from rtml.features.sample_data import load_sample, make_labels, make_transactions
from rtml.monitoring.predictions import ensure_table
from rtml.monitoring.skew import Build, check_skew
from rtml.streaming.events import TransactionEvent, to_us
from rtml.training.dataset import feature_spec

START = datetime(2026, 11, 1, tzinfo=UTC)


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}


@pytest.fixture(scope="module")
def world(
    scratch_database: Callable[[str], str], separate_dbt_target: Path, redis_url: str
) -> Iterator[dict[str, Any]]:
    url = scratch_database("skew")
    history = make_transactions(6_000, start=START, days=3, customers=300, merchants=60)
    load_sample(url, history, make_labels(history))
    models = [
        "+customer_features_latest",
        "+merchant_features_latest",
        "customer_features",
        "customer_stream_snapshot",
    ]
    proc = run_dbt(["run", "--full-refresh", "--select", *models], url, check=False)
    assert proc.returncode == 0, proc.stdout[-5000:]
    registry = load_registry()
    prefix = f"rtmltest-skew-{uuid.uuid4().hex[:8]}"
    speed = OnlineStore(
        redis_url, registry, online=OnlineSettings(key_prefix=prefix, speed_layer_enabled=True)
    )
    batch = OnlineStore(
        redis_url, registry, online=OnlineSettings(key_prefix=prefix, speed_layer_enabled=False)
    )
    try:
        pushed_from = datetime.now(UTC)
        speed.push_from_postgres(url, full=True)
        pushed = speed.push_speed_snapshot(url)
        pushed_until = datetime.now(UTC)
        assert pushed is not None and pushed.as_of is not None
        namespaces = speed.current_namespaces()
        builds = [
            Build(
                view,
                str(namespaces[view]),
                datetime.fromtimestamp(int(speed.meta(view)["as_of_us"]) / 1e6, UTC),
                pushed_from,
                pushed_until,
            )
            for view in ("customer_features", "merchant_features")
        ]
        watermark = builds[0].as_of
        # the hour after the watermark: known customers and merchants, and some the store never saw
        live = make_transactions(
            400, start=watermark, days=1 / 24, customers=330, merchants=66, seed=11, id_prefix="live"
        )
        spec = feature_spec(registry)
        ensure_table(url)
        served = _score(live, speed, batch, spec.numeric, spec.categorical, to_us(pushed.as_of))
        with psycopg.connect(url) as conn:
            conn.cursor().executemany(
                "insert into monitoring.served_features values (%s, %s, %s, %s, now(), %s, %s, %s)",
                [
                    (
                        r["request_id"],
                        r["transaction_id"],
                        "1",
                        r["event_ts"],
                        r["speed_layer"],
                        Jsonb(r["versions"]),
                        Jsonb(r["features"]),
                    )
                    for r in served
                ],
            )
        load_sample(url, live, replace=False)
        proc = run_dbt(["run", "--select", "stg_transactions", "customer_features"], url, check=False)
        assert proc.returncode == 0, proc.stdout[-5000:]
        yield {"url": url, "registry": registry, "builds": builds, "served": served}
    finally:
        speed.purge()
        speed.close()
        batch.close()


def _score(
    live: Any,
    speed: OnlineStore,
    batch: OnlineStore,
    numeric: list[str],
    categorical: list[str],
    watermark_us: int,
) -> list[dict[str, Any]]:
    """Every transaction scored in time order as the scorer does, then published to the speed layer;
    every third read without the speed layer (the batch values), and one request answered without Redis."""
    assert speed.speed is not None
    served = []
    for i, txn in enumerate(live.to_dict("records")):
        ts = txn["event_ts"].to_pydatetime()
        request = {**txn, "timestamp": ts}
        store = batch if i % 3 == 0 else speed
        found = store.read_many([(txn["customer_id"], txn["merchant_id"])], at=[(ts, float(txn["amount"]))])[
            0
        ]
        speed_layer, customer, merchant = found.speed_layer, found.customer, found.merchant
        if i == 5:  # Redis down: the scorer serves the defaults (fail open) and says so
            speed_layer = "redis_unavailable"
            customer, merchant = speed.customer_view.defaults(), speed.merchant_view.defaults()
        served.append(
            {
                "request_id": f"req-{i}",
                "transaction_id": txn["transaction_id"],
                "event_ts": ts,
                "speed_layer": speed_layer,
                "versions": found.versions,
                "features": _jsonable(model_row(request, customer, merchant, numeric, categorical)),
            }
        )
        event = TransactionEvent(
            txn["transaction_id"], txn["customer_id"], txn["merchant_id"], float(txn["amount"]), to_us(ts)
        )
        speed.speed.apply(event, watermark_us)
    return served


def test_honest_served_features_match_the_offline_store_exactly(world: dict[str, Any]) -> None:
    report = check_skew(world["url"], world["registry"], world["builds"], sample_size=2_000)
    served = world["served"]
    assert report.sampled == len(served) and report.degraded == 1 and report.unverifiable == 0
    assert report.compared == len(served) - 1
    # both ways of serving a customer were exercised, and new entities got (and were checked as) defaults
    assert report.cases["merged"] > 100 and report.cases["batch"] > 100, report.cases
    assert any(r["features"]["txn_count_30d"] == 0 for r in served[6:]), "no unknown customer was served"
    assert report.passed, report.summary
    registry: FeatureRegistry = world["registry"]
    names = {
        *registry.view("customer_features").feature_names,
        *registry.view("merchant_features").feature_names,
    }
    assert set(report.features) == names
    assert all(s.compared == report.compared and s.exact_share == 1.0 for s in report.features.values())


def test_one_tampered_served_feature_fails_naming_it(world: dict[str, Any]) -> None:
    request_id = "req-42"
    tamper = (
        "update monitoring.served_features set features = jsonb_set(features, '{txn_count_1h}', "
        "to_jsonb((features->>'txn_count_1h')::float + %s)) where request_id = %s"
    )
    with psycopg.connect(world["url"], autocommit=True) as conn:
        conn.execute(tamper, (1, request_id))
        try:
            report = check_skew(world["url"], world["registry"], world["builds"], sample_size=2_000)
        finally:
            conn.execute(tamper, (-1, request_id))
    assert not report.passed
    assert report.failing == ["txn_count_1h"], report.summary
    stats = report.features["txn_count_1h"]
    assert stats.examples == [request_id] and stats.max_abs_diff == 1.0
    assert stats.compared - stats.exact == 1
    assert "txn_count_1h" in report.summary


def test_a_request_of_an_unknown_build_is_not_compared(world: dict[str, Any]) -> None:
    """Without the build that was served, the batch values cannot be recomputed: counted, not guessed."""
    builds = [b for b in world["builds"] if b.view != "merchant_features"]
    report = check_skew(world["url"], world["registry"], builds, sample_size=50)
    assert report.compared > 0 and report.unverifiable == report.compared == report.sampled - report.degraded
    assert "merchant_txn_count_7d" not in report.features and report.passed


def test_the_asset_check_finds_the_served_build_in_dagsters_history(world: dict[str, Any]) -> None:
    """``training_serving_skew`` on ``online_features``: the builds come from the asset's materializations
    (the metadata the asset records), the verdict is ERROR naming the feature."""
    import dagster as dg

    from rtml.defs.online.checks import pushes, training_serving_skew
    from rtml.defs.resources import PostgresServer

    by_view = {b.view: b for b in world["builds"]}
    with dg.DagsterInstance.ephemeral() as instance:
        instance.report_runless_asset_event(
            dg.AssetMaterialization(
                "online_features",
                metadata={
                    "duration_s": 0.5,
                    **{f"{v}/namespace": b.namespace for v, b in by_view.items()},
                    **{f"{v}/newest_event_online": b.as_of.isoformat() for v, b in by_view.items()},
                },
            )
        )
        found = pushes(instance, datetime.now(UTC) - timedelta(hours=1))
        assert {(b.view, b.namespace, b.as_of) for b in found} == {
            (b.view, b.namespace, b.as_of) for b in by_view.values()
        }
        context = dg.build_asset_check_context(
            instance=instance,
            resources={"postgres": PostgresServer(url=world["url"]), "settings": get_settings()},
        )
        # the requests scored an hour before that push (no build of theirs known), then an hour after it,
        # then one of them tampered with; put back as they were afterwards
        shift = "update monitoring.served_features set scored_at = scored_at + %s * interval '1 hour'"
        fraud_rate = (
            "update monitoring.served_features set features = "
            "jsonb_set(features, '{merchant_fraud_rate_30d}', %s) where request_id = 'req-7'"
        )
        with psycopg.connect(world["url"], autocommit=True) as conn:
            original = conn.execute(
                "select features->'merchant_fraud_rate_30d' from monitoring.served_features "
                "where request_id = 'req-7'"
            ).fetchone()
            assert original is not None
            hours = 0
            try:
                conn.execute(shift, (-1,))
                hours = -1
                honest = training_serving_skew(context)
                conn.execute(shift, (2,))
                hours = 1
                after = training_serving_skew(context)
                conn.execute(fraud_rate, (Jsonb(0.5),))
                tampered = training_serving_skew(context)
            finally:
                conn.execute(shift, (-hours,))
                conn.execute(fraud_rate, (Jsonb(original[0]),))
    for result in (honest, after, tampered):
        assert isinstance(result, dg.AssetCheckResult) and result.severity == dg.AssetCheckSeverity.ERROR
    # before the push's record the requests' build is unknown: only what needs no build (the merged
    # customer features: dbt's row of the transaction) is compared, the rest counted unverifiable
    assert honest.passed and set(honest.metadata["cases"].value) == {"merged"}
    assert honest.metadata["requests_unverifiable"].value == len(world["served"]) - 1
    assert after.passed and after.metadata["requests_compared"].value == len(world["served"]) - 1, (
        after.description
    )
    assert not tampered.passed and tampered.metadata["failing_features"].value == ["merchant_fraud_rate_30d"]
    assert "merchant_fraud_rate_30d" in str(tampered.description)
