"""A person's view of the registry: `rtml promote / rollback / models` on the command line, and the MLflow
UI of the stack's tracking server showing `fraud-detector` with its aliases.

Tiny versions are registered through the session's server (artifacts through its proxy, the registry in
its PostgreSQL database); production moves only through the `rtml` command; the model's page in the UI
shows each alias on the right version. Other tests use registered models of their own.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from tests.browser import chromium_page, chromium_path, screenshot

pytestmark = [pytest.mark.browser]

MODEL_NAME = "fraud-detector"


def _register_tiny_versions(tracking_uri: str, count: int) -> list[str]:
    import mlflow
    import mlflow.sklearn
    from mlflow.tracking import MlflowClient
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    features = rng.normal(size=(50, 3))
    labels = (features[:, 0] + rng.normal(scale=0.5, size=50) > 0).astype(int)
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("rtml-ui-test")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("rtml-ui-test")
    versions = []
    mlflow.set_tracking_uri(tracking_uri)
    for _ in range(count):
        with mlflow.start_run(experiment_id=experiment_id):
            logged = mlflow.sklearn.log_model(
                LogisticRegression().fit(features, labels),
                name="model",
                registered_model_name=MODEL_NAME,
                # Given, not inferred: inference runs the model in a subprocess (and looks at uv),
                # about 8 s per version here.
                pip_requirements=["scikit-learn"],
            )
        assert logged.registered_model_version is not None
        versions.append(str(logged.registered_model_version))
    return versions


def rtml(*args: str, code: int = 0) -> str:
    from typer.testing import CliRunner

    from rtml.cli import app

    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == code, (args, result.output)
    return result.output


def test_promote_rollback_and_models_on_the_command_line_and_in_the_ui(mlflow_tracking_uri: str) -> None:
    from mlflow.tracking import MlflowClient

    chromium_path()  # skip early, before registering anything, if there is no browser
    production, replaced, staging = _register_tiny_versions(mlflow_tracking_uri, 3)
    assert "(was: none)" in rtml("promote", production, "--approver", "alice", "--reason", "first")
    out = rtml("promote", replaced, "--approver", "bob", "--reason", "newer")
    assert f"v{replaced} is in production (was: {production})" in out
    assert f"v{production} is in production again" in rtml("rollback", "--approver", "bob", "--reason", "why")
    assert "has no version '99999'" in rtml("promote", "99999", "--approver", "a", "--reason", "b", code=1)
    client = MlflowClient(mlflow_tracking_uri)
    client.set_registered_model_alias(MODEL_NAME, "staging", staging)  # what the evaluation gate does
    listed = {line.split()[0]: line.split()[1] for line in rtml("models").splitlines()[1:]}
    assert (listed[production], listed[replaced], listed[staging]) == ("production", "rolled", "staging")

    with chromium_page() as page:
        page.goto(f"{mlflow_tracking_uri}/#/models/{MODEL_NAME}", wait_until="domcontentloaded")
        page.get_by_role("heading", name=MODEL_NAME).wait_for(state="visible", timeout=60_000)
        rows = {
            alias: page.get_by_role("row").filter(
                has=page.get_by_role("link", name=f"Version {version}", exact=True)
            )
            for alias, version in (("staging", staging), ("production", production))
        }
        for row in rows.values():
            row.first.wait_for(state="visible", timeout=30_000)
        close_assistant = page.get_by_role("button", name="Close")  # the assistant panel opens by default
        if close_assistant.count():
            close_assistant.first.click()
        screenshot(page, "mlflow-model-page.png")
        for alias, row in rows.items():
            # The UI renders an alias as "@" + no-break space + name.
            assert re.search(rf"@\s{alias}\b", row.first.inner_text()), (alias, row.first.inner_text())
