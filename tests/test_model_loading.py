"""Safe model loading (``rtml.training.loading``) against the session's real MLflow registry: only skops,
only the project's trusted types, whatever the artifact says; and the registry tags a served version
must carry (``model_registry.check_approved``)."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.pipeline import Pipeline

from rtml.training import model_registry
from rtml.training.dataset import FeatureSpec, feature_spec
from rtml.training.loading import ModelRefused, load_pipeline
from rtml.training.model import TRUSTED_TYPES, build_pipeline
from tests.model_versions import UNSAFE_TRUSTED_TYPES, log_version, with_os_system

THRESHOLDS = {"threshold_review": "0.5", "threshold_decline": "0.9"}


@pytest.fixture(scope="module")
def spec() -> FeatureSpec:
    return feature_spec()


def frame(spec: FeatureSpec, rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    data: dict[str, object] = {name: rng.normal(size=rows) for name in spec.numeric}
    data.update({name: rng.choice(["a", "b", "c"], size=rows).astype(object) for name in spec.categorical})
    return pd.DataFrame(data)[spec.columns]


@pytest.fixture(scope="module")
def pipeline(spec: FeatureSpec) -> Pipeline:
    X = frame(spec, 400, seed=1)
    y = (X[spec.numeric[0]] + np.random.default_rng(2).normal(scale=0.5, size=len(X))) > 0.8
    return build_pipeline(spec, max_iter=10).fit(X, y)


@pytest.fixture(scope="module")
def name(mlflow_tracking_uri: str) -> str:
    model_registry.client_for(mlflow_tracking_uri)
    return f"loading-test-{uuid.uuid4().hex[:8]}"


def test_a_skops_version_loads_and_predicts_as_logged(
    pipeline: Pipeline, name: str, spec: FeatureSpec
) -> None:
    version = log_version(pipeline, name, THRESHOLDS)
    loaded = load_pipeline(f"models:/{name}/{version}")
    X = frame(spec, 50, seed=3)
    np.testing.assert_array_equal(loaded.predict_proba(X), pipeline.predict_proba(X))
    # importing the loader switched MLflow's own deserialising loaders off in this process
    with pytest.raises(MlflowException, match="MLFLOW_ALLOW_PICKLE_DESERIALIZATION"):
        mlflow.sklearn.load_model(f"models:/{name}/{version}")


@pytest.mark.parametrize("serialization_format", ["pickle", "cloudpickle"])
def test_a_pickled_version_is_refused(pipeline: Pipeline, name: str, serialization_format: str) -> None:
    version = log_version(pipeline, name, THRESHOLDS, serialization_format=serialization_format)
    with pytest.raises(ModelRefused, match=f"saved as '{serialization_format}'") as refused:
        load_pipeline(f"models:/{name}/{version}")
    assert refused.value.reason == "format"


def test_a_crafted_skops_file_is_refused_whatever_its_own_trusted_list(pipeline: Pipeline, name: str) -> None:
    """The artifact's MLmodel whitelists ``posix.system``; the project's list does not."""
    version = log_version(
        with_os_system(pipeline), name, THRESHOLDS, skops_trusted_types=UNSAFE_TRUSTED_TYPES
    )
    flavor = mlflow.models.get_model_info(f"models:/{name}/{version}").flavors["sklearn"]
    assert flavor["skops_trusted_types"] == UNSAFE_TRUSTED_TYPES
    with pytest.raises(ModelRefused, match=r"posix\.system") as refused:
        load_pipeline(f"models:/{name}/{version}")
    assert refused.value.reason == "untrusted_types"


def test_code_paths_of_the_artifact_are_ignored(
    pipeline: Pipeline, name: str, tmp_path: Path, spec: FeatureSpec
) -> None:
    payload = tmp_path / "rtml_test_payload.py"
    payload.write_text("raise SystemExit('the artifact's code ran')\n")
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            pipeline,
            name="model",
            code_paths=[str(payload)],
            serialization_format="skops",
            skops_trusted_types=TRUSTED_TYPES,
            pip_requirements=[],
        )
    path_before = list(sys.path)
    loaded = load_pipeline(info.model_uri)
    assert sys.path == path_before and "rtml_test_payload" not in sys.modules
    X = frame(spec, 5, seed=4)
    np.testing.assert_array_equal(loaded.predict_proba(X), pipeline.predict_proba(X))


def test_a_skops_file_holding_no_pipeline_is_refused(name: str, spec: FeatureSpec) -> None:
    X = frame(spec, 100, seed=5)[spec.numeric]
    bare = HistGradientBoostingClassifier(max_iter=5).fit(X, X[spec.numeric[0]] > 0)
    version = log_version(bare, name, THRESHOLDS)
    with pytest.raises(ModelRefused, match="not an sklearn Pipeline") as refused:
        load_pipeline(f"models:/{name}/{version}")
    assert refused.value.reason == "invalid"


GATED = {"gate": "staged", "gate_reason": "beats production"}
APPROVED = {"approved_by": "alice", "approval_reason": "better recall", "promoted_at": "2026-12-01T10:00:00"}


@pytest.mark.parametrize(
    ("tags", "reason"),
    [
        ({}, "not_gated"),
        (APPROVED, "not_gated"),  # promoted, but the gate never saw it
        (GATED, "not_approved"),  # the alias moved by hand
        ({**GATED, "approved_by": "alice"}, "not_approved"),
        ({**GATED, "gate": "rejected", **APPROVED}, "gate_rejected"),
        ({**GATED, **APPROVED}, None),
        ({**GATED, "gate": "rejected", **APPROVED, "gate_overridden_by": "alice"}, None),
    ],
)
def test_check_approved(tags: dict[str, str], reason: str | None) -> None:
    if reason is None:
        model_registry.check_approved(tags, "v1")
        return
    with pytest.raises(ModelRefused) as refused:
        model_registry.check_approved(tags, "v1")
    assert refused.value.reason == reason and "v1" in str(refused.value)
