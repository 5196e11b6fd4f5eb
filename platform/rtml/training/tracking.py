"""MLflow logging and registration: train on a window of ``features.training_set``, evaluate, log
params, metrics (validation and test), thresholds (tags), ROC/PR curve PNGs and the model (signature and
input example), and register it as a new version of ``fraud-detector``.

The registry uses aliases (``staging``, ``production``) only, never the deprecated stages; a new version
gets no alias here (promotion is a separate, explicit step).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import sklearn
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from rtml.config import Settings
from rtml.features.registry import load_registry
from rtml.training import evaluate
from rtml.training.dataset import feature_spec, load_training_set, split_by_time
from rtml.training.model import build_pipeline, model_params

MODEL_NAME = "fraud-detector"
EXPERIMENT = "fraud-detection"
TRUSTED_TYPES = [
    "functools.partial",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.utils.validation.check_array",
]


@dataclass(frozen=True)
class TrainingResult:
    run_id: str
    model_version: str
    metrics: dict[str, float]
    """``validation_*`` and ``test_*`` metrics, as logged."""
    thresholds: evaluate.Thresholds


def configure(tracking_uri: str, artifact_root: Path, experiment: str = EXPERIMENT) -> str:
    """Point MLflow at the tracking/registry database; the experiment's id (created when missing)."""
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    existing = mlflow.get_experiment_by_name(experiment)
    if existing is not None:
        return str(existing.experiment_id)
    artifact_root.mkdir(parents=True, exist_ok=True)
    return str(mlflow.create_experiment(experiment, artifact_location=artifact_root.resolve().as_uri()))


def train_and_register(
    database_url: str,
    mlflow_tracking_uri: str,
    artifact_root: Path | None,
    settings: Settings,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    model_name: str = MODEL_NAME,
) -> TrainingResult:
    registry = load_registry()
    spec = feature_spec(registry)
    frame, _ = load_training_set(database_url, start, end, spec)
    data = split_by_time(frame, spec)

    pipeline = build_pipeline(spec)
    pipeline.fit(data.train.X, data.train.y)
    val_scores = pipeline.predict_proba(data.validation.X)[:, 1]
    test_scores = pipeline.predict_proba(data.test.X)[:, 1]
    thresholds = evaluate.choose_thresholds(data.validation.y, val_scores)
    results = {
        **_prefixed("validation", evaluate.metrics(data.validation.y, val_scores, thresholds)),
        **_prefixed("test", evaluate.metrics(data.test.y, test_scores, thresholds)),
        "train_rows": float(len(data.train)),
        "train_fraud_rate": float(np.mean(data.train.y)),
    }

    experiment_id = configure(mlflow_tracking_uri, artifact_root or settings.home / "mlflow-artifacts")
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_params(
            {
                **model_params(pipeline),
                "model": "HistGradientBoostingClassifier",
                "features_numeric": ",".join(spec.numeric),
                "features_categorical": ",".join(spec.categorical),
                "window_start": _iso(start or data.train.event_ts.min()),
                "window_end": _iso(end or data.test.event_ts.max()),
                "validation_start": _iso(data.boundaries[0]),
                "test_start": _iso(data.boundaries[1]),
                "review_fpr": evaluate.REVIEW_FPR,
                "decline_fpr": evaluate.DECLINE_FPR,
                "sim_seed": settings.sim_seed,
            }
        )
        mlflow.log_metrics(results)
        tags = {**thresholds.as_tags(), "dbt_manifest_sha256": registry.manifest_hash}
        mlflow.set_tags(tags)
        for split, y, scores in (
            ("validation", data.validation.y, val_scores),
            ("test", data.test.y, test_scores),
        ):
            mlflow.log_figure(evaluate.roc_figure(y, scores, split), f"plots/roc_{split}.png")
            mlflow.log_figure(evaluate.pr_figure(y, scores, split), f"plots/pr_{split}.png")

        example = _input_example(data.validation.X)
        info = mlflow.sklearn.log_model(
            pipeline,
            name="model",
            signature=infer_signature(example, pipeline.predict_proba(example)[:, 1]),
            input_example=example,
            pip_requirements=[
                f"scikit-learn=={sklearn.__version__}",
                f"pandas=={pd.__version__}",
                f"numpy=={np.__version__}",
            ],
            registered_model_name=model_name,
            # MLflow 3 saves sklearn models with skops: name the (own, reviewed) types it may load
            skops_trusted_types=TRUSTED_TYPES,
        )
        version = str(info.registered_model_version)
        client = MlflowClient(mlflow_tracking_uri, mlflow_tracking_uri)
        for key, value in {**tags, "test_roc_auc": f"{results['test_roc_auc']:.4f}"}.items():
            client.set_model_version_tag(model_name, version, key, value)
    return TrainingResult(run.info.run_id, version, results, thresholds)


def _prefixed(prefix: str, values: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}_{key}": value for key, value in values.items()}


def _iso(value: datetime | pd.Timestamp) -> str:
    return pd.Timestamp(value).isoformat()


def _input_example(X: pd.DataFrame, rows: int = 5) -> pd.DataFrame:
    """A few complete rows (JSON cannot carry NaN faithfully)."""
    complete = X.dropna()
    return (complete if len(complete) >= rows else X.fillna(0.0)).head(rows).reset_index(drop=True)
