"""Offline/online parity: a random sample of customers and merchants read from Redis equals their rows
in PostgreSQL, field by field and typed. Runs after every push and on demand. An empty sample fails
(nothing compared proves nothing)."""

import dagster as dg

from rtml.config import get_settings
from rtml.defs.online.resources import RedisResource
from rtml.defs.resources import PostgresResource
from rtml.features.online.parity import check_parity


@dg.asset_check(
    asset="online_features",
    description="A random sample of entities per view (`online_parity_sample`) reads the same from "
    "Redis as from the `*_latest` tables in PostgreSQL.",
    blocking=False,
)
def online_offline_parity(postgres: PostgresResource, redis: RedisResource) -> dg.AssetCheckResult:
    store = redis.online_store()
    try:
        report = check_parity(postgres.database_url(), store, get_settings().online_parity_sample)
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
