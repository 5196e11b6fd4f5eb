"""``drift_within_threshold``: the reports of the latest ``drift_report`` materialization (read back from
``monitoring.drift_reports`` by the ids in its metadata) stay within ``drift_threshold``. A failure names
the drifted columns; the retraining automation reacts to it."""

import dagster as dg

from rtml.defs.resources import PostgresResource
from rtml.monitoring import drift

ASSET = dg.AssetKey("drift_report")


@dg.asset_check(
    asset=ASSET,
    description="The share of drifted columns (features; served scores) is at most `drift_threshold`; "
    "fails naming the drifted columns.",
)
def drift_within_threshold(
    context: dg.AssetCheckExecutionContext, postgres: PostgresResource
) -> dg.AssetCheckResult:
    event = context.instance.get_latest_materialization_event(ASSET)
    materialization = event.asset_materialization if event is not None else None
    if materialization is None or "report_ids" not in materialization.metadata:
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.ERROR,
            description="drift_report has no materialization with report ids yet: materialize it first",
        )
    ids = dict(materialization.metadata["report_ids"].value)  # {kind: report id}
    reports = drift.load_reports(postgres.database_url(), ids.values())
    drifted = [report for report in reports if report.detected]
    summary = "; ".join(
        f"{report.kind}: {report.drifted_share:.1%} of {len(report.columns)} columns drifted "
        f"(threshold {report.threshold:.0%})"
        + (f": {', '.join(report.drifted_columns)}" if report.detected else "")
        for report in reports
    )
    metadata: dict[str, dg.RawMetadataValue] = {
        "drifted_columns": dg.MetadataValue.json([name for r in drifted for name in r.drifted_columns]),
        "report_ids": dg.MetadataValue.json(ids),
    }
    for report in reports:
        metadata[f"{report.kind}/drifted_share"] = round(report.drifted_share, 4)
        metadata[f"{report.kind}/threshold"] = report.threshold
        metadata[f"{report.kind}/drifted_columns"] = dg.MetadataValue.json(report.drifted_columns)
    return dg.AssetCheckResult(
        passed=not drifted,
        severity=dg.AssetCheckSeverity.ERROR,
        description=("drift detected: " if drifted else "within threshold: ") + summary,
        metadata=metadata,
    )
