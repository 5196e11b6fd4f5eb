"""The model as assets: ``fraud_model`` (train, register, evaluation gate → ``staging``) and
``production_model`` (the ``production`` alias, moved only by a person: promote or roll back).

MLflow and scikit-learn are imported where a step runs, not when the code location loads: every run,
code server and sensor tick loads it, and most never train (about 1.5 s of each load).
"""

from datetime import datetime
from enum import Enum

import dagster as dg
from pydantic import Field

from rtml.config import Settings
from rtml.defs.resources import PostgresResource
from rtml.defs.training.resources import MlflowResource
from rtml.monitoring import metrics


class TrainingConfig(dg.Config):
    window_start: str | None = None
    """ISO date-time; unset: from the oldest labelled transaction."""
    window_end: str | None = None
    """ISO date-time (exclusive); unset: up to the newest labelled transaction."""
    learning_rate: float = 0.1
    max_iter: int = 100
    exclude_features: list[str] = Field(default_factory=list)
    """Features left out (ablation studies; a weakened model for testing the gate)."""


@dg.asset(
    deps=["training_set"],
    group_name="training",
    kinds={"mlflow", "scikitlearn"},
    check_specs=[
        dg.AssetCheckSpec(
            "evaluation_gate",
            asset="fraud_model",
            description="The new version beats production on its test window (staged), or is rejected.",
        )
    ],
)
def fraud_model(
    context: dg.AssetExecutionContext,
    config: TrainingConfig,
    postgres: PostgresResource,
    mlflow: MlflowResource,
    settings: dg.ResourceParam[Settings],
) -> dg.MaterializeResult:
    """A new version of ``fraud-detector`` trained on a snapshot of ``training_set``, logged to MLflow
    with lineage tags, then gated against production: staged or rejected."""
    from rtml.training import model_registry
    from rtml.training.tracking import train_and_register

    result = train_and_register(
        postgres.database_url(),
        mlflow.uri(),
        settings,
        start=_parse(config.window_start),
        end=_parse(config.window_end),
        params={"learning_rate": config.learning_rate, "max_iter": config.max_iter},
        exclude_features=tuple(config.exclude_features),
        model_name=mlflow.model_name,
    )
    decision = model_registry.gate(
        mlflow.client(), result.model_version, result.holdout, settings, mlflow.model_name
    )
    context.log.info(f"{mlflow.model_name} v{result.model_version}: {decision.reason}")
    lineage = result.lineage
    version = {"model_name": mlflow.model_name, "model_version": str(result.model_version)}
    samples = metrics.run_samples("fraud_model", sum(result.seconds.values()))
    samples += [
        metrics.Sample("rtml_training_metric", value, {**version, "metric": key})
        for key, value in result.metrics.items()
        if key.startswith(("test_", "validation_"))
    ]
    metrics.publish("fraud_model", samples, settings.monitoring.pushgateway_url)
    return dg.MaterializeResult(
        metadata={
            "model_version": result.model_version,
            "mlflow_run_id": result.run_id,
            "mlflow_url": dg.MetadataValue.url(mlflow.version_url(result.model_version)),
            "gate": "staged" if decision.staged else "rejected",
            "gate_reason": decision.reason,
            "dvc_snapshot_md5": lineage.snapshot_md5,
            "snapshot_rows": lineage.snapshot_rows,
            "data_window": f"{lineage.window_start.isoformat()} / {lineage.window_end.isoformat()}",
            "git_commit": lineage.git_commit,
            "dbt_manifest_sha256": lineage.dbt_manifest_sha256,
            **{key: round(value, 5) for key, value in result.metrics.items() if key.startswith("test_")},
            **{f"seconds_{step}": round(value, 2) for step, value in result.seconds.items()},
            "threshold_review": result.thresholds.review,
            "threshold_decline": result.thresholds.decline,
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="evaluation_gate",
                passed=decision.staged,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"reason": decision.reason, "compared_with": decision.production_version or "none"},
            )
        ],
    )


class PromotionAction(Enum):
    PROMOTE = "promote"
    ROLLBACK = "rollback"


class PromotionConfig(dg.Config):
    """A person's approval: which version goes to production (or roll back), who, and why."""

    action: PromotionAction = PromotionAction.PROMOTE
    version: str | None = None
    """The version to promote (``rtml models`` lists them); unused for a rollback."""
    approver: str
    reason: str


@dg.asset(deps=[fraud_model], group_name="training", kinds={"mlflow"})
def production_model(
    context: dg.AssetExecutionContext, config: PromotionConfig, mlflow: MlflowResource
) -> dg.MaterializeResult:
    """The version holding the ``production`` alias. Materializing it is the manual approval step:
    launch ``promote_model_job`` from the UI with the version, approver and reason."""
    from rtml.training import model_registry

    client = mlflow.client()
    try:
        if config.action is PromotionAction.ROLLBACK:
            version = model_registry.rollback(client, config.approver, config.reason, mlflow.model_name)
        else:
            if not config.version:
                raise model_registry.RegistryError(
                    "a promotion names the version to promote (config: version)"
                )
            version = model_registry.promote(
                client, config.version, config.approver, config.reason, mlflow.model_name
            )
    except model_registry.RegistryError as error:
        raise dg.Failure(str(error), allow_retries=False) from error
    context.log.info(f"{mlflow.model_name} v{version.version} is in production ({config.action.value})")
    return dg.MaterializeResult(
        metadata={
            "model_version": version.version,
            "action": config.action.value,
            "approver": config.approver,
            "reason": config.reason,
            "previous_production_version": version.tags.get("previous_production_version", "none"),
            "mlflow_url": dg.MetadataValue.url(mlflow.version_url(version.version)),
        }
    )


def _parse(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None
