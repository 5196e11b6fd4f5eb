"""Self-healing of the online store.

``online_store_heal_sensor`` (every ``online.heal_interval_seconds``) looks at the views' pointers in
Redis (and the speed layer's watermark, when it is on and dbt built its snapshot: the rebuild pushes it
too). When one is gone (Redis restarted or flushed, the TTL lapsed) while the ``*_latest`` tables have
rows, it requests ONE ``online_rebuild_job`` run (a full push into a new namespace) for that loss: the
loss's id (Redis' run id and the detection time) is the run key and a run tag, and the cursor keeps it
until the pointers are back, so later ticks skip while the rebuild is in flight, and say why. On every
tick it pushes ``rtml_online_view_present`` per view, which the alert ``OnlineStoreViewMissing`` watches
in case healing fails. ``online_rebuild_notifier`` tells that the store was rebuilt, and how long it took.

A rebuild run that fails is not retried by the sensor (the run-failure notice and the alert go to a
person; the next hourly refresh also pushes in full, finding no pointer).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import dagster as dg
import psycopg
import redis as redis_lib

from rtml.config import OnlineSettings, Settings, get_settings
from rtml.defs.automation.sensors import ACTIVE, TRIGGER_TAG, _run_materialization
from rtml.defs.online.resources import RedisResource
from rtml.defs.resources import PostgresResource
from rtml.features.online import OnlineStore
from rtml.features.online.health import SPEED_LAYER, presence_samples, store_health, views_with_rows
from rtml.monitoring import metrics
from rtml.monitoring.notify import notify

SENSOR = "online_store_heal_sensor"
LOSS_TAG = "rtml/online_loss"
DETECTED_TAG = "rtml/online_loss_detected_at"
REBUILD_CONFIG = {"ops": {"online_features": {"config": {"full_refresh": True}}}}

online_rebuild_job = dg.define_asset_job(
    "online_rebuild_job",
    selection=dg.AssetSelection.assets("online_features"),
    config=REBUILD_CONFIG,
    description="Rebuild the online store: a full push of the `*_latest` tables into a new namespace, "
    "switched in at once (launched by the self-heal sensor when the views' pointers are gone).",
)


def heal_sensor(online: OnlineSettings) -> dg.SensorDefinition:
    """``online_store_heal_sensor``, ticking every ``online.heal_interval_seconds``."""

    @dg.sensor(
        name=SENSOR,
        job=online_rebuild_job,
        minimum_interval_seconds=online.heal_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="The online store's pointers are gone from Redis (restart, flush, TTL lapse) while the "
        "*_latest tables have rows: rebuild it (one full push per loss).",
    )
    def online_store_heal_sensor(
        context: dg.SensorEvaluationContext,
        postgres: PostgresResource,
        redis: RedisResource,
        settings: dg.ResourceParam[Settings],
    ) -> dg.SensorResult:
        store = redis.online_store()
        try:
            return _heal(context, store, postgres.database_url(), settings.monitoring.pushgateway_url)
        finally:
            store.close()

    return online_store_heal_sensor


def _heal(
    context: dg.SensorEvaluationContext, store: OnlineStore, database_url: str, gateway: str | None
) -> dg.SensorResult:
    try:
        health = store_health(store)
    except redis_lib.RedisError as error:
        metrics.publish(SENSOR, presence_samples(list(store.views), None), gateway)
        reason = f"Redis unreachable ({error}): cannot tell whether the online store is there"
        return dg.SensorResult(skip_reason=reason, cursor=context.cursor)
    metrics.publish(SENSOR, presence_samples(list(store.views), health), gateway)

    loss: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    missing = health.missing
    try:
        # the speed layer is missing only when there is a snapshot to rebuild it from
        sources = views_with_rows(database_url, store) if missing else []
    except psycopg.Error as error:
        gone = ", ".join(missing)
        reason = f"pointers of {gone} gone, but PostgreSQL is unreachable ({error}): cannot rebuild yet"
        return dg.SensorResult(skip_reason=reason, cursor=context.cursor)
    missing = [m for m in missing if m != SPEED_LAYER or m in sources]
    if not missing:
        healed = f"; loss {loss['id']} healed" if loss else ""
        return dg.SensorResult(skip_reason=f"every view's pointer is present{healed}", cursor="")
    gone = ", ".join(missing)
    if not sources:
        reason = f"pointers of {gone} gone, but the *_latest tables are empty: nothing to rebuild from"
        return dg.SensorResult(skip_reason=reason, cursor=context.cursor)

    if loss:
        records = context.instance.get_run_records(dg.RunsFilter(tags={LOSS_TAG: loss["id"]}), limit=1)
        if not records:  # requested, not launched yet: the same run key again (never launched twice)
            return dg.SensorResult(run_requests=[_request(loss)], cursor=context.cursor)
        run = records[0].dagster_run
        if run.status in ACTIVE:
            reason = f"pointers of {gone} gone; rebuild run {run.run_id} for loss {loss['id']} is in flight"
            return dg.SensorResult(skip_reason=reason, cursor=context.cursor)
        if run.status != dg.DagsterRunStatus.SUCCESS:
            reason = (
                f"pointers of {gone} gone; rebuild run {run.run_id} for loss {loss['id']} ended "
                f"{run.status.value}: not retried (see its failure notice; launch online_rebuild_job "
                "once fixed)"
            )
            return dg.SensorResult(skip_reason=reason, cursor=context.cursor)
        # that rebuild succeeded and the pointers are gone again: a new loss

    active = context.instance.get_run_records(
        dg.RunsFilter(job_name=online_rebuild_job.name, statuses=ACTIVE), limit=1
    )
    if active:
        reason = f"pointers of {gone} gone; rebuild run {active[0].dagster_run.run_id} is already in flight"
        return dg.SensorResult(skip_reason=reason, cursor=context.cursor)
    detected = datetime.now(UTC)
    loss = {
        "id": f"{health.redis_run_id[:12]}-{detected:%Y%m%dT%H%M%S.%fZ}",
        "detected_at": detected.isoformat(),
        "missing": gone,
    }
    context.log.info(f"pointers of {gone} gone (Redis run id {health.redis_run_id}): rebuilding")
    return dg.SensorResult(run_requests=[_request(loss)], cursor=json.dumps(loss, sort_keys=True))


def _request(loss: dict[str, str]) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=f"online_heal:{loss['id']}",
        run_config=REBUILD_CONFIG,
        tags={
            TRIGGER_TAG: f"{SENSOR}: pointers of {loss['missing']} gone",
            LOSS_TAG: loss["id"],
            DETECTED_TAG: loss["detected_at"],
        },
    )


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    name="online_rebuild_notifier",
    monitored_jobs=[online_rebuild_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="After a rebuild of the online store: what was lost, what was pushed, how long it took.",
)
def online_rebuild_notifier(
    context: dg.RunStatusSensorContext, postgres: PostgresResource, settings: dg.ResourceParam[Settings]
) -> None:
    run = context.dagster_run
    metadata = _run_materialization(context.instance, run.run_id, "online_features") or {}
    stats = context.instance.get_run_stats(run.run_id)
    entities = metadata.get("entities_total", "?")
    fields = {
        "run_id": run.run_id,
        "entities": entities,
        "push_s": metadata.get("duration_s", "?"),
        "trigger": run.tags.get(TRIGGER_TAG, "manual"),
    }
    detected = run.tags.get(DETECTED_TAG)
    if detected and stats.end_time:
        recovery = stats.end_time - datetime.fromisoformat(detected).timestamp()
        fields |= {"loss": run.tags.get(LOSS_TAG, ""), "detected_at": detected, "recovery_s": round(recovery)}
        cause = f"Its pointers were gone from Redis (detected {detected}); "
        served = f", served again {recovery:.0f} s after the detection"
    else:
        cause, served = "", ""
    notify(
        "online_heal",
        "Online store rebuilt",
        f"{cause}the online store was rebuilt from the *_latest tables by run {run.run_id}: "
        f"{entities} entities in {fields['push_s']} s{served}.",
        fields,
        settings,
        database_url=postgres.database_url(),
    )


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(
        jobs=[online_rebuild_job], sensors=[heal_sensor(get_settings().online), online_rebuild_notifier]
    )
