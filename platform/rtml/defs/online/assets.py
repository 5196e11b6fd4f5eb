"""``online_features``: the ``*_latest`` dbt tables pushed to Redis by the bulk writer.

Every materialization is a push: incremental (only changed entities rewritten) while the feature
definitions keep their shape; a full rebuild into a new namespace, switched in atomically, on the first
push, on a new feature version, or when asked (config ``full_refresh``; the self-heal sensor asks for
it when the store was lost).

A push that would remove more than ``online_max_removal_share`` of a view's entities fails before
writing anything (an empty or truncated ``*_latest`` table); config ``allow_mass_removal`` overrides it.

With the speed layer on (``speed_layer_enabled``), every materialization then pushes dbt's
``customer_stream_snapshot`` into it (``OnlineStore.push_speed_snapshot``): each customer's snapshot first,
then the watermark moves. A push that fails fails the run and leaves the previous snapshot and watermark
valid (reads past its horizon fall back to the batch values, counted by the scorer).
"""

import dagster as dg

from rtml.config import Settings
from rtml.defs.online.resources import RedisResource
from rtml.defs.resources import PostgresResource
from rtml.features.freshness import offline_newest, online_newest
from rtml.features.online.writer import MassRemovalError
from rtml.monitoring import metrics

OVERRIDE = "ops:\n  online_features:\n    config:\n      full_refresh: true\n      allow_mass_removal: true"


class OnlinePushConfig(dg.Config):
    full_refresh: bool = False
    """Write every entity into a new namespace and switch to it (instead of only the changed ones)."""
    allow_mass_removal: bool = False
    """Push even when a view loses more than `online_max_removal_share` of its entities (the
    `*_latest` tables really shrank)."""


@dg.asset(
    deps=["customer_features_latest", "merchant_features_latest", "customer_stream_snapshot"],
    group_name="online",
    kinds={"redis"},
)
def online_features(
    context: dg.AssetExecutionContext,
    config: OnlinePushConfig,
    postgres: PostgresResource,
    redis: RedisResource,
    settings: dg.ResourceParam[Settings],
) -> dg.MaterializeResult:
    """Customer and merchant features in Redis: one hash per entity under a versioned namespace."""
    store = redis.online_store()
    try:
        try:
            result = store.push_from_postgres(
                postgres.database_url(),
                full=config.full_refresh,
                allow_mass_removal=config.allow_mass_removal,
            )
        except MassRemovalError as error:
            raise dg.Failure(
                description=f"{error} To push anyway, materialize online_features with the run config\n"
                f"{OVERRIDE}",
                metadata={
                    **{f"{r.view}/would_remove": r.removed for r in error.refused},
                    **{f"{r.view}/entities_in_redis": r.current for r in error.refused},
                    **{f"{r.view}/table_rows": r.rows for r in error.refused},
                    "max_removal_share": error.max_share,
                },
                allow_retries=False,
            ) from error
        speed = store.push_speed_snapshot(postgres.database_url())
        newest = {
            "online": online_newest(store),
            "offline": offline_newest(postgres.database_url(), store.registry),
        }
    finally:
        store.close()
    samples = metrics.run_samples("online_features", result.seconds)
    for where, views in newest.items():
        samples += [
            metrics.Sample(
                "rtml_feature_newest_event_timestamp_seconds", ts.timestamp(), {"view": v, "store": where}
            )
            for v, ts in views.items()
            if ts is not None
        ]
    metrics.publish("online_features", samples, settings.monitoring.pushgateway_url)
    for name, push in result.views.items():
        context.log.info(
            f"{name}: {push.mode} push to {push.namespace}: {push.written} written, "
            f"{push.unchanged} unchanged, {push.removed} removed in {push.seconds:.2f} s"
        )
    metadata: dict[str, dg.RawMetadataValue] = {
        "entities_written": result.entities_written,
        "entities_total": sum(push.entities for push in result.views.values()),
        "bytes_sent": result.bytes_sent,
        "duration_s": round(result.seconds, 3),
        "deleted_namespaces": dg.MetadataValue.json(result.deleted_namespaces),
    }
    for name, push in result.views.items():
        metadata |= {
            f"{name}/mode": push.mode,
            f"{name}/namespace": push.namespace,
            f"{name}/entities": push.entities,
            f"{name}/written": push.written,
            f"{name}/unchanged": push.unchanged,
            f"{name}/removed": push.removed,
        }
    if speed is not None:
        context.log.info(
            f"speed layer: {speed.customers} customer snapshots as of {speed.as_of} pushed in "
            f"{speed.seconds:.2f} s" + (f" (skipped: {speed.skipped})" if speed.skipped else "")
        )
        metadata |= {
            "speed_layer/customers": speed.customers,
            "speed_layer/as_of": speed.as_of.isoformat() if speed.as_of else "",
            "speed_layer/valid_until": speed.valid_until.isoformat() if speed.valid_until else "",
            "speed_layer/seconds": round(speed.seconds, 3),
            "speed_layer/skipped": speed.skipped or "",
        }
    for where, views in newest.items():
        metadata |= {f"{v}/newest_event_{where}": ts.isoformat() for v, ts in views.items() if ts is not None}
    return dg.MaterializeResult(metadata=metadata)
