"""``drift_within_threshold`` (on ``drift_report``, daily) and ``recent_drift_within_threshold`` (on
``recent_drift_report``, hourly): the reports of the asset's latest materialization (read back from
``monitoring.drift_reports`` by the ids in its metadata) stay within their rules (``drift.verdict``: the
share of drifted columns within the threshold; for the hourly check no numeric column's KS p-value
below ``drift_recent_pvalue``, in the hour or its tail). A failure names the rules that fired and the
drifted columns; the retraining automation reacts to it (``drift_retraining_sensor``)."""

import dagster as dg

from rtml.defs.resources import PostgresResource
from rtml.monitoring import drift

ASSET = dg.AssetKey("drift_report")
RECENT_ASSET = dg.AssetKey("recent_drift_report")


def _threshold_check(asset: dg.AssetKey, name: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=asset,
        name=name,
        description="The drift reports stay within their rules: the share of drifted columns (features; "
        "served scores) at most the threshold; for the hourly check's features, no numeric column's KS "
        "p-value below `drift_recent_pvalue` (in the hour or its tail); fails naming the rules that fired.",
    )
    def check(context: dg.AssetCheckExecutionContext, postgres: PostgresResource) -> dg.AssetCheckResult:
        return _evaluate(context, postgres, asset)

    return check


def _evaluate(
    context: dg.AssetCheckExecutionContext, postgres: PostgresResource, asset: dg.AssetKey
) -> dg.AssetCheckResult:
    event = context.instance.get_latest_materialization_event(asset)
    materialization = event.asset_materialization if event is not None else None
    if materialization is None or "report_ids" not in materialization.metadata:
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.ERROR,
            description=f"{asset.to_user_string()} has no materialization with report ids yet: "
            "materialize it first",
        )
    ids = dict(materialization.metadata["report_ids"].value)  # {name: report id}
    named = dict(zip(ids, drift.load_reports(postgres.database_url(), ids.values()), strict=True))
    reports = list(named.values())
    drifted = [report for report in reports if report.detected]
    detected, description = drift.verdict(named)
    metadata: dict[str, dg.RawMetadataValue] = {
        "drifted_columns": dg.MetadataValue.json([name for r in drifted for name in r.drifted_columns]),
        "report_ids": dg.MetadataValue.json(ids),
        # the reference's version: the drift sensor's cool-down is per production version
        "model_version": next((r.model_version for r in reports if r.model_version), None) or "none",
    }
    for name, report in named.items():
        metadata[f"{name}/drifted_share"] = round(report.drifted_share, 4)
        metadata[f"{name}/threshold"] = report.threshold
        metadata[f"{name}/drifted_columns"] = dg.MetadataValue.json(report.drifted_columns)
        metadata[f"{name}/rules_fired"] = dg.MetadataValue.json(report.reasons)
    return dg.AssetCheckResult(
        passed=not detected,
        severity=dg.AssetCheckSeverity.ERROR,
        description=description,
        metadata=metadata,
    )


drift_within_threshold = _threshold_check(ASSET, "drift_within_threshold")
recent_drift_within_threshold = _threshold_check(RECENT_ASSET, "recent_drift_within_threshold")
