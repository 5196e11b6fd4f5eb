"""Data-quality checks of the raw streams, evaluated from each load's own counts.

They run in the same step as the load (``check_specs`` on the asset), so every partition's
materialization carries its verdict without a second read of the table.
"""

from __future__ import annotations

import dagster as dg

from rtml.config import Settings
from rtml.ingest.loader import LoadResult

QUARANTINE_SHARE = "quarantine_share_below_threshold"
ROW_COUNT_PLAUSIBLE = "partition_row_count_plausible"


def raw_check_specs(asset_key: str, *, row_count: bool) -> list[dg.AssetCheckSpec]:
    specs = [
        dg.AssetCheckSpec(
            QUARANTINE_SHARE,
            asset=asset_key,
            description="The share of quarantined rows stays below `quarantine_share_max`.",
        )
    ]
    if row_count:
        specs.append(
            dg.AssetCheckSpec(
                ROW_COUNT_PLAUSIBLE,
                asset=asset_key,
                description="Each loaded partition holds between `partition_rows_min` and "
                "`partition_rows_max` rows.",
            )
        )
    return specs


def quarantine_share_check(asset_key: str, result: LoadResult, settings: Settings) -> dg.AssetCheckResult:
    share = result.rows_quarantined / result.rows_read if result.rows_read else 0.0
    return dg.AssetCheckResult(
        check_name=QUARANTINE_SHARE,
        asset_key=asset_key,
        passed=share <= settings.quarantine_share_max,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "quarantine_share": dg.MetadataValue.float(share),
            "threshold": dg.MetadataValue.float(settings.quarantine_share_max),
            "rows_quarantined": result.rows_quarantined,
        },
    )


def row_count_checks(
    asset_key: str, rows_by_partition: dict[str, int], settings: Settings
) -> dg.AssetCheckResult:
    implausible = {
        key: rows
        for key, rows in rows_by_partition.items()
        if not settings.partition_rows_min <= rows <= settings.partition_rows_max
    }
    return dg.AssetCheckResult(
        check_name=ROW_COUNT_PLAUSIBLE,
        asset_key=asset_key,
        passed=not implausible,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "partitions_checked": len(rows_by_partition),
            "implausible_partitions": dg.MetadataValue.json(implausible),
            "range": f"{settings.partition_rows_min}..{settings.partition_rows_max}",
        },
    )
