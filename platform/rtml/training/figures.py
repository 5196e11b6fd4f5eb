"""The evaluation's figures, logged with each MLflow run (``rtml.training.tracking``): ROC and
precision-recall curves and permutation importance. Apart from ``evaluate`` so that what scores and
gates (the scorer included, whose image has no matplotlib) never imports a plotting library."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.base import BaseEstimator
from sklearn.inspection import permutation_importance
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve
from sklearn.pipeline import Pipeline
from sklearn.utils import Bunch


def roc_figure(y: np.ndarray, scores: np.ndarray, split: str = "test") -> Figure:
    fprs, tprs, _ = roc_curve(y, scores)
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    ax.plot(fprs, tprs, label=f"AUC {roc_auc_score(y, scores):.3f}")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey")
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate (recall)", title=f"ROC ({split})")
    ax.legend(loc="lower right")
    return fig


def pr_figure(y: np.ndarray, scores: np.ndarray, split: str = "test") -> Figure:
    precision, recall, _ = precision_recall_curve(y, scores)
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    ax.plot(recall, precision, label=f"AP {average_precision_score(y, scores):.3f}")
    ax.axhline(float(np.mean(y)), linestyle="--", color="grey", label="base rate")
    ax.set(xlabel="recall", ylabel="precision", title=f"Precision-recall ({split})")
    ax.legend(loc="upper right")
    return fig


def importance_figure(
    model: BaseEstimator, X: pd.DataFrame, y: np.ndarray, max_rows: int = 10_000, seed: int = 0
) -> Figure:
    """Permutation importance (drop in average precision when a feature is shuffled) on a sample."""
    if len(X) > max_rows:
        rows = np.random.default_rng(seed).choice(len(X), max_rows, replace=False)
        X, y = X.iloc[rows], y[rows]
    result = feature_importance(model, X, y, seed)
    order = np.argsort(result.importances_mean)
    fig = Figure(figsize=(6, max(3.0, 0.25 * len(order))))
    ax = fig.subplots()
    ax.barh(np.asarray(X.columns)[order], result.importances_mean[order], xerr=result.importances_std[order])
    ax.set(xlabel="drop in average precision", title="Permutation importance (test)")
    fig.tight_layout()
    return fig


def feature_importance(model: BaseEstimator, X: pd.DataFrame, y: np.ndarray, seed: int) -> Bunch:
    """scikit-learn's permutation importance of ``X``'s columns. A pipeline whose preprocessing turns each
    column into one output column of the same name, row by row (the fraud model's ordinal encoding and
    passthrough), is scored on the encoded rows: shuffling a column before or after encoding gives the same
    predictions, and scikit-learn shuffles every column with the same seed, so the result is the same
    (``tests/test_training.py``) with the encoding done once instead of for each of the 73 predictions."""
    if isinstance(model, Pipeline) and len(model) > 1:
        encode, estimator = model[:-1], model[-1]
        names = list(encode.get_feature_names_out())
        if sorted(names) == sorted(X.columns):
            encoded = permutation_importance(
                estimator, encode.transform(X), y, scoring="average_precision", n_repeats=3, random_state=seed
            )
            columns = [names.index(column) for column in X.columns]  # back to X's order
            return Bunch(**{key: value[columns] for key, value in encoded.items()})
    return permutation_importance(model, X, y, scoring="average_precision", n_repeats=3, random_state=seed)
