"""Evaluation: ROC AUC, PR AUC, recall at 1 % false-positive rate, Brier score; decision thresholds.

Decisions: ``approve`` below ``review``, ``review`` from ``review`` up to ``decline``, ``decline`` at or
above ``decline``. Both thresholds are chosen on the validation split as the lowest scores whose
false-positive rate (share of legitimate transactions at or above them) stays within a budget.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
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
