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
    passed = share <= settings.ingest.quarantine_share_max
    top = sorted(result.quarantine_by_rule.items(), key=lambda item: -item[1])[:3]
    rules = ", ".join(f"{rule} {rows}" for rule, rows in top) or "none"
    return dg.AssetCheckResult(
        check_name=QUARANTINE_SHARE,
        asset_key=asset_key,
        passed=passed,
        severity=dg.AssetCheckSeverity.WARN,
        description=(
            f"{share:.2%} of {result.rows_read} rows quarantined ({result.rows_quarantined}), "
            f"{'within' if passed else 'above'} the threshold {settings.ingest.quarantine_share_max:.2%} "
            f"(quarantine_share_max); most frequent rules: {rules}."
            + ("" if passed else " Read the rows and their rule in the quarantine table; fix the source.")
        ),
        metadata={
            "quarantine_share": dg.MetadataValue.float(share),
            "threshold": dg.MetadataValue.float(settings.ingest.quarantine_share_max),
            "rows_quarantined": result.rows_quarantined,
        },
    )


def row_count_checks(
    asset_key: str, rows_by_partition: dict[str, int], settings: Settings
) -> dg.AssetCheckResult:
    implausible = {
        key: rows
        for key, rows in rows_by_partition.items()
        if not settings.ingest.partition_rows_min <= rows <= settings.ingest.partition_rows_max
    }
    bounds = f"{settings.ingest.partition_rows_min}..{settings.ingest.partition_rows_max}"
    described = "; ".join(
        f"{key}: {rows} rows, too {'few' if rows < settings.ingest.partition_rows_min else 'many'}"
        for key, rows in implausible.items()
    )
    return dg.AssetCheckResult(
        check_name=ROW_COUNT_PLAUSIBLE,
        asset_key=asset_key,
        passed=not implausible,
        severity=dg.AssetCheckSeverity.WARN,
        description=(
            f"{len(implausible)} of {len(rows_by_partition)} partition(s) outside {bounds} loaded rows "
            f"(partition_rows_min..partition_rows_max): {described}. Check the source for a gap or a "
            "duplicate delivery, then rematerialize the partition."
            if implausible
            else f"All {len(rows_by_partition)} partition(s) within {bounds} loaded rows."
        ),
        metadata={
            "partitions_checked": len(rows_by_partition),
            "implausible_partitions": dg.MetadataValue.json(implausible),
            "range": bounds,
        },
    )
