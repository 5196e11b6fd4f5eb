"""The online store against a real Redis and real PostgreSQL (dbt-built ``*_latest`` tables):
offline/online parity, typed reads with explicit defaults, only changed rows written on an incremental
push, an atomic version switch under concurrent readers, a new namespace for a new feature version,
TTLs, errors that reach the caller, the guard against a push that would empty a view, and a parity
check that fails when there is nothing to compare.

Every test uses a key prefix of its own and deletes only that prefix (CI runs this module against the
machine's shared Redis too).
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import redis

from rtml.config import OnlineSettings
from rtml.features.dbt import run_dbt
from rtml.features.feature_registry import FeatureRegistry, load_registry
from rtml.features.online import OnlineStore
from rtml.features.online.keys import Keys
from rtml.features.online.parity import check_parity
from rtml.features.online.source import fetch_latest
from rtml.features.online.writer import MassRemovalError, OnlineWriter
from rtml.features.sample_data import load_sample, make_labels, make_transactions

START = datetime(2026, 11, 1, tzinfo=UTC)


def build_latest_db(url: str) -> str:
    """Four days of synthetic transactions in the (fresh) database ``url``; dbt builds the online tables
    and ``customer_features``."""
    transactions = make_transactions(30_000, start=START, days=4, customers=1_500, merchants=250)
    load_sample(url, transactions, make_labels(transactions))
    select = ["+customer_features_latest", "+merchant_features_latest", "customer_features"]
    proc = run_dbt(["run", "--full-refresh", "--select", *select], url, check=False)
    assert proc.returncode == 0, proc.stdout[-5000:]
    return url


@contextmanager
def shrunk_table(url: str, table: str, keep_where: str) -> Iterator[None]:
    """``features.<table>`` holds only the rows matching ``keep_where`` inside the block (the full table
    is set aside under another name and put back afterwards)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"alter table features.{table} rename to {table}_full")
        conn.execute(
            f"create table features.{table} as select * from features.{table}_full where {keep_where}"
        )
    try:
        yield
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"drop table features.{table}")
            conn.execute(f"alter table features.{table}_full rename to {table}")


@pytest.fixture(scope="module")
def latest_db(scratch_database: Callable[[str], str], separate_dbt_target: Path) -> str:
    return build_latest_db(scratch_database("online"))


@pytest.fixture(scope="module")
def registry(latest_db: str) -> FeatureRegistry:
    return load_registry()  # the manifest of the module's own dbt target


@pytest.fixture(params=["server", "cluster"])
def store(request: pytest.FixtureRequest, redis_url: str, registry: FeatureRegistry) -> Iterator[OnlineStore]:
    """The store on the session's Redis, and on a real Redis Cluster of three masters."""
    cluster = request.param == "cluster"
    store = OnlineStore(
        request.getfixturevalue("redis_cluster_url") if cluster else redis_url,
        registry,
        online=OnlineSettings(ttl_seconds=3_600, key_prefix=f"rtmltest-online-{uuid.uuid4().hex[:8]}"),
        cluster=cluster,
    )
    try:
        yield store
    finally:
        store.purge()
        store.close()


def _scalar(url: str, sql: str) -> object:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql).fetchone()
        assert row is not None
        return row[0]


def test_full_push_matches_postgres(store: OnlineStore, latest_db: str) -> None:
    result = store.push_from_postgres(latest_db)
    customers = _scalar(latest_db, "select count(*) from features.customer_features_latest")
    merchants = _scalar(latest_db, "select count(*) from features.merchant_features_latest")
    assert {name: push.mode for name, push in result.views.items()} == {
        "customer_features": "full",
        "merchant_features": "full",
    }
    assert result.views["customer_features"].written == customers
    assert result.views["merchant_features"].written == merchants
    assert result.bytes_sent > 0

    # every entity of both tables, field by field, typed
    report = check_parity(latest_db, store, sample=10_000)
    assert report.checked == {"customer_features": customers, "merchant_features": merchants}
    assert report.passed, report.mismatches[:10]

    some_customer = str(
        _scalar(latest_db, "select customer_id from features.customer_features_latest limit 1")
    )
    some_merchant = str(
        _scalar(latest_db, "select merchant_id from features.merchant_features_latest limit 1")
    )
    feats = store.read(some_customer, some_merchant)
    assert feats.missing == []
    assert feats.versions == store.current_namespaces()
    assert isinstance(feats.customer["txn_count_30d"], int)
    assert isinstance(feats.customer["amount_sum_24h"], float)
    assert isinstance(feats.customer["last_txn_ts"], datetime) and feats.customer["last_txn_ts"].tzinfo
    assert isinstance(feats.customer["known_merchant_ids"], frozenset)
    assert feats.customer["last_txn_ts"] < feats.customer["as_of_ts"]
    assert store.meta("customer_features")["entities"] == str(customers)


