"""Train and register: snapshot a window of ``features.training_set`` (Parquet, named by its DVC hash),
fit and evaluate on it, and log to MLflow — params, validation and test metrics, thresholds and lineage
as tags, ROC / precision-recall / permutation-importance PNGs, the snapshot as the run's dataset input,
and the model with its signature — registered as a new version of ``fraud-detector``.
The model is saved as skops (never pickle): ``rtml.training.loading`` loads nothing else.

A new version gets no alias here: ``registry.gate`` decides on ``staging``, a person on ``production``.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import sklearn
from mlflow.data.pandas_dataset import from_pandas
from mlflow.models import infer_signature

from rtml.config import Settings
from rtml.features.feature_registry import load_registry
from rtml.training import evaluate, figures, mlflow_internals
from rtml.training.dataset import FEATURE_VIEWS, Split, feature_spec, to_frame
from rtml.training.lineage import Lineage, feature_definitions, git_state
from rtml.training.model import TRUSTED_TYPES, model_params
from rtml.training.model_registry import client_for
from rtml.training.snapshot import Snapshot, snapshot_rows, write_snapshot
from rtml.training.train import FittedModel, columns, fit

EXPERIMENT = "fraud-detection"


@dataclass(frozen=True)
class TrainingResult:
    run_id: str
    model_version: str
    metrics: dict[str, float]
    """``validation_*`` and ``test_*`` metrics, as logged."""
    thresholds: evaluate.Thresholds
    lineage: Lineage
    holdout: Split
    """The test window: the evaluation gate compares this version with production on it."""
    seconds: dict[str, float]
    """Wall time of each step: ``snapshot`` (the rows from PostgreSQL), ``fit`` (split, fit, score
    validation and test; the snapshot's Parquet file is written meanwhile), ``log`` (plots, permutation
    importance, logging and registration)."""


def train_and_register(
    database_url: str,
    tracking_uri: str,
    settings: Settings,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    params: dict[str, Any] | None = None,
    exclude_features: tuple[str, ...] = (),
    model_name: str,
) -> TrainingResult:
    registry = load_registry()
    spec = feature_spec(registry)
    began = time.perf_counter()
    rows = snapshot_rows(database_url, start, end, spec)
    snapshotted = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1) as background:
        # the snapshot's Parquet file and its hash (pyarrow, outside the GIL) while the model fits on
        # the same rows: the file holds exactly what the model saw, without being read back
        written = background.submit(take_snapshot, rows, settings, start, end)
        # then what the logging step loads on first use (skops' trusted types, MLflow's map of the
        # installed packages: about 1.5 s of Python), while the model fits mostly outside the GIL
        background.submit(load_for_logging)
        fitted = fit(to_frame(rows, spec), spec, exclude_features, **(params or {}))
        snapshot = written.result()
    del rows  # the fitted model's frames hold them now: the Arrow copy goes before the logging
    fitted_at = time.perf_counter()
    commit, dirty = git_state()
    lineage = Lineage(
        snapshot_md5=snapshot.md5,
        snapshot_rows=snapshot.rows,
        window_start=snapshot.start,
        window_end=snapshot.end,
        dbt_manifest_sha256=registry.manifest_hash,
        feature_definitions=feature_definitions(registry, FEATURE_VIEWS),
        git_commit=commit,
        git_dirty=dirty,
    )
    result = log_and_register(fitted, lineage, snapshot, tracking_uri, model_name)
    seconds = {
        "snapshot": snapshotted - began,
        "fit": fitted_at - snapshotted,
        "log": time.perf_counter() - fitted_at,
    }
    return replace(result, seconds=seconds)


def load_for_logging() -> None:
    """What ``log_and_register`` would otherwise load while the permutation importance runs."""
    import skops.io  # noqa: F401 -- its import scans scikit-learn for the trusted types

    mlflow_internals.load_installed_packages()


def take_snapshot(
    rows: pa.Table, settings: Settings, start: datetime | None, end: datetime | None
) -> Snapshot:
    """Write the window's rows to ``<data dir>/snapshots/<md5>.parquet`` (content-addressed: the same data
    gives the same file, which ``dvc add`` / the DVC pipeline would hash identically)."""
    settings.services.snapshots_dir.mkdir(parents=True, exist_ok=True)
    partial = settings.services.snapshots_dir / f".export-{uuid.uuid4().hex}.parquet"
    snapshot = write_snapshot(rows, partial, start, end)
    final = settings.services.snapshots_dir / f"{snapshot.md5}.parquet"
    partial.replace(final)
    return replace(snapshot, path=final)


def configure(tracking_uri: str, experiment: str = EXPERIMENT) -> str:
    """Point MLflow at the tracking server; the experiment's id (created when missing)."""
    client_for(tracking_uri)
    existing = mlflow.get_experiment_by_name(experiment)
    if existing is not None:
        return str(existing.experiment_id)
    return str(mlflow.create_experiment(experiment))


