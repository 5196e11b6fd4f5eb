"""The speed layer served (issue 16): the hourly ``online_features`` push carries dbt's
``customer_stream_snapshot`` into Redis, and the scorer's one online read (``scoring.lookup``, as the
scoring service calls it) returns each customer's features exactly as ``customer_features`` defines them
at the transaction's time.

The issue's burst on real PostgreSQL, dbt and Redis: a card with a month of history makes eight payments
one second apart, each at a new merchant. Each payment is read before its event is applied (the scorer
publishes after answering; the worker's apply is called directly here), and the model's input row holds
dbt's values for that transaction, bit for bit (the z-score too). The hourly push moves the watermark in
the middle of the burst (dbt's snapshot rebuilt, the asset materialized): the events it now holds are
dropped from the state and the features stay exact across it. Past the horizon, and with the speed layer
off, the batch values are read, and the reason is reported.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest
from psycopg.rows import dict_row

from rtml.config import OnlineSettings, get_settings
from rtml.defs.online.assets import online_features
from rtml.defs.online.resources import RedisResource, RedisServer
from rtml.defs.online.sensors import heal_sensor
from rtml.defs.resources import PostgresServer
from rtml.features import request_features
from rtml.features.dbt import run_dbt
from rtml.features.feature_registry import get_registry
from rtml.features.online import OnlineStore
from rtml.features.online.reader import same_value
from rtml.serving.scoring import lookup
from rtml.streaming.events import DAY_US, HOUR_US, SECOND_US, TransactionEvent, from_us
from rtml.streaming.features import FEATURE_COLUMNS
from rtml.streaming.state import Outcome
from rtml.training.dataset import feature_spec
from tests.test_streaming_features import W1_US, load, snapshot_env

CARD = "burst-card"
BURST_US = W1_US + 5 * 60 * SECOND_US  # five minutes after the watermark W1
W2_US = BURST_US + 3 * SECOND_US + 500_000  # the hourly push lands between the 4th and the 5th payment
HORIZON_US = 3 * HOUR_US  # tests.test_streaming_features.HORIZON
BURST_AMOUNTS = [1.0, 1.0, 2.5, 99.99, 249.0, 0.99, 480.0, 12.345]  # 12.345: PostgreSQL rounds it up


def event(tid: str, customer: str, merchant: str, amount: float, ts_us: int) -> TransactionEvent:
    return TransactionEvent(tid, customer, merchant, amount, ts_us, "grocery", "EUR", "pos", "DE")


def world() -> tuple[list[TransactionEvent], list[TransactionEvent]]:
    """(history, burst): the card's month at two merchants (in every window before W1, some leaving the
    1-hour and 24-hour windows during the burst's horizon), other customers at the burst's merchants."""
    past_hours = [-29 * 24, -20 * 24, -7 * 24 - 0.5, -6 * 24, -3 * 24, -26, -23.9, -5, -0.95, -0.2]
    history = [
        event(f"{CARD}-past-{i}", CARD, ("m-home", "m-shop")[i % 2], 10 + 7.31 * i, W1_US + int(h * HOUR_US))
        for i, h in enumerate(past_hours)
    ]
    history += [
        event(f"other-{c}-{i}", f"other-{c}", f"m-new-{(c + i) % 8}", 5.0 + c, W1_US - (i + 1) * DAY_US // 3)
        for c in range(5)
        for i in range(12)
    ]
    burst = [
        event(f"{CARD}-burst-{i}", CARD, f"m-new-{i}", amount, BURST_US + i * SECOND_US)
        for i, amount in enumerate(BURST_AMOUNTS)
    ]
    return history, burst


def build_snapshot(url: str, as_of_us: int, *select: str) -> None:
    proc = run_dbt(["run", "--select", *select], url, check=False, extra_env=snapshot_env(as_of_us))
    assert proc.returncode == 0, proc.stdout[-5000:]


@pytest.fixture(scope="module")
def burst_db(scratch_database: Callable[[str], str], separate_dbt_target: Path) -> Iterator[dict[str, Any]]:
    """Everything loaded through the validated loader; dbt's features, the online tables and the
    snapshot at W1; dbt's ``customer_features`` rows of the burst."""
    history, burst = world()
    url = scratch_database("speed_read")
    load(url, history + burst)
    build_snapshot(
        url,
        W1_US,
        "--full-refresh",
        "+customer_features_latest",
        "+merchant_features_latest",
        "customer_features",
        "customer_stream_snapshot",
    )
    with psycopg.connect(url) as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute("select * from features.customer_features where customer_id = %s", (CARD,))
        dbt = {row["transaction_id"]: row for row in cur}
    get_registry.cache_clear()  # the asset reads the registry of this module's dbt target
    yield {"url": url, "burst": burst, "dbt": dbt}
    get_registry.cache_clear()