def test_unknown_entities_get_the_defaults_of_a_first_transaction(store: OnlineStore, latest_db: str) -> None:
    store.push_from_postgres(latest_db)
    known_merchant = str(
        _scalar(latest_db, "select merchant_id from features.merchant_features_latest limit 1")
    )
    feats = store.read("no-such-customer", known_merchant)
    assert feats.missing == ["customer"]
    assert feats.customer == store.customer_view.defaults() or _same(
        feats.customer, store.customer_view.defaults()
    )
    assert feats.merchant["merchant_txn_count_30d"] >= 0
    both = store.read("no-such-customer", "no-such-merchant")
    assert both.missing == ["customer", "merchant"]
    assert (
        math.isnan(both.merchant["merchant_fraud_rate_30d"]) and both.merchant["merchant_txn_count_7d"] == 0
    )

    # "no history" means what customer_features holds for a customer's very first transaction
    with psycopg.connect(latest_db) as conn:
        cur = conn.execute(
            "select * from features.customer_features where seconds_since_prev_txn is null limit 20"
        )
        columns = [d.name for d in cur.description or []]
        first_rows = [dict(zip(columns, row, strict=True)) for row in cur.fetchall()]
    assert first_rows
    defaults = store.customer_view.defaults()
    for row in first_rows:
        for feature in store.registry.view("customer_features").stored_features:
            offline = row[feature.name]
            expected = math.nan if offline is None else float(offline)
            assert _same(float(defaults[feature.name]), expected), feature.name


def _same(left: object, right: object) -> bool:
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(_same(left[k], right[k]) for k in left)
    if isinstance(left, float) and isinstance(right, float) and math.isnan(left) and math.isnan(right):
        return True
    return left == right


def test_incremental_push_writes_only_changed_rows(store: OnlineStore, latest_db: str) -> None:
    tables = {name: fetch_latest(latest_db, view) for name, view in store.views.items()}
    first = store.push_tables(tables)
    namespace = first.views["customer_features"].namespace
    customers = tables["customer_features"]
    ids = customers.column("customer_id").to_pylist()
    changed, removed, untouched = ids[:5], ids[5], ids[6]

    # a hand-made mark in an unchanged entity's hash survives only if the push does not rewrite it
    untouched_key = f"{Keys.entity_prefix(namespace)}{untouched}"
    txn_count_1h = store.customer_view.field_ids[store.customer_view.field_names.index("txn_count_1h")]
    store.client.hset(untouched_key, txn_count_1h, "4242")
    store.client.expire(store.keys.pointer("customer_features"), 100)

    is_changed = pc.is_in(customers.column("customer_id"), pa.array(changed))
    bumped = pc.if_else(
        is_changed,
        pc.cast(pc.add(pc.cast(customers.column("txn_count_1h"), pa.int64()), 100), pa.string()),
        customers.column("txn_count_1h"),
    )
    customers = customers.set_column(customers.schema.get_field_index("txn_count_1h"), "txn_count_1h", bumped)
    customers = customers.filter(pc.not_equal(customers.column("customer_id"), removed))

    second = store.push_tables({**tables, "customer_features": customers})
    push = second.views["customer_features"]
    assert push.mode == "incremental" and push.namespace == namespace
    assert (push.written, push.removed, push.unchanged) == (5, 1, len(ids) - 6)
    assert second.views["merchant_features"].written == 0
    assert second.views["merchant_features"].unchanged == tables["merchant_features"].num_rows

    before = {
        row[0]: int(row[1])
        for row in zip(ids, tables["customer_features"].column("txn_count_1h").to_pylist(), strict=True)
    }
    for customer_id in changed:
        assert store.read(customer_id, "m").customer["txn_count_1h"] == before[customer_id] + 100
    assert store.read(removed, "m").missing == ["customer", "merchant"]
    assert store.read(untouched, "m").customer["txn_count_1h"] == 4242  # not rewritten
    assert store.client.ttl(store.keys.pointer("customer_features")) > 3_000  # the push refreshed the TTL


