"""Monitoring assets: ``drift_report`` (Evidently, reference = the production version's training window)
and ``live_model_performance`` (the served model on predictions whose labels have arrived). Both push
their figures to the Pushgateway when one is configured (``rtml.monitoring.metrics``)."""

import time
from datetime import datetime
from typing import Any

import dagster as dg

from rtml.config import Settings, get_settings
from rtml.defs.resources import PostgresResource
from rtml.defs.training.resources import MlflowResource
from rtml.monitoring import drift, live, metrics


class DriftConfig(dg.Config):
    """Explicit windows (ISO date-times, UTC when naive, end exclusive); each pair all or nothing."""

    reference_start: str | None = None
    """Unset: the training data window of the version holding ``production``."""
    reference_end: str | None = None
    current_start: str | None = None
    """Unset: the newest ``drift_current_hours`` hours of feature rows."""
    current_end: str | None = None


DRIFT_DEPS = ["stg_transactions", "customer_features", "merchant_features", "production_model"]


@dg.asset(deps=DRIFT_DEPS, group_name="monitoring", kinds={"evidently", "postgres"})
def drift_report(
    context: dg.AssetExecutionContext, config: DriftConfig, postgres: PostgresResource, mlflow: MlflowResource
) -> dg.MaterializeResult:
    """Feature drift (and drift of the served scores) between the production model's training window and
    the newest ``drift_current_hours`` hours: an Evidently HTML report per kind, a row per report in
    ``monitoring.drift_reports``; the check ``drift_within_threshold`` judges it. Daily (``drift_job``)."""
    settings = get_settings()
    return _drift(context, config, postgres, mlflow, settings.drift_current_hours, settings.drift_max_rows)


@dg.asset(deps=DRIFT_DEPS, group_name="monitoring", kinds={"evidently", "postgres"})
def recent_drift_report(
    context: dg.AssetExecutionContext, config: DriftConfig, postgres: PostgresResource, mlflow: MlflowResource
) -> dg.MaterializeResult:
    """The hourly drift check: as ``drift_report``, over the newest ``drift_recent_hours`` hours and
    their newest ``drift_recent_tail_minutes``, at most ``drift_recent_max_rows`` rows per window, against
    the reference's rows of the same hours of the day on the same day of the week (UTC; a night or a
    Friday is not a drift), windowed features only where their window is filled (``drift.warm_from``).
    Every numeric column by the two-sample KS test; drift when one p-value is below
    ``drift_recent_pvalue``, in the hour or in its tail. Materialized after every hourly refresh
    (``hourly_drift_sensor``); a separate asset, so the daily full report stays as it was."""
    settings = get_settings()
    return _drift(
        context,
        config,
        postgres,
        mlflow,
        settings.drift_recent_hours,
        settings.drift_recent_max_rows,
        hourly=True,
    )


def _drift(
    context: dg.AssetExecutionContext,
    config: DriftConfig,
    postgres: PostgresResource,
    mlflow: MlflowResource,
    current_hours: int,
    max_rows: int,
    hourly: bool = False,
) -> dg.MaterializeResult:
    settings = get_settings()
    name = context.asset_key.to_user_string()
    url = postgres.database_url()
    try:
        current = _window("current", config.current_start, config.current_end)
        current = current or drift.current_window(url, current_hours)
        result = drift.run_drift(
            url,
            settings,
            tracking_uri=mlflow.uri(),
            model_name=mlflow.model_name,
            reference=_window("reference", config.reference_start, config.reference_end),
            current=current,
            max_rows=max_rows,
            **(_hourly_rule(settings) if hourly else {}),
        )
    except drift.DriftError as error:
        raise dg.Failure(str(error), allow_retries=False) from error
    samples = [*drift.samples(result), *metrics.run_samples(name, result.seconds)]
    pushed = metrics.publish(name, samples, settings.pushgateway_url)
    features = result.features
    hours = result.reference_hours
    context.log.info(
        f"features: {features.drifted_share:.1%} of columns drifted (threshold {features.threshold:.0%}): "
        f"{', '.join(features.drifted_columns) or 'none'}"
    )
    metadata: dict[str, dg.RawMetadataValue] = {
        "report_ids": dg.MetadataValue.json(
            {name: report.report_id for name, report in result.named_reports.items()}
        ),
        "model_version": result.model_version or "none",
        "reference_window": str(features.reference),
        "current_window": str(features.current),
        "reference_rows": features.reference_rows,
        "reference_hours_of_day": dg.MetadataValue.json(list(hours.hours_of_day) if hours else "all"),
        "reference_days": hours.days if hours else "all",
        "current_rows": features.current_rows,
        "drifted_share": round(features.drifted_share, 4),
        "threshold": features.threshold,
        "detected": features.detected,
        "drifted_columns": dg.MetadataValue.json(features.drifted_columns),
        "skipped_columns": dg.MetadataValue.json(features.skipped),
        "feature_scores": _scores_table(features),
        "html": dg.MetadataValue.path(str(features.html_path)),
        "seconds": round(result.seconds, 2),
        "pushed": pushed,
    }
    if hourly:
        detected, description = drift.verdict(result.named_reports)
        metadata |= {"verdict": description, "pvalue": settings.drift_recent_pvalue}
        metadata["detected"] = detected
        tail = result.tail
        if tail is None:
            metadata["tail"] = result.tail_note or "not compared: no tail window"
        else:
            metadata |= {
                "tail/window": str(tail.current),
                "tail/rows": tail.current_rows,
                "tail/drifted_share": round(tail.drifted_share, 4),
                "tail/detected": tail.detected,
                "tail/feature_scores": _scores_table(tail),
                "tail/html": dg.MetadataValue.path(str(tail.html_path)),
            }
    predictions = result.predictions
    if predictions is None:
        metadata["predictions"] = "not compared: no production version or no served prediction in the window"
    else:
        score = predictions.columns[drift.SCORE]
        metadata |= {
            "predictions/detected": predictions.detected,
            "predictions/score": round(score.score, 5),
            "predictions/method": score.method,
            "predictions/served_rows": predictions.current_rows,
            "predictions/reference_rows": predictions.reference_rows,
            "predictions/html": dg.MetadataValue.path(str(predictions.html_path)),
        }
    return dg.MaterializeResult(metadata=metadata)


