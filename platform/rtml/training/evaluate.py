"""Evaluation: ROC AUC, PR AUC, recall at 1 % false-positive rate, Brier score; decision thresholds.

Decisions: ``approve`` below ``review``, ``review`` from ``review`` up to ``decline``, ``decline`` at or
above ``decline``. Both thresholds are chosen on the validation split as the lowest scores whose
false-positive rate (share of legitimate transactions at or above them) stays within a budget.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.base import BaseEstimator
from sklearn.inspection import permutation_importance
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

REVIEW_FPR = 0.05
DECLINE_FPR = 0.005


@dataclass(frozen=True)
class Thresholds:
    review: float
    decline: float

    def as_tags(self) -> dict[str, str]:
        return {f"threshold_{key}": repr(value) for key, value in asdict(self).items()}

    def decide(self, scores: np.ndarray) -> np.ndarray:
        return np.select(
            [scores >= self.decline, scores >= self.review], ["decline", "review"], default="approve"
        )


def threshold_at_fpr(y: np.ndarray, scores: np.ndarray, fpr: float) -> float:
    """The lowest threshold t with share(legit scores >= t) <= fpr."""
    negatives = np.sort(scores[y == 0])[::-1]
    allowed = int(np.floor(fpr * len(negatives)))
    if allowed >= len(negatives):
        return float(negatives[-1])
    return float(np.nextafter(negatives[allowed], np.inf))


def choose_thresholds(
    y: np.ndarray, scores: np.ndarray, review_fpr: float = REVIEW_FPR, decline_fpr: float = DECLINE_FPR
) -> Thresholds:
    review = threshold_at_fpr(y, scores, review_fpr)
    decline = max(threshold_at_fpr(y, scores, decline_fpr), review)
    return Thresholds(review=review, decline=decline)


def recall_at_fpr(y: np.ndarray, scores: np.ndarray, fpr: float = 0.01) -> float:
    fprs, tprs, _ = roc_curve(y, scores)
    return float(tprs[fprs <= fpr].max())


def metrics(y: np.ndarray, scores: np.ndarray, thresholds: Thresholds | None = None) -> dict[str, float]:
    out = {
        "roc_auc": float(roc_auc_score(y, scores)),
        "pr_auc": float(average_precision_score(y, scores)),
        "recall_at_1pct_fpr": recall_at_fpr(y, scores, 0.01),
        "brier": float(brier_score_loss(y, scores)),
        "fraud_rate": float(np.mean(y)),
        "rows": float(len(y)),
    }
    if thresholds is not None:
        decision = thresholds.decide(scores)
        fraud = y == 1
        out["decline_recall"] = float(np.mean(decision[fraud] == "decline"))
        out["decline_fpr"] = float(np.mean(decision[~fraud] == "decline"))
        out["review_or_decline_recall"] = float(np.mean(decision[fraud] != "approve"))
        out["review_share"] = float(np.mean(decision == "review"))
    return out


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
    result = permutation_importance(model, X, y, scoring="average_precision", n_repeats=3, random_state=seed)
    order = np.argsort(result.importances_mean)
    fig = Figure(figsize=(6, max(3.0, 0.25 * len(order))))
    ax = fig.subplots()
    ax.barh(np.asarray(X.columns)[order], result.importances_mean[order], xerr=result.importances_std[order])
    ax.set(xlabel="drop in average precision", title="Permutation importance (test)")
    fig.tight_layout()
    return fig
