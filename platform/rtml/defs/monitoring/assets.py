"""Monitoring assets: ``drift_report`` (Evidently, reference = the production version's training window),
``live_model_performance`` (the served model on predictions whose labels have arrived) and
``challenger_comparison`` (the staged version's shadow scores against production's on the same
requests). All push their figures to the Pushgateway when one is configured (``rtml.monitoring.metrics``).

The live figures and the challenger (scikit-learn) and the registry (MLflow) are imported where their
assets run, not when the code location loads (see ``rtml.defs.training.assets``)."""

import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

import dagster as dg

from rtml.config import Settings
from rtml.defs.resources import PostgresResource
from rtml.defs.training.resources import MlflowResource
from rtml.monitoring import drift, metrics
from rtml.monitoring.notify import notify

if TYPE_CHECKING:
    from rtml.monitoring import challenger, live


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
    context: dg.AssetExecutionContext,
    config: DriftConfig,
    postgres: PostgresResource,
    mlflow: MlflowResource,
    settings: dg.ResourceParam[Settings],
) -> dg.MaterializeResult:
    """Feature drift (and drift of the served scores) between the production model's training window and
    the newest ``drift_current_hours`` hours: an Evidently HTML report per kind, a row per report in
    ``monitoring.drift_reports``; the check ``drift_within_threshold`` judges it. Daily (``drift_job``)."""
    return _drift(
        context,
        config,
        postgres,
        mlflow,
        settings,
        settings.monitoring.drift_current_hours,
        settings.monitoring.drift_max_rows,
    )


@dg.asset(deps=DRIFT_DEPS, group_name="monitoring", kinds={"evidently", "postgres"})
def recent_drift_report(
    context: dg.AssetExecutionContext,
    config: DriftConfig,
    postgres: PostgresResource,
    mlflow: MlflowResource,
    settings: dg.ResourceParam[Settings],
) -> dg.MaterializeResult:
    """The hourly drift check: as ``drift_report``, over the newest ``drift_recent_hours`` hours and
    their newest ``drift_recent_tail_minutes``, at most ``drift_recent_max_rows`` rows per window, against
    the reference's rows of the same hours of the day on the same day of the week (UTC; a night or a
    Friday is not a drift), windowed features only where their window is filled (``drift.warm_from``).
    Every numeric column by the two-sample KS test; drift when one p-value is below
    ``drift_recent_pvalue``, in the hour or in its tail. Materialized after every hourly refresh
    (``hourly_drift_sensor``); a separate asset, so the daily full report stays as it was."""
    return _drift(
        context,
        config,
        postgres,
        mlflow,
        settings,
        settings.monitoring.drift_recent_hours,
        settings.monitoring.drift_recent_max_rows,
        hourly=True,
    )


def _drift(
    context: dg.AssetExecutionContext,
    config: DriftConfig,
    postgres: PostgresResource,
    mlflow: MlflowResource,
    settings: Settings,
    current_hours: int,
    max_rows: int,
    hourly: bool = False,
) -> dg.MaterializeResult:
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
    pushed = metrics.publish(name, samples, settings.monitoring.pushgateway_url)
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
        metadata |= {"verdict": description, "pvalue": settings.monitoring.drift_recent_pvalue}
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
        "pvalue": settings.monitoring.drift_recent_pvalue,
        "tail_minutes": settings.monitoring.drift_recent_tail_minutes,
        "tail_min_rows": settings.monitoring.drift_recent_tail_min_rows,
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
    context: dg.AssetExecutionContext, postgres: PostgresResource, settings: dg.ResourceParam[Settings]
) -> dg.MaterializeResult:
    """Per day and served version over the last ``live_metrics_days`` days: ROC AUC, PR AUC, precision
    and recall on predictions whose labels have arrived, in ``monitoring.live_model_performance``."""
    from rtml.monitoring import live

    started = time.perf_counter()
    url = postgres.database_url()
    try:
        performance = live.compute(url, settings.monitoring.live_metrics_days)
    except live.LivePerformanceError as error:
        raise dg.Failure(str(error), allow_retries=False) from error
    written = live.store(url, performance)
    seconds = time.perf_counter() - started
    samples = [*live.samples(performance), *metrics.run_samples("live_model_performance", seconds)]
    pushed = metrics.publish("live_model_performance", samples, settings.monitoring.pushgateway_url)
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


def _days_table(performance: "live.LivePerformance") -> dg.TableMetadataValue:
    from rtml.monitoring import live

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


class ChallengerConfig(dg.Config):
    version: str | None = None
    """The challenger to compare; unset: the version holding ``staging``."""