@pytest.fixture(params=["server", "cluster"])
def redis_resource(request: pytest.FixtureRequest, redis_url: str) -> Iterator[RedisResource]:
    """The session's Redis, or a real Redis Cluster of three masters (``redis_cluster_url``)."""
    cluster = request.param == "cluster"
    resource = RedisServer(
        url=request.getfixturevalue("redis_cluster_url") if cluster else redis_url,
        key_prefix=f"rtmltest-speedread-{uuid.uuid4().hex[:8]}",
        cluster=cluster,
    )
    yield resource
    store = resource.online_store()
    store.purge()
    store.close()


def hourly_push(url: str, redis_resource: RedisResource) -> dict[str, Any]:
    """The ``online_features`` asset, as the hourly refresh materializes it: its metadata."""
    result = dg.materialize(
        [online_features],
        resources={"postgres": PostgresServer(url=url), "redis": redis_resource, "settings": get_settings()},
        raise_on_error=False,
    )
    assert result.success
    [materialization] = result.asset_materializations_for_node("online_features")
    return {key: getattr(value, "value", value) for key, value in materialization.metadata.items()}


def dbt_value(value: Any) -> float:
    """A ``customer_features`` value as the model receives it (``request_features.model_row``)."""
    return math.nan if value is None else float(value)