def test_version_switch_is_atomic_for_concurrent_readers(store: OnlineStore) -> None:
    """Readers during a full push see the old complete set or the new complete set, never a mix: not
    across entities of one read, not across the two views (on a cluster: within each view, the views
    switch one after the other), and never a missing entity."""
    n_customers, n_merchants = 120_000, 20_000
    customer_ids = [f"c{i:06d}" for i in range(n_customers)]
    merchant_ids = [f"m{i:05d}" for i in range(n_merchants)]

    def generation(marker: int) -> dict[str, pa.Table]:
        def table(view_name: str, ids: list[str]) -> pa.Table:
            view = store.views[view_name]
            columns = {view.entity_key: pa.array(ids)}
            for field in view.fields:
                value = {"int64": str(marker), "float64": f"{marker}.5", "timestamp": "1700000000000000"}.get(
                    field.kind, ""
                )
                columns[field.name] = pa.array([value] * len(ids), pa.string())
            return pa.table(columns)

        return {
            "customer_features": table("customer_features", customer_ids),
            "merchant_features": table("merchant_features", merchant_ids),
        }

    store.push_tables(generation(1))
    old = store.current_namespaces()
    rng = np.random.default_rng(0)
    seen: list[tuple[float, int, dict[str, str]]] = []
    errors: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        reading = OnlineStore(
            store.redis_url,
            store.registry,
            online=OnlineSettings(key_prefix=store.keys.prefix),
            cluster=store.cluster,
        )
        while not stop.is_set():
            picks = [
                (customer_ids[i], merchant_ids[j])
                for i, j in zip(
                    rng.integers(0, n_customers, 50), rng.integers(0, n_merchants, 50), strict=True
                )
            ]
            features = reading.read_many(picks)
            customers = {f.customer["txn_count_1h"] for f in features}
            merchants = {f.merchant["merchant_txn_count_7d"] for f in features}
            views_apart = store.cluster and len(customers) == len(merchants) == 1
            if any(f.missing for f in features) or (len(customers | merchants) != 1 and not views_apart):
                errors.append(f"mixed or missing read: markers={customers}, {merchants}")
            seen.append((time.perf_counter(), merchants.pop(), features[0].versions))
        reading.close()

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(0.05)
    started = time.perf_counter()
    result = store.push_tables(generation(2), full=True)
    finished = time.perf_counter()
    time.sleep(0.05)
    stop.set()
    for thread in threads:
        thread.join()

    assert not errors, errors[:5]
    during = [marker for at, marker, _ in seen if started <= at <= finished]
    print(f"reads: {len(seen)}, during the push: {len(during)}, push {finished - started:.2f} s")
    assert len(during) >= 5, "readers must have read while the new version was being written"
    assert {marker for _, marker, _ in seen} == {1, 2}
    assert seen[-1][1] == 2 and seen[-1][2] == store.current_namespaces() != old
    # the old namespaces are gone, the new ones hold everything
    assert sorted(result.deleted_namespaces) == sorted(ns for ns in old.values() if ns)
    for namespace in old.values():
        assert not list(store.client.scan_iter(match=f"{namespace}:*", count=10_000))
    assert store.client.scard(store.keys.namespaces("customer_features")) == 1


def test_new_feature_version_is_written_to_a_new_namespace(
    store: OnlineStore, latest_db: str, registry: FeatureRegistry
) -> None:
    store.push_from_postgres(latest_db)
    old = store.current_namespaces()
    views = dict(registry.views)
    views["customer_features"] = dataclasses.replace(views["customer_features"], version=2)
    bumped = OnlineStore(
        store.redis_url,
        dataclasses.replace(registry, views=views),
        online=OnlineSettings(key_prefix=store.keys.prefix),
        cluster=store.cluster,
    )
    result = bumped.push_from_postgres(latest_db)  # no `full`: the new version alone forces it
    assert result.views["customer_features"].mode == "full"
    assert result.views["merchant_features"].mode == "incremental"
    new = bumped.current_namespaces()
    assert new["customer_features"] != old["customer_features"] and ":v2:" in str(new["customer_features"])
    assert new["merchant_features"] == old["merchant_features"]
    assert result.deleted_namespaces == [old["customer_features"]]
    assert check_parity(latest_db, bumped, sample=50).passed
    bumped.close()


