"""The training domain through Dagster on a real instance, PostgreSQL and MLflow server: the
``fraud_model`` asset trains, registers and gates a version (lineage and gate decision as metadata,
the gate as an asset check; its figures pushed to a real Pushgateway); the ``promote_model_job`` job moves
``production`` with an approver and a reason, and a bad request fails the run with the reason instead
of moving anything."""

from __future__ import annotations

import uuid
from pathlib import Path

import dagster as dg
import pytest

from rtml.config import get_settings
from rtml.defs.resources import PostgresServer
from rtml.defs.training.assets import fraud_model, production_model
from rtml.defs.training.jobs import promote_model_job, training_job
from rtml.defs.training.resources import MlflowResource, MlflowServer
from rtml.stack.local import StackInfo
from rtml.training import model_registry
from tests.monitoring_stack import pushed_series, pushgateway


@pytest.fixture(scope="module")
def mlflow_resource(mlflow_tracking_uri: str) -> MlflowResource:
    return MlflowServer(
        tracking_uri=mlflow_tracking_uri, model_name=f"fraud-detector-dg-{uuid.uuid4().hex[:8]}"
    )


@pytest.fixture(scope="module")
def resources(training_db: str, mlflow_resource: MlflowResource) -> dict[str, object]:
    return {"postgres": PostgresServer(url=training_db), "mlflow": mlflow_resource}


@pytest.fixture(scope="module")
def instance(stack: StackInfo) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_config(str(stack.dagster_home))


def _job(name: str, resources: dict[str, object]) -> dg.JobDefinition:
    """The domain's job, its resources pointed at the test database and a registered model of its own, with
    the settings of the moment (a test may point them at its Pushgateway)."""
    domain = dg.Definitions(
        assets=[fraud_model, production_model],
        jobs=[training_job, promote_model_job],
        resources={**resources, "settings": get_settings()},
    )
    return domain.resolve_job_def(name)


def test_training_job_registers_and_gates_a_version(
    instance: dg.DagsterInstance,
    resources: dict[str, object],
    mlflow_resource: MlflowResource,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pushgateway(tmp_path) as gateway:
        monkeypatch.setenv("RTML_PUSHGATEWAY_URL", gateway.url)
        get_settings.cache_clear()
        try:
            result = _job("training_job", resources).execute_in_process(instance=instance)
        finally:
            monkeypatch.undo()
            get_settings.cache_clear()
        pushed = pushed_series(gateway.url, "fraud_model")
    assert result.success
    materialization = result.asset_materializations_for_node("fraud_model")[0]
    metadata = {key: value.value for key, value in materialization.metadata.items()}
    assert metadata["gate"] == "staged"  # the first version clears the floor (no production yet)
    assert metadata["test_roc_auc"] > 0.85
    assert len(str(metadata["dvc_snapshot_md5"])) == 32 and metadata["snapshot_rows"] > 0
    assert str(metadata["mlflow_url"]).endswith(f"/versions/{metadata['model_version']}")
    [check] = result.get_asset_check_evaluations()
    assert check.check_name == "evaluation_gate" and check.passed

    # the real push, as Prometheus would scrape it: the version's figures under the contract's labels
    version = {("model_name", mlflow_resource.model_name), ("model_version", str(metadata["model_version"]))}
    figures = {
        dict(labels)["metric"]: value
        for (name, labels), value in pushed.items()
        if name == "rtml_training_metric"
    }
    assert figures["test_roc_auc"] == pytest.approx(metadata["test_roc_auc"], abs=1e-5)  # rounded there
    assert {"test_pr_auc", "validation_roc_auc"} <= set(figures)
    assert all(
        labels == frozenset({*version, ("metric", dict(labels)["metric"])})
        for name, labels in pushed
        if name == "rtml_training_metric"
    )
    assert {name for name, _ in pushed} == {
        "rtml_training_metric",
        "rtml_pipeline_run_duration_seconds",
        "rtml_pipeline_last_success_timestamp_seconds",
    }

    client = mlflow_resource.client()
    staged = model_registry.version_with_alias(client, model_registry.STAGING, mlflow_resource.model_name)
    assert staged is not None and staged.version == metadata["model_version"]


def test_promote_job_moves_production_and_refuses_bad_requests(
    instance: dg.DagsterInstance, resources: dict[str, object], mlflow_resource: MlflowResource
) -> None:
    client = mlflow_resource.client()
    staged = model_registry.version_with_alias(client, model_registry.STAGING, mlflow_resource.model_name)
    assert staged is not None, "run after the training job test"
    job = _job("promote_model_job", resources)

    def config(**values: str) -> dict[str, object]:
        return {"ops": {"production_model": {"config": values}}}

    promoted = job.execute_in_process(
        instance=instance, run_config=config(version=staged.version, approver="dana", reason="reviewed")
    )
    assert promoted.success
    metadata = promoted.asset_materializations_for_node("production_model")[0].metadata
    assert metadata["approver"].value == "dana" and metadata["model_version"].value == staged.version
    production = model_registry.version_with_alias(
        client, model_registry.PRODUCTION, mlflow_resource.model_name
    )
    assert production is not None and production.version == staged.version

    # rolling back the first production version is refused with the reason; nothing moves
    refused = job.execute_in_process(
        instance=instance,
        run_config=config(action="ROLLBACK", approver="dana", reason="test"),
        raise_on_error=False,
    )
    assert not refused.success
    failure = refused.get_step_failure_events()[0].step_failure_data.error
    assert failure is not None and "nothing to roll back to" in failure.message
    production = model_registry.version_with_alias(
        client, model_registry.PRODUCTION, mlflow_resource.model_name
    )
    assert production is not None and production.version == staged.version