def test_a_burst_is_scored_with_dbt_s_exact_features_across_the_hourly_push(
    burst_db: dict[str, Any], redis_resource: RedisResource
) -> None:
    url, burst, dbt = burst_db["url"], burst_db["burst"], burst_db["dbt"]
    build_snapshot(url, W1_US, "customer_stream_snapshot")  # an earlier run moved it on to W2
    store = redis_resource.online_store()
    assert store.speed is not None  # on by default (speed_layer_enabled)
    spec = feature_spec(store.registry)
    served = [name for name in FEATURE_COLUMNS if name in spec.numeric]
    assert len(served) == len(FEATURE_COLUMNS), served  # the model sees every customer feature
    with psycopg.connect(url) as conn:
        customers = conn.execute("select count(*) from features.customer_stream_snapshot").fetchone()
    try:
        first = hourly_push(url, redis_resource)
        assert first["speed_layer/customers"] == customers[0] == 6  # type: ignore[index]
        assert first["speed_layer/as_of"] == from_us(W1_US).isoformat()
        assert store.speed.watermark() == (W1_US, W1_US + HORIZON_US)
        if redis_resource.cluster:  # a view's keys in its own slot; the customers' hashes spread
            namespace = store.current_namespaces()["customer_features"]
            assert namespace is not None
            slots = {store.client.keyslot(k) for k in (store.keys.pointer("customer_features"), namespace)}
            assert len(slots) == 1
            hashes = [store.speed.key(c) for c in [CARD, *(f"other-{c}" for c in range(5))]]
            assert len({store.client.get_node_from_key(k).name for k in hashes}) > 1

        rows, float_zscore_differs = [], 0
        for index, payment in enumerate(burst):
            if index == 4:  # the next hourly refresh: dbt's snapshot at W2, pushed by the asset
                build_snapshot(url, W2_US, "customer_stream_snapshot")
                second = hourly_push(url, redis_resource)
                assert second["speed_layer/as_of"] == from_us(W2_US).isoformat()
                assert store.speed.watermark() == (W2_US, W2_US + HORIZON_US)
                # the events the new snapshot holds were dropped from the card's state
                held = store.client.hkeys(store.speed.key(CARD))
                assert sorted(k.decode() for k in held) == ["b", "w"]  # type: ignore[union-attr]
            txn = {
                "amount": payment.amount,
                "timestamp": payment.event_ts,
                "merchant_id": payment.merchant_id,
            }
            [found] = lookup(
                store,
                [(CARD, payment.merchant_id)],
                fail_open=False,
                at=[(payment.event_ts, payment.amount)],
            )
            assert found.speed_layer == "merged", (index, found.speed_layer)
            row = request_features.model_row(txn, found.customer, found.merchant, spec.numeric, [])
            want = dbt[payment.transaction_id]
            mismatched = {
                name: (row[name], dbt_value(want[name]))
                for name in served
                if not same_value(row[name], dbt_value(want[name]))
            }
            assert not mismatched, (index, mismatched)
            # dividing the doubles (the batch path) is close but not always dbt's double
            doubles = request_features.amount_zscore_30d(
                payment.amount, found.customer["amount_mean_30d"], found.customer["amount_std_30d"]
            )
            float_zscore_differs += not same_value(doubles, row["amount_zscore_30d"])
            rows.append(row)
            watermark = store.speed.watermark()
            assert watermark is not None
            assert store.speed.apply(payment, watermark[0]) is Outcome.APPLIED  # the worker's apply

        # each payment saw the earlier ones (on top of the card's own history, as dbt counts it)
        base_1h, base_24h = rows[0]["txn_count_1h"], rows[0]["distinct_merchants_24h"]
        assert [r["txn_count_1h"] for r in rows] == [base_1h + i for i in range(8)]
        assert [r["distinct_merchants_24h"] for r in rows] == [base_24h + i for i in range(8)]
        assert all(r["seconds_since_prev_txn"] == 1.0 for r in rows[1:])
        assert all(r["is_new_merchant"] == 1.0 for r in rows)
        assert float_zscore_differs > 0  # so the z-score comparison above can fail

        # past the snapshot's horizon (no refresh for 3 hours): the batch values, and why
        late = from_us(W2_US + HORIZON_US + 1)
        [beyond] = lookup(store, [(CARD, "m-home")], fail_open=False, at=[(late, 5.0)])
        assert beyond.speed_layer == "beyond_horizon"
        batch = store.read(CARD, "m-home").customer
        assert all(same_value(beyond.customer[k], v) for k, v in batch.items())

        # a run pushing a snapshot table older than the watermark (not rebuilt) never moves it back
        shift = "update features.customer_stream_snapshot set as_of_ts = as_of_ts {} interval '1h'"
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(shift.format("-"))  # type: ignore[arg-type]
        try:
            stale = hourly_push(url, redis_resource)
            assert stale["speed_layer/customers"] == 0 and stale["speed_layer/skipped"].startswith("older")
            assert store.speed.watermark() == (W2_US, W2_US + HORIZON_US)
        finally:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(
                    "update features.customer_stream_snapshot set as_of_ts = as_of_ts + interval '1h'"
                )
    finally:
        store.close()

    off = OnlineStore(
        redis_resource.redis_url(),
        online=OnlineSettings(key_prefix=redis_resource.key_prefix, speed_layer_enabled=False),
        cluster=redis_resource.cluster,
    )
    try:
        [plain] = lookup(off, [(CARD, "m-home")], fail_open=False, at=[(burst[-1].event_ts, 5.0)])
        assert plain.speed_layer == "disabled" and off.push_speed_snapshot(url) is None
    finally:
        off.close()


def test_the_heal_sensor_rebuilds_an_emptied_speed_layer(
    burst_db: dict[str, Any], redis_resource: RedisResource
) -> None:
    """The batch views are there but the speed layer's state is gone (flushed): the self-heal sensor
    requests its rebuild, whose push restores the snapshot and its watermark."""
    url = burst_db["url"]
    resources = {"postgres": PostgresServer(url=url), "redis": redis_resource, "settings": get_settings()}
    store = redis_resource.online_store()
    assert store.speed is not None
    try:
        hourly_push(url, redis_resource)
        watermark = store.speed.watermark()
        assert watermark is not None
        with dg.DagsterInstance.ephemeral() as instance:

            def tick() -> dg.SensorResult:
                with dg.build_sensor_context(instance=instance, resources=resources) as context:
                    return heal_sensor(OnlineSettings())(context)

            assert not tick().run_requests  # everything present
            assert store.speed.purge() > 0
            [request] = tick().run_requests
            assert request.tags["rtml/trigger"] == "online_store_heal_sensor: pointers of speed_layer gone"
            rebuilt = dg.materialize(
                [online_features], resources=resources, run_config=request.run_config, instance=instance
            )
            assert rebuilt.success and store.speed.watermark() == watermark
            assert not tick().run_requests
    finally:
        store.close()