def test_ttl_expires_a_view_not_refreshed_and_reader_errors_reach_the_caller(
    store: OnlineStore, latest_db: str
) -> None:
    store.push_from_postgres(latest_db)
    pointer = store.keys.pointer("customer_features")
    assert 3_000 < store.client.ttl(pointer) <= 3_600
    customer_id = str(_scalar(latest_db, "select customer_id from features.customer_features_latest limit 1"))
    assert store.read(customer_id, "m").missing == ["merchant"]

    # no push within the TTL: every entity of the view reads as unknown (defaults), ...
    orphan = store.current_namespaces()["customer_features"]
    store.client.pexpire(pointer, 1)
    time.sleep(0.05)
    feats = store.read(customer_id, "m")
    assert feats.missing == ["customer", "merchant"] and feats.versions["customer_features"] == ""
    # ... and the next push writes a new namespace and deletes the orphaned one
    result = store.push_from_postgres(latest_db)
    assert result.views["customer_features"].mode == "full"
    assert result.views["merchant_features"].mode == "incremental"
    assert result.deleted_namespaces == [orphan]
    assert store.read(customer_id, "m").missing == ["merchant"]

    from rtml.stack.processes import free_port

    dead = OnlineStore(
        f"redis://127.0.0.1:{free_port()}/0",
        store.registry,
        online=OnlineSettings(redis_socket_timeout_ms=50),
    )
    with pytest.raises(redis.exceptions.ConnectionError):
        dead.read("c", "m")


def test_reader_survives_a_flushed_script_cache_and_a_killed_connection(
    store: OnlineStore, latest_db: str
) -> None:
    """The reader keeps a connection of its own (``OnlineStore._evalsha``): after a Redis restart the
    script is gone (NOSCRIPT: loaded again) and the connection is dead (reconnected, read sent again)."""
    store.push_from_postgres(latest_db)
    customer_id = str(_scalar(latest_db, "select customer_id from features.customer_features_latest limit 1"))
    assert store.read(customer_id, "m").missing == ["merchant"]

    store.client.script_flush()  # on a cluster: on every primary
    assert store.read(customer_id, "m").missing == ["merchant"]
    if store.cluster:  # every connection killed: redis-py's cluster client reconnects and sends again
        killed = 0
        for node in store.client.get_primaries():
            # from a connection of the test's own: the store's pool may hold one connection per node,
            # which a kill sent through it would skip as its own
            with redis.Redis(host=node.host, port=node.port) as killer:
                killed += killer.client_kill_filter(_type="normal", skipme=True)
        assert killed >= 1  # at least the one the read above used
        assert store.read(customer_id, "m").missing == ["merchant"]
        return

    reader = store._read_connection
    reader_id = reader.execute("CLIENT", "ID")
    assert store.client.client_kill_filter(_id=reader_id) == 1
    feats = store.read(customer_id, "m")
    assert feats.missing == ["merchant"] and feats.customer["txn_count_30d"] >= 1
    assert reader.execute("CLIENT", "ID") != reader_id  # a new connection


