"""The ``online_features`` asset and its parity check through Dagster, on real PostgreSQL and Redis:
the first materialization pushes everything (full), the next one writes nothing (incremental, nothing
changed), ``full_refresh`` switches to a new namespace; the parity check passes each time. A truncated
``*_latest`` table fails the push (nothing written) until the override; a corrupted Redis field fails
the parity check, which names the entity and the field.

Self-healing: a Redis of the module's own is restarted (and later flushed); ``online_store_heal_sensor``,
ticked through ``build_sensor_context`` on a Dagster instance with PostgreSQL storage, requests one
rebuild per loss, skips (saying why) while it is pending or in flight, and the requested run, executed
in-process, serves the features again; the presence metric goes 1 → 0 → 1 on a real Pushgateway and the
rebuild notice is recorded."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest

from rtml.config import OnlineSettings, get_settings
from rtml.defs.online.assets import online_features
from rtml.defs.online.checks import online_offline_parity
from rtml.defs.online.resources import RedisResource, RedisServer
from rtml.defs.online.sensors import (
    LOSS_TAG,
    heal_sensor,
    online_rebuild_job,
    online_rebuild_notifier,
)
from rtml.defs.resources import PostgresServer
from rtml.features.feature_registry import get_registry
from rtml.features.online.parity import check_parity
from rtml.stack.dagster_home import write_dagster_yaml
from rtml.stack.processes import free_port
from tests.code_location import after_run
from tests.monitoring_stack import pushed_series, pushgateway
from tests.test_online_store import build_latest_db, shrunk_table
from tests.test_serving import Valkey


@pytest.fixture(scope="module")
def latest_db(scratch_database: Callable[[str], str], separate_dbt_target: Path) -> Iterator[str]:
    url = build_latest_db(scratch_database("online_assets"))
    get_registry.cache_clear()  # the asset reads the registry of this module's dbt target
    yield url
    get_registry.cache_clear()


@pytest.fixture
def redis_resource(redis_url: str) -> Iterator[RedisResource]:
    resource = RedisServer(url=redis_url, key_prefix=f"rtmltest-assets-{uuid.uuid4().hex[:8]}")
    yield resource
    store = resource.online_store()
    store.purge()
    store.close()


def _materialize(
    latest_db: str, redis_resource: RedisResource, full_refresh: bool = False, **config: bool
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [online_features, online_offline_parity],
        resources={
            "postgres": PostgresServer(url=latest_db),
            "redis": redis_resource,
            "settings": get_settings(),
        },
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


def test_the_push_reaches_a_real_pushgateway(
    latest_db: str, redis_resource: RedisResource, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The asset's own samples (``rtml.monitoring.metrics``), as Prometheus would scrape them."""
    with pushgateway(tmp_path) as gateway:
        monkeypatch.setenv("RTML_PUSHGATEWAY_URL", gateway.url)
        get_settings.cache_clear()
        try:
            result = _materialize(latest_db, redis_resource)
        finally:
            monkeypatch.undo()
            get_settings.cache_clear()
        assert result.success
        series = pushed_series(gateway.url, "online_features")
    meta = _metadata(result)
    asset: frozenset[tuple[str, str]] = frozenset()  # its `asset` label is the group's
    newest = {  # every view and store with a newest event (this database has no merchant_features)
        ("rtml_feature_newest_event_timestamp_seconds", frozenset({("view", view), ("store", store)})): (
            datetime.fromisoformat(meta[f"{view}/newest_event_{store}"]).timestamp()
        )
        for view in ("customer_features", "merchant_features")
        for store in ("online", "offline")
        if f"{view}/newest_event_{store}" in meta
    }
    assert len(newest) >= 3  # both views online, customer_features offline
    assert set(series) == {
        ("rtml_pipeline_run_duration_seconds", asset),
        ("rtml_pipeline_last_success_timestamp_seconds", asset),
        *newest,
    }
    assert {key: series[key] for key in newest} == newest
    assert 0 < series["rtml_pipeline_run_duration_seconds", asset] <= float(meta["duration_s"]) + 1
    assert abs(series["rtml_pipeline_last_success_timestamp_seconds", asset] - time.time()) < 120


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