@dg.asset(deps=["stg_labels"], group_name="monitoring", kinds={"evidently", "postgres", "mlflow"})
def challenger_comparison(
    context: dg.AssetExecutionContext,
    config: ChallengerConfig,
    postgres: PostgresResource,
    mlflow: MlflowResource,
    settings: dg.ResourceParam[Settings],
) -> dg.MaterializeResult:
    """The staged version (shadow-scoring every request) against production on the same requests of the
    last ``challenger_window_days``: PR AUC, ROC AUC, precision, recall and recall at production's
    decline rate on labelled requests, decision agreement and an Evidently comparison of the two score
    distributions on all; a verdict (better / worse / too_few_labelled below
    ``challenger_min_labelled``) in ``monitoring.challenger_comparisons`` and as ``live_*`` tags of the
    version, shown by ``rtml models`` and ``rtml promote``. A new verdict is a ``retraining``
    notification. Daily (``challenger_job``) and on demand; nothing staged is no failure."""
    from rtml.monitoring import challenger
    from rtml.training import model_registry

    started = time.perf_counter()
    client = mlflow.client()
    version = config.version
    if version is None:
        staged = model_registry.version_with_alias(client, model_registry.STAGING, mlflow.model_name)
        if staged is None:
            note = f"nothing to compare: no version of {mlflow.model_name} holds `staging`"
            context.log.info(note)
            return dg.MaterializeResult(metadata={"verdict": "nothing_staged", "summary": note})
        version = str(staged.version)
    url = postgres.database_url()
    previous = challenger.latest(url, version)
    try:
        result = challenger.run(
            url,
            version,
            days=settings.monitoring.challenger_window_days,
            min_labelled=settings.monitoring.challenger_min_labelled,
            reports_dir=settings.services.home / "reports" / "challenger",
            max_rows=settings.monitoring.challenger_max_rows,
        )
    except challenger.ChallengerError as error:
        raise dg.Failure(str(error), allow_retries=False) from error
    for key, value in challenger.tags(result).items():
        client.set_model_version_tag(mlflow.model_name, version, key, value)
    seconds = time.perf_counter() - started
    samples = [*challenger.samples(result), *metrics.run_samples("challenger_comparison", seconds)]
    pushed = metrics.publish("challenger_comparison", samples, settings.monitoring.pushgateway_url)
    context.log.info(result.summary)
    if result.decided and (previous is None or previous.verdict != result.verdict):
        _notify_verdict(result, mlflow, url, settings)
    return dg.MaterializeResult(metadata=_challenger_metadata(result, seconds, pushed))


def _notify_verdict(
    result: "challenger.Comparison", mlflow: MlflowResource, database_url: str, settings: Settings
) -> None:
    """A ``retraining`` notice when a challenger gets its first verdict, or a different one: what the
    person deciding on ``rtml promote`` waits for (the retraining notice itself comes before any
    shadow score)."""
    from rtml.monitoring import challenger

    version = result.challenger_version
    worse = result.verdict == challenger.WORSE
    action = "think twice before" if worse else "approve with"
    notify(
        "retraining",
        f"{mlflow.model_name} v{version} is {result.verdict} live than production",
        f"{result.summary}; {action} `rtml promote {version} --approver NAME --reason TEXT`",
        {
            "model": mlflow.model_name,
            "version": version,
            "live_verdict": result.verdict,
            "compared_with": result.production_version or "none",
            "labelled": result.labelled,
            "report": str(result.scores.html_path) if result.scores else "none",
            "mlflow": mlflow.version_url(version),
        },
        settings,
        database_url=database_url,
    )


def _challenger_metadata(
    result: "challenger.Comparison", seconds: float, pushed: bool
) -> "dict[str, dg.RawMetadataValue]":
    metadata: dict[str, dg.RawMetadataValue] = {
        "verdict": result.verdict,
        "summary": result.summary,
        "challenger_version": result.challenger_version,
        "production_version": result.production_version or "none",
        "window": f"{result.window_start.isoformat()} / {result.window_end.isoformat()}",
        "requests": result.requests,
        "labelled": result.labelled,
        "frauds": result.frauds,
        "min_labelled": result.min_labelled,
        "decision_pairs": dg.MetadataValue.json(result.decision_pairs),
        "seconds": round(seconds, 2),
        "pushed": pushed,
    }
    if result.agreement is not None:
        metadata["decision_agreement"] = round(result.agreement, 5)
    if result.decline_rate is not None:
        metadata["production_decline_rate"] = round(result.decline_rate, 5)
    for role, figures in (("challenger", result.challenger), ("production", result.production)):
        for name, value in (figures.defined() if figures else {}).items():
            metadata[f"{role}/{name}"] = round(value, 5)  # numeric: the UI plots them across runs
    scores = result.scores
    if scores is None:
        metadata["scores"] = "not compared: no request in the window"
    else:
        metadata |= {
            "scores/method": scores.method,
            "scores/score": round(scores.score, 5),
            "scores/differ": scores.differ,
            "scores/production_mean": round(scores.production_mean, 5),
            "scores/challenger_mean": round(scores.challenger_mean, 5),
            "scores/html": dg.MetadataValue.path(str(scores.html_path)),
        }
    return metadata
