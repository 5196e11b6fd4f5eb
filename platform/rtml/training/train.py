"""Fit and evaluate the fraud model on a training-set frame: split by time, fit, choose thresholds on
validation, measure validation and test. The same function serves the Dagster asset and the DVC stages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from rtml.training import evaluate
from rtml.training.dataset import FeatureSpec, TrainingData, split_by_time
from rtml.training.model import build_pipeline


@dataclass(frozen=True)
class FittedModel:
    pipeline: Pipeline
    features: FeatureSpec
    """What the model uses (``data`` holds every feature, so other models can be scored on it)."""
    data: TrainingData
    thresholds: evaluate.Thresholds
    metrics: dict[str, float]
    """``validation_*`` and ``test_*`` metrics, plus ``train_rows`` and ``train_fraud_rate``."""
    validation_scores: np.ndarray
    test_scores: np.ndarray


def fit(
    frame: pd.DataFrame, spec: FeatureSpec, exclude_features: tuple[str, ...] = (), **params: Any
) -> FittedModel:
    """``params`` override the classifier's defaults (see ``model.DEFAULT_PARAMS``);
    ``exclude_features`` leaves features out (an ablation, or a deliberately weakened model)."""
    data = split_by_time(frame, spec)
    features = without(spec, exclude_features)
    pipeline = build_pipeline(features, **params)
    pipeline.fit(columns(data.train.X, features.columns), data.train.y)
    validation_scores = score(pipeline, data.validation.X)
    test_scores = score(pipeline, data.test.X)
    thresholds = evaluate.choose_thresholds(data.validation.y, validation_scores)
    metrics = {
        **prefixed("validation", evaluate.metrics(data.validation.y, validation_scores, thresholds)),
        **prefixed("test", evaluate.metrics(data.test.y, test_scores, thresholds)),
        "train_rows": float(len(data.train)),
        "train_fraud_rate": float(np.mean(data.train.y)),
    }
    return FittedModel(pipeline, features, data, thresholds, metrics, validation_scores, test_scores)


def without(spec: FeatureSpec, excluded: tuple[str, ...]) -> FeatureSpec:
    unknown = set(excluded) - set(spec.columns)
    if unknown:
        raise ValueError(f"unknown features to exclude: {sorted(unknown)}; known: {spec.columns}")
    return FeatureSpec(
        numeric=[name for name in spec.numeric if name not in excluded],
        categorical=[name for name in spec.categorical if name not in excluded],
    )


def score(pipeline: Pipeline, X: pd.DataFrame) -> np.ndarray:
    """Fraud probabilities; ``X`` may hold more columns than the model was fitted on."""
    return np.asarray(pipeline.predict_proba(columns(X, list(pipeline.feature_names_in_)))[:, 1])


def columns(X: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """``X[names]``, without its copy of every row when ``X`` holds just those columns in that order."""
    return X if list(X.columns) == names else X[names]


def prefixed(prefix: str, values: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}_{key}": value for key, value in values.items()}