# --- self-healing -----------------------------------------------------------------------------------------
@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Valkey]:
    """A Redis of this test's own: it is restarted and flushed (never the session's or the machine's)."""
    server = Valkey(tmp_path / "valkey", free_port())
    server.data_dir.mkdir()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def instance(scratch_database: Callable[[str], str], tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    home = tmp_path / "dagster"
    write_dagster_yaml(home, scratch_database(f"dagster_heal_{uuid.uuid4().hex[:6]}"))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        yield instance


def _skip_message(result: dg.SensorResult) -> str:
    assert not result.run_requests, result.run_requests
    assert result.skip_reason is not None
    return result.skip_reason.skip_message or ""


def test_the_sensor_rebuilds_a_lost_online_store_once_per_loss(
    latest_db: str,
    own_redis: Valkey,
    instance: dg.DagsterInstance,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    resources = {
        "postgres": PostgresServer(url=latest_db),
        "settings": get_settings(),
        "redis": RedisServer(url=own_redis.url, key_prefix="rtmltest-heal"),
    }
    rebuild = dg.Definitions(
        assets=[online_features],
        asset_checks=[online_offline_parity],
        jobs=[online_rebuild_job],
        resources=resources,
    ).resolve_job_def(online_rebuild_job.name)
    store = resources["redis"].online_store()
    customer, merchant = views = list(store.views)

    with pushgateway(tmp_path) as gateway:
        monkeypatch.setenv("RTML_PUSHGATEWAY_URL", gateway.url)
        monkeypatch.delenv("RTML_ALERT_WEBHOOK_URL", raising=False)
        get_settings.cache_clear()
        resources["settings"] = get_settings()  # the sensor pushes to this test's gateway

        def tick(cursor: str | None) -> dg.SensorResult:
            with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
                return heal_sensor(OnlineSettings())(context)

        def present() -> dict[str, float]:
            """``rtml_online_view_present`` per view, as the Pushgateway holds it."""
            series = pushed_series(gateway.url, "online_store_heal_sensor")
            return {view: series["rtml_online_view_present", frozenset({("view", view)})] for view in views}

        try:
            assert _materialize(latest_db, resources["redis"]).success
            healthy = tick(None)
            assert _skip_message(healthy) == "every view's pointer is present"
            assert present() == {customer: 1.0, merchant: 1.0}

            # a restart empties the embedded Valkey (it keeps nothing on disk)
            own_redis.stop()
            down = tick(healthy.cursor)
            assert _skip_message(down).startswith("Redis unreachable (")
            assert present() == {customer: 0.0, merchant: 0.0}
            own_redis.start()
            lost = tick(down.cursor)
            [request] = lost.run_requests
            assert request.run_key.startswith("online_heal:") and request.run_config == {
                "ops": {"online_features": {"config": {"full_refresh": True}}}
            }
            assert request.tags["rtml/trigger"] == (
                f"online_store_heal_sensor: pointers of {customer}, {merchant} gone"
            )
            assert present() == {customer: 0.0, merchant: 0.0}
            # not launched yet (the daemon launches after the tick): the same request, never a second one
            [again] = tick(lost.cursor).run_requests
            assert again.run_key == request.run_key

            # in flight: skipped, and the tick says why
            started = instance.create_run_for_job(
                rebuild, run_config=request.run_config, tags=request.tags, status=dg.DagsterRunStatus.STARTED
            )
            assert _skip_message(tick(lost.cursor)) == (
                f"pointers of {customer}, {merchant} gone; rebuild run {started.run_id} for loss "
                f"{request.tags[LOSS_TAG]} is in flight"
            )
            instance.delete_run(started.run_id)
            result = rebuild.execute_in_process(
                instance=instance, run_config=request.run_config, tags=request.tags
            )
            assert result.success
            assert _metadata(result)["customer_features/mode"] == "full"
            healed = tick(lost.cursor)
            assert (
                _skip_message(healed)
                == f"every view's pointer is present; loss {request.tags[LOSS_TAG]} healed"
            )
            assert present() == {customer: 1.0, merchant: 1.0}
            assert check_parity(latest_db, store, sample=10_000).passed  # every entity served again

            # the rebuild's notice
            after_run(online_rebuild_notifier, instance, result, resources)
            with psycopg.connect(latest_db) as conn:
                title, text, fields = conn.execute(
                    "select title, text, fields from monitoring.notifications where kind = 'online_heal'"
                    " order by id desc limit 1"
                ).fetchone()  # type: ignore[misc]
            assert title == "Online store rebuilt"
            detected = request.tags["rtml/online_loss_detected_at"]
            assert text.startswith(
                f"Its pointers were gone from Redis (detected {detected}); the online store was rebuilt "
                f"from the *_latest tables by run {result.run_id}: "
            ), text
            assert fields["loss"] == request.tags[LOSS_TAG] and 0 <= fields["recovery_s"] < 120

            # a flush (same server, same run id) is a new loss: a new run key
            store.client.flushdb()
            flushed = tick(healed.cursor)
            [after_flush] = flushed.run_requests
            assert after_flush.run_key != request.run_key
            # a rebuild that failed is not retried by the sensor (its failure notice and the alert are)
            failed = instance.create_run_for_job(
                rebuild, tags=after_flush.tags, status=dg.DagsterRunStatus.FAILURE
            )
            assert _skip_message(tick(flushed.cursor)) == (
                f"pointers of {customer}, {merchant} gone; rebuild run {failed.run_id} for loss "
                f"{after_flush.tags[LOSS_TAG]} ended FAILURE: not retried (see its failure notice; launch "
                "online_rebuild_job once fixed)"
            )
            # nothing to rebuild from: no request, and the tick says so
            with (
                shrunk_table(latest_db, "customer_features_latest", "false"),
                shrunk_table(latest_db, "merchant_features_latest", "false"),
            ):
                assert _skip_message(tick(None)) == (
                    f"pointers of {customer}, {merchant} gone, but the *_latest tables are empty: "
                    "nothing to rebuild from"
                )
        finally:
            store.close()
            get_settings.cache_clear()