def log_and_register(
    fitted: FittedModel, lineage: Lineage, snapshot: Snapshot, tracking_uri: str, model_name: str
) -> TrainingResult:
    data, pipeline = fitted.data, fitted.pipeline
    experiment_id = configure(tracking_uri)
    with (
        ThreadPoolExecutor(max_workers=1) as background,
        mlflow.start_run(experiment_id=experiment_id) as run,
    ):
        # permutation importance (about half of this step: 73 predictions) overlaps the logging and the
        # model's serialisation and upload below; the predictions run outside the GIL
        importance = background.submit(
            figures.importance_figure, pipeline, columns(data.test.X, fitted.features.columns), data.test.y
        )
        mlflow.log_params(
            {
                **model_params(pipeline),
                "model": "HistGradientBoostingClassifier",
                "features_numeric": ",".join(fitted.features.numeric),
                "features_categorical": ",".join(fitted.features.categorical),
                "validation_start": data.boundaries[0].isoformat(),
                "test_start": data.boundaries[1].isoformat(),
                "review_fpr": evaluate.REVIEW_FPR,
                "decline_fpr": evaluate.DECLINE_FPR,
            }
        )
        mlflow.log_metrics(fitted.metrics)
        tags = {**fitted.thresholds.as_tags(), **lineage.as_tags(run.info.run_id)}
        mlflow.set_tags(tags)
        mlflow.log_input(
            from_pandas(
                data.train.X[fitted.features.columns].head(0),
                source=str(snapshot.path),
                name="training_set",
                digest=snapshot.md5,
            ),
            context="training",
        )
        for split, y, scores in (
            ("validation", data.validation.y, fitted.validation_scores),
            ("test", data.test.y, fitted.test_scores),
        ):
            mlflow.log_figure(figures.roc_figure(y, scores, split), f"plots/roc_{split}.png")
            mlflow.log_figure(figures.pr_figure(y, scores, split), f"plots/pr_{split}.png")
        example = _input_example(data.validation.X[fitted.features.columns])
        info = mlflow.sklearn.log_model(
            pipeline,
            name="model",
            signature=infer_signature(example, pipeline.predict_proba(example)[:, 1]),
            # no input_example: MLflow would check it by loading the model with its own loader, which
            # rtml.training.loading switches off; the evaluation gate loads the version safely next
            pip_requirements=[
                f"scikit-learn=={sklearn.__version__}",
                f"pandas=={pd.__version__}",
                f"numpy=={np.__version__}",
            ],
            serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS,  # explicit: loading demands it
            skops_trusted_types=TRUSTED_TYPES,  # checked at save; loading uses its own copy of the list
        )
        mlflow.log_figure(importance.result(), "plots/permutation_importance.png")
        summary = {f"test_{key}": f"{fitted.metrics[f'test_{key}']:.4f}" for key in ("roc_auc", "pr_auc")}
        # registered with its tags in one request, not one request per tag after registering
        registered = mlflow.register_model(info.model_uri, model_name, tags={**tags, **summary})
    version = str(registered.version)
    return TrainingResult(run.info.run_id, version, fitted.metrics, fitted.thresholds, lineage, data.test, {})


def _input_example(X: pd.DataFrame, rows: int = 5) -> pd.DataFrame:
    """A few complete rows (JSON cannot carry NaN faithfully)."""
    complete = X.dropna()
    return (complete if len(complete) >= rows else X.fillna(0.0)).head(rows).reset_index(drop=True)