def _hourly_rule(settings: Settings) -> dict[str, Any]:
    """``run_drift``'s arguments of the hourly check's rule."""
    return {
        "same_hours_of_day": True,
        "pvalue": settings.drift_recent_pvalue,
        "tail_minutes": settings.drift_recent_tail_minutes,
        "tail_min_rows": settings.drift_recent_tail_min_rows,
    }


def _window(name: str, start: str | None, end: str | None) -> drift.Window | None:
    if start is None and end is None:
        return None
    if start is None or end is None:
        raise dg.Failure(f"the {name} window needs both {name}_start and {name}_end", allow_retries=False)
    try:
        return drift.Window(datetime.fromisoformat(start), datetime.fromisoformat(end))
    except ValueError as error:  # a malformed date-time or an empty window
        raise dg.Failure(f"bad {name} window: {error}", allow_retries=False) from error


def _scores_table(report: drift.DriftReport) -> dg.TableMetadataValue:
    return dg.MetadataValue.table(
        records=[
            dg.TableRecord(
                {
                    "feature": name,
                    "drifted": column.drifted,
                    "score": round(column.score, 5),
                    "threshold": column.threshold,
                    "method": column.method,
                }
            )
            for name, column in report.columns.items()
        ],
        schema=dg.TableSchema(
            columns=[
                dg.TableColumn("feature", "string"),
                dg.TableColumn("drifted", "bool"),
                dg.TableColumn("score", "float"),
                dg.TableColumn("threshold", "float"),
                dg.TableColumn("method", "string"),
            ]
        ),
    )


@dg.asset(deps=["stg_labels"], group_name="monitoring", kinds={"postgres", "scikitlearn"})
def live_model_performance(
    context: dg.AssetExecutionContext, postgres: PostgresResource
) -> dg.MaterializeResult:
    """Per day and served version over the last ``live_metrics_days`` days: ROC AUC, PR AUC, precision
    and recall on predictions whose labels have arrived, in ``monitoring.live_model_performance``."""
    settings = get_settings()
    started = time.perf_counter()
    url = postgres.database_url()
    try:
        performance = live.compute(url, settings.live_metrics_days)
    except live.LivePerformanceError as error:
        raise dg.Failure(str(error), allow_retries=False) from error
    written = live.store(url, performance)
    seconds = time.perf_counter() - started
    samples = [*live.samples(performance), *metrics.run_samples("live_model_performance", seconds)]
    pushed = metrics.publish("live_model_performance", samples, settings.pushgateway_url)
    latest = performance.latest_complete
    context.log.info(f"{written} day/version rows from {performance.first_day} to {performance.last_day}")
    metadata: dict[str, dg.RawMetadataValue] = {
        "first_day": performance.first_day.isoformat(),
        "last_day": performance.last_day.isoformat(),
        "rows_written": written,
        "latest_complete_day": latest[0].day.isoformat() if latest else "none",
        "days": _days_table(performance),
        "seconds": round(seconds, 2),
        "pushed": pushed,
    }
    for day in latest:  # numeric entries: the UI plots them across materializations
        metadata[f"v{day.model_version}/labelled"] = day.labelled
        metadata |= {f"v{day.model_version}/{name}": round(v, 5) for name, v in day.metrics().items()}
    return dg.MaterializeResult(metadata=metadata)


def _days_table(performance: live.LivePerformance) -> dg.TableMetadataValue:
    columns = [
        ("day", "string"),
        ("model_version", "string"),
        ("complete", "bool"),
        ("predictions", "int"),
        ("labelled", "int"),
        ("frauds", "int"),
        ("flagged", "int"),
        *((name, "float") for name in live.METRICS),
    ]
    records = []
    for day in performance.days:
        values = {name: getattr(day, name) for name, _ in columns}
        values["day"] = day.day.isoformat()
        records.append(
            dg.TableRecord({k: round(v, 5) if isinstance(v, float) else v for k, v in values.items()})
        )
    return dg.MetadataValue.table(
        records=records, schema=dg.TableSchema(columns=[dg.TableColumn(n, t) for n, t in columns])
    )
