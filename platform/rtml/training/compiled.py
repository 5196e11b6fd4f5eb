"""The fitted fraud Pipeline (``model.build_pipeline``) compiled for low-latency scoring.

sklearn's ``Pipeline.predict_proba`` costs about 3 ms per call whatever the row count (DataFrame
validation, ``ColumnTransformer`` dispatch, one OpenMP region per tree), which caps a scoring worker at
a few hundred calls per second. Compiled, the same model scores one row in about 0.06 ms:

* the ``OrdinalEncoder`` becomes one dict per categorical column (value → code; unknown or missing →
  NaN, exactly as ``handle_unknown="use_encoded_value", unknown_value=nan, encoded_missing_value=nan``);
* the ``HistGradientBoostingClassifier`` is imported into treelite (``treelite.sklearn.import_model``,
  categorical splits included) and evaluated by treelite's GTIL (``rtml.training.treelite_gtil``).

``compile_pipeline`` checks the compiled model against the pipeline before returning it, on rows built
from the booster's own split thresholds (each threshold exactly, and just below and above it), every
category, unknown categories and missing values: if any probability differs by more than 1e-9 it
raises ``NotCompilable`` and the caller keeps scoring with sklearn.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from rtml.training import treelite_gtil

TOLERANCE = 1e-9
NUMERICAL_TEST_NODE = 1
"""treelite's ``node_type`` of a numerical split (its model format v4: leaf 0, numerical 1, categorical 2)."""


class NotCompilable(ValueError):
    """The pipeline is not the shape ``model.build_pipeline`` makes, or the compiled model disagrees."""


@dataclass(frozen=True)
class CompiledModel:
    categorical: list[str]
    numeric: list[str]
    codes: list[dict[str | None, float]]
    """Per categorical column: category → ordinal code (the encoder's ``categories_``)."""
    booster: Any
    """``treelite.Model``."""

    @property
    def columns(self) -> list[str]:
        return [*self.categorical, *self.numeric]

    def matrix(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """The booster's input: encoded categoricals, then numerics (float64, NaN = missing)."""
        nan = math.nan
        values = [
            [codes.get(row.get(name), nan) for name, codes in zip(self.categorical, self.codes, strict=True)]
            + [_number(row.get(name)) for name in self.numeric]
            for row in rows
        ]
        return np.asarray(values, dtype=np.float64).reshape(len(rows), len(self.columns))

    def predict_matrix(self, matrix: np.ndarray) -> np.ndarray:
        return treelite_gtil.predict(self.booster, matrix)

    def predict(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Fraud probabilities of model input rows (``rtml.features.request_features.model_row``)."""
        if not rows:
            return np.empty(0)
        return self.predict_matrix(self.matrix(rows))


def _check_booster(booster: Any, num_feature: int) -> None:
    if booster.num_feature != num_feature:
        raise NotCompilable(f"booster has {booster.num_feature} features, the pipeline {num_feature}")
    if reason := treelite_gtil.unsupported(booster):
        raise NotCompilable(reason)


def compile_pipeline(pipeline: Any, *, seed: int = 0) -> CompiledModel:
    """Compile and verify (see the module docstring); ``NotCompilable`` when it cannot be done exactly."""
    import treelite
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.preprocessing import FunctionTransformer, OrdinalEncoder

    steps = getattr(pipeline, "named_steps", {})
    preprocess, classifier = steps.get("preprocess"), steps.get("classifier")
    if not isinstance(classifier, HistGradientBoostingClassifier) or preprocess is None:
        raise NotCompilable("expected Pipeline([('preprocess', ColumnTransformer), ('classifier', HGB)])")
    fitted = {name: (transformer, list(columns)) for name, transformer, columns in preprocess.transformers_}
    encoder, categorical = fitted.get("categorical", (None, []))
    passthrough, numeric = fitted.get("numeric", (None, []))
    # a fitted ColumnTransformer holds "passthrough" as an identity FunctionTransformer
    identity = passthrough == "passthrough" or (
        isinstance(passthrough, FunctionTransformer) and passthrough.func is None
    )
    if not isinstance(encoder, OrdinalEncoder) or not identity:
        raise NotCompilable("expected an OrdinalEncoder 'categorical' and a 'numeric' passthrough")
    remainder = fitted.get("remainder", ("drop", []))[0]
    if set(fitted) - {"categorical", "numeric", "remainder"} or remainder != "drop":
        raise NotCompilable(f"unexpected transformers: {sorted(fitted)}")
    # None is a category of its own when training saw it (sklearn encodes only a NaN category as
    # ``encoded_missing_value``); NaN, unknown values → NaN, as the encoder does
    codes = [
        {value: float(code) for code, value in enumerate(categories) if not _is_nan(value)}
        for categories in encoder.categories_
    ]
    compiled = CompiledModel(
        categorical=categorical,
        numeric=numeric,
        codes=codes,
        booster=treelite.sklearn.import_model(classifier),
    )
    _check_booster(compiled.booster, len(compiled.columns))
    verify(compiled, pipeline, probe_rows(compiled, seed=seed))
    return compiled


def probe_rows(compiled: CompiledModel, *, n: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Rows in the pipeline's input space that walk the trees' boundaries: numeric values drawn from
    each feature's split thresholds (exactly, one ulp below, one ulp above), categories from the known
    ones plus an unknown one, and 10 % missing values."""
    rng = np.random.default_rng(seed)
    offset = len(compiled.categorical)
    thresholds: dict[int, list[float]] = {j: [] for j in range(len(compiled.numeric))}
    # the imported booster's trees through treelite's field accessors: the same thresholds, bit for bit,
    # as the classifier's own (private) predictor nodes, in the same feature order (categorical columns
    # first). Not its JSON dump: that writes a split on missing values alone (threshold +inf) as
    # `"threshold": ,`, which no JSON parser reads (a booster fitted on 1M rows of the benchmark has one).
    booster = compiled.booster
    for tree_id in range(booster.num_tree):
        tree = booster.get_tree_accessor(tree_id)
        numerical = tree.get_field("node_type") == NUMERICAL_TEST_NODE
        features, splits = tree.get_field("split_index")[numerical], tree.get_field("threshold")[numerical]
        for feature, threshold in zip(features, splits, strict=True):
            if feature >= offset:
                thresholds[int(feature) - offset].append(float(threshold))
    frame: dict[str, Any] = {}
    for name, codes in zip(compiled.categorical, compiled.codes, strict=True):
        choices = np.array([*codes, "<unknown category>", None, math.nan], dtype=object)
        frame[name] = rng.choice(choices, n)
    for j, name in enumerate(compiled.numeric):
        points = np.array(thresholds[j] or [0.0])
        base = rng.choice(points, n)
        direction = rng.choice([-np.inf, 0.0, np.inf], n)
        values = np.where(direction == 0.0, base, np.nextafter(base, direction))
        values[rng.random(n) < 0.1] = np.nan
        frame[name] = values
    return pd.DataFrame(frame, columns=compiled.columns)


def verify(compiled: CompiledModel, pipeline: Any, frame: pd.DataFrame) -> None:
    expected = np.asarray(pipeline.predict_proba(frame[list(pipeline.feature_names_in_)])[:, 1])
    rows: list[dict[str, Any]] = frame.to_dict("records")  # type: ignore[assignment]
    got = compiled.predict(rows)
    worst = float(np.max(np.abs(got - expected))) if len(frame) else 0.0
    if not worst <= TOLERANCE:
        raise NotCompilable(f"compiled model differs from the pipeline by up to {worst:.3g} on probe rows")


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)
