"""Checks of ``online_features``, run after every push (the hourly refresh) and on demand.

* ``online_offline_parity``: a random sample of customers and merchants read from Redis equals their rows
  in PostgreSQL, field by field and typed. An empty sample fails (nothing compared proves nothing).
* ``training_serving_skew`` (``rtml.monitoring.skew``): what the scorer served equals what the offline
  store says for the same transaction. On ``online_features`` because the refresh that pushes it has
  just ingested and built the hour whose requests become comparable, and because what it checks is what
  the pushes served. No logged request yet (no traffic, or none ingested) passes with a note: a quiet
  scorer is not skew, and ``rtml_training_serving_skew_requests`` shows it.
"""

from datetime import UTC, datetime, timedelta

import dagster as dg

from rtml.config import Settings
from rtml.defs.online.resources import RedisResource
from rtml.defs.resources import PostgresResource
from rtml.features.feature_registry import get_registry
from rtml.features.online.parity import check_parity
from rtml.monitoring import metrics
from rtml.monitoring.skew import CUSTOMER_VIEW, MERCHANT_VIEW, Build, check_skew


@dg.asset_check(
    asset="online_features",
    description="A random sample of entities per view (`online_parity_sample`) reads the same from "
    "Redis as from the `*_latest` tables in PostgreSQL.",
    blocking=False,
)
def online_offline_parity(
    postgres: PostgresResource, redis: RedisResource, settings: dg.ResourceParam[Settings]
) -> dg.AssetCheckResult:
    store = redis.online_store()
    try:
        report = check_parity(postgres.database_url(), store, settings.online.parity_sample)
    finally:
        store.close()
    return dg.AssetCheckResult(
        passed=report.passed,
        description=report.summary,
        metadata={
            "entities_checked": dg.MetadataValue.json(report.checked),
            "entities_missing": dg.MetadataValue.json(report.missing),
            "empty_views": dg.MetadataValue.json(report.empty),
            "mismatches": len(report.mismatches),
            "first_mismatches": dg.MetadataValue.json(report.mismatches[:20]),
        },
    )


@dg.asset_check(
    asset="online_features",
    description="Training-serving skew: the newest logged requests (`skew_sample_size`, "
    "`monitoring.served_features`) whose transactions are now in `customer_features` are scored again from "
    "the offline store and compared feature by feature, exactly. Customer features read with the speed "
    "layer (`merged`): dbt's `customer_features` row of that transaction; otherwise the batch values of "
    "the build served (the `online_features` push of that namespace current at scoring time: dbt's "
    "definition at its watermark), request-time features derived from them as the scorer does; merchant "
    "features: `merchant_features_sql` for the build's day; unknown entities: the defaults, exactly when the "
    "offline store had no history either. Requests scored without Redis are skipped (counted). Fails "
    "(ERROR) naming each feature with a mismatch, its exact share, largest difference and example requests; "
    "no request to compare yet passes with a note.",
    blocking=False,
)
def training_serving_skew(
    context: dg.AssetCheckExecutionContext, postgres: PostgresResource, settings: dg.ResourceParam[Settings]
) -> dg.AssetCheckResult:
    since = datetime.now(UTC) - timedelta(hours=settings.online.skew_lookback_hours)
    report = check_skew(
        postgres.database_url(),
        get_registry(),
        pushes(context.instance, since),
        sample_size=settings.online.skew_sample_size,
        since=since,
    )
    metrics.publish("training_serving_skew", report.samples(), settings.monitoring.pushgateway_url)
    return dg.AssetCheckResult(
        passed=report.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=report.summary,
        metadata={
            "failing_features": dg.MetadataValue.json(report.failing),
            "requests_sampled": report.sampled,
            "requests_compared": report.compared,
            "requests_degraded": report.degraded,
            "requests_unverifiable": report.unverifiable,
            "cases": dg.MetadataValue.json(dict(report.cases)),
            "features": dg.MetadataValue.json({n: s.as_json() for n, s in sorted(report.features.items())}),
        },
    )


def pushes(instance: dg.DagsterInstance, since: datetime, limit: int = 1_000) -> list[Build]:
    """The ``online_features`` pushes recorded since ``since`` and the one before (the build in force
    then), per view: namespace, watermark (``<view>/newest_event_online``) and when the push ran (the
    materialization's time, less the push's ``duration_s``)."""
    builds: list[Build] = []
    for record in instance.fetch_materializations(dg.AssetKey("online_features"), limit=limit).records:
        materialization = record.asset_materialization
        if materialization is None:
            continue
        metadata = materialization.metadata
        until = datetime.fromtimestamp(record.timestamp, UTC)
        duration = metadata.get("duration_s")
        started = until - timedelta(seconds=float(duration.value) if duration is not None else 0.0)  # type: ignore[arg-type]
        for view in (CUSTOMER_VIEW, MERCHANT_VIEW):
            namespace, as_of = metadata.get(f"{view}/namespace"), metadata.get(f"{view}/newest_event_online")
            if namespace is not None and as_of is not None:
                builds.append(
                    Build(
                        view, str(namespace.value), datetime.fromisoformat(str(as_of.value)), started, until
                    )
                )
        if until < since:  # newest first: this one was in force at `since`
            break
    return builds
