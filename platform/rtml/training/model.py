"""The fraud model: an sklearn Pipeline (ColumnTransformer + HistGradientBoostingClassifier).

Categorical request fields are ordinal-encoded (unknown or missing → NaN, which the booster treats as
missing) and used as native categorical features; numeric features pass through (NaN allowed). The class
imbalance is handled with ``class_weight='balanced'``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OrdinalEncoder

from rtml.training.dataset import FeatureSpec
from rtml.training.sklearn_internals import fix_bin_thresholds

DEFAULT_PARAMS: dict[str, Any] = {
    "learning_rate": 0.1,
    "max_iter": 100,
    "max_leaf_nodes": 31,
    "min_samples_leaf": 40,
    "l2_regularization": 1.0,
    "class_weight": "balanced",
    "early_stopping": False,
    "random_state": 0,
}

TRUSTED_TYPES = [
    "functools.partial",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.utils.validation.check_array",
]
"""The model is saved with skops (MLflow 3 does so too): the (own, reviewed) types it may load."""


def build_pipeline(spec: FeatureSpec, **params: Any) -> Pipeline:
    fix_bin_thresholds()  # the same bins 4 x faster under class weights; no failure on an empty column
    preprocess = ColumnTransformer(
        [
            (
                "categorical",
                OrdinalEncoder(
                    handle_unknown="use_encoded_value", unknown_value=np.nan, encoded_missing_value=np.nan
                ),
                spec.categorical,
            ),
            ("numeric", "passthrough", spec.numeric),
        ],
        verbose_feature_names_out=False,
    )
    classifier = HistGradientBoostingClassifier(
        categorical_features=list(range(len(spec.categorical))), **{**DEFAULT_PARAMS, **params}
    )
    return Pipeline([("preprocess", preprocess), ("classifier", classifier)])


def model_params(pipeline: Pipeline) -> dict[str, Any]:
    """The classifier's hyper-parameters worth logging."""
    params = pipeline.named_steps["classifier"].get_params()
    return {key: params[key] for key in DEFAULT_PARAMS}