def test_a_push_that_would_empty_a_view_is_refused_unless_allowed(store: OnlineStore, latest_db: str) -> None:
    tables = {name: fetch_latest(latest_db, view) for name, view in store.views.items()}
    store.push_tables(tables)
    keys_before = sorted(store.client.scan_iter(match=f"{store.keys.prefix}:*", count=10_000))
    customers = tables["customer_features"]
    n = customers.num_rows
    quarter = customers.slice(0, n // 4)

    for kept, full in ((quarter, False), (quarter, True), (customers.slice(0, 0), False)):
        with pytest.raises(MassRemovalError) as refused:
            store.push_tables({**tables, "customer_features": kept}, full=full)
        gone = n - kept.num_rows
        assert str(refused.value).startswith(
            "refused to push the online store (nothing was written): customer_features: "
            f"{gone:,} of the {n:,} entities in Redis ({gone / n:.1%}) are not among the "
            f"{kept.num_rows:,} rows of its table and would be removed. The limit is 50% of a view's "
            "entities (RTML_ONLINE_MAX_REMOVAL_SHARE)"
        ), refused.value
        assert [r.view for r in refused.value.refused] == ["customer_features"]  # merchants lost none
    # nothing written, nothing switched: every entity still reads as in PostgreSQL
    assert sorted(store.client.scan_iter(match=f"{store.keys.prefix}:*", count=10_000)) == keys_before
    assert check_parity(latest_db, store, sample=10_000).passed

    # below the limit: an incremental push removes what vanished
    most = customers.slice(0, n - n // 10)
    result = store.push_tables({**tables, "customer_features": most})
    assert (result.views["customer_features"].mode, result.views["customer_features"].removed) == (
        "incremental",
        n // 10,
    )
    # the explicit override: a full refresh from the quarter table goes through
    result = store.push_tables({**tables, "customer_features": quarter}, full=True, allow_mass_removal=True)
    push = result.views["customer_features"]
    assert (push.mode, push.entities, push.removed) == ("full", n // 4, n - n // 10 - n // 4)
    ids = customers.column("customer_id").to_pylist()
    assert store.read(ids[0], "m").missing == ["merchant"] and store.read(ids[-1], "m").missing == [
        "customer",
        "merchant",
    ]


def test_parity_over_zero_sampled_rows_fails_and_says_why(store: OnlineStore, latest_db: str) -> None:
    store.push_from_postgres(latest_db)
    with shrunk_table(latest_db, "merchant_features_latest", "false"):
        report = check_parity(latest_db, store, sample=50)
    assert not report.passed and report.empty == ["merchant_features"]
    assert report.checked == {"customer_features": 50, "merchant_features": 0}
    assert report.summary == (
        "merchant_features: no row sampled from its *_latest table, nothing compared "
        "(compared: customer_features: 50, merchant_features: 0)"
    )
    with (
        shrunk_table(latest_db, "merchant_features_latest", "false"),
        shrunk_table(latest_db, "customer_features_latest", "false"),
    ):
        report = check_parity(latest_db, store, sample=50)
    assert not report.passed and report.empty == ["customer_features", "merchant_features"]
    assert report.checked == {}


def test_a_push_deletes_what_the_layout_before_the_view_hash_tags_left_behind(
    redis_url: str, registry: FeatureRegistry, latest_db: str
) -> None:
    """A store written with the keys of before (``rtml:customer_features:...``, no hash tag): the first push
    of this version deletes those namespaces, their pointer and their set, so an upgrade leaks nothing."""

    class KeysBefore(Keys):
        def view(self, view: str) -> str:
            return f"{self.prefix}:{view}"

        def legacy(self, view: str) -> tuple[str, str]:  # nothing came before it
            return f"{self.prefix}:none:{view}", f"{self.prefix}:none:{view}:namespaces"

    store = OnlineStore(
        redis_url, registry, online=OnlineSettings(key_prefix=f"rtmltest-legacy-{uuid.uuid4().hex[:8]}")
    )
    try:
        tables = {name: fetch_latest(latest_db, view) for name, view in store.views.items()}
        before = OnlineWriter(store.client, KeysBefore(store.keys.prefix), ttl_seconds=None)
        old = before.push({name: (store.views[name], table) for name, table in tables.items()})
        old_namespaces = sorted(push.namespace for push in old.views.values())
        assert all("{" not in ns for ns in old_namespaces)
        legacy_keys = [k for v in store.views for k in store.keys.legacy(v)]
        assert store.client.exists(*legacy_keys) == 4

        result = store.push_tables(tables)
        assert sorted(result.deleted_namespaces) == old_namespaces
        assert store.client.exists(*legacy_keys) == 0
        for view in store.views:
            assert not list(store.client.scan_iter(match=f"{store.keys.prefix}:{view}:*", count=10_000))
        assert check_parity(latest_db, store, sample=50).passed
    finally:
        store.purge()
        store.close()
