"""The compiled fraud model (``rtml.training.compiled``) scores exactly like the sklearn Pipeline, and
refuses what it cannot reproduce exactly. (The same check on the real training data and the registered
model: ``test_training.py::test_compiled_model_scores_like_the_registered_pipeline``.)"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from rtml.training.compiled import CompiledModel, NotCompilable, compile_pipeline, probe_rows, verify
from rtml.training.dataset import FeatureSpec
from rtml.training.model import build_pipeline

SPEC = FeatureSpec(numeric=["amount", "txn_count_1h", "zscore"], categorical=["channel", "country"])


def synthetic(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "channel": rng.choice(np.array(["pos", "online", "atm", None], dtype=object), n),
            "country": rng.choice(np.array(["DE", "FR", "NL", "US", None], dtype=object), n),
            "amount": rng.lognormal(3, 1, n),
            "txn_count_1h": rng.poisson(1.5, n).astype(float),
            "zscore": np.where(rng.random(n) < 0.2, np.nan, rng.normal(0, 1, n)),
        }
    )
    risk = (frame["channel"] == "online") * 1.5 + (frame["txn_count_1h"] > 3) * 2 + frame["zscore"].fillna(0)
    y = (risk + rng.normal(0, 1, n) > 3).to_numpy().astype(int)
    return frame, y


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    frame, y = synthetic(20_000, seed=1)
    return build_pipeline(SPEC, max_iter=30).fit(frame, y)


def test_compiled_probabilities_equal_the_pipeline(pipeline: Pipeline) -> None:
    compiled = compile_pipeline(pipeline)
    frame, _ = synthetic(3_000, seed=2)
    frame.loc[::7, "country"] = "XX"  # unknown to the encoder
    frame.loc[::11, "amount"] = np.nan
    expected = pipeline.predict_proba(frame)[:, 1]
    assert frame["channel"].isna().any()  # missing categories are None, as the service passes them
    got = compiled.predict(frame.to_dict("records"))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)
    assert len(set(np.round(got, 6))) > 50  # a real spread of scores, not a constant


def test_probe_rows_sit_exactly_on_every_split_threshold_of_the_trees(pipeline: Pipeline) -> None:
    """The verification walks the trees' boundaries: every numeric split threshold of the fitted
    classifier (read here from sklearn's own predictor nodes) appears exactly among the probe rows."""
    compiled = compile_pipeline(pipeline)
    classifier = pipeline[-1]
    offset = len(compiled.categorical)
    rows = probe_rows(compiled, n=20_000)
    for trees in classifier._predictors:  # sklearn's private nodes, as the reference only
        for tree in trees:
            nodes = tree.nodes
            for node in nodes[(nodes["is_leaf"] == 0) & (nodes["is_categorical"] == 0)]:
                column = compiled.numeric[int(node["feature_idx"]) - offset]
                assert float(node["num_threshold"]) in set(rows[column]), column


def test_a_wrong_encoding_is_caught_by_verification(pipeline: Pipeline) -> None:
    compiled = compile_pipeline(pipeline)
    # map every known channel to the first channel's code: verification must notice
    first = min(compiled.codes[0].values())
    broken = CompiledModel(
        categorical=compiled.categorical,
        numeric=compiled.numeric,
        codes=[{key: first for key in compiled.codes[0]}, *compiled.codes[1:]],
        booster=compiled.booster,
    )
    frame, _ = synthetic(2_000, seed=3)
    with pytest.raises(NotCompilable, match="differs from the pipeline"):
        verify(broken, pipeline, frame)


def test_other_pipelines_are_not_compiled() -> None:
    frame, y = synthetic(500, seed=4)
    other = Pipeline([("classifier", LogisticRegression())]).fit(frame[["amount"]], y)
    with pytest.raises(NotCompilable, match="expected Pipeline"):
        compile_pipeline(other)


def test_empty_input_scores_nothing(pipeline: Pipeline) -> None:
    assert compile_pipeline(pipeline).predict([]).shape == (0,)


def test_a_split_on_missing_values_alone_compiles_and_scores_the_same() -> None:
    """A split that sends only missing values one way has the threshold +inf in sklearn's trees (a model
    trained on the training benchmark's 1M rows has one); the compiled model reads it exactly (treelite's
    JSON dump cannot write it: the compilation failed on it) and scores like the pipeline."""
    rng = np.random.default_rng(3)
    frame, _ = synthetic(5_000, seed=3)
    missing = frame["zscore"].isna().to_numpy()
    y = (missing ^ (rng.random(len(frame)) < 0.05)).astype(int)  # the missingness is the signal
    pipeline = build_pipeline(SPEC, max_iter=5).fit(frame, y)
    thresholds = [
        float(node["num_threshold"])
        for trees in pipeline[-1]._predictors  # sklearn's private nodes, as the reference only
        for tree in trees
        for node in tree.nodes[(tree.nodes["is_leaf"] == 0) & (tree.nodes["is_categorical"] == 0)]
    ]
    assert np.inf in thresholds

    compiled = compile_pipeline(pipeline)
    assert np.inf in set(probe_rows(compiled, n=5_000)["zscore"])
    scored, _ = synthetic(2_000, seed=4)
    expected = pipeline.predict_proba(scored)[:, 1]
    np.testing.assert_allclose(compiled.predict(scored.to_dict("records")), expected, rtol=0, atol=1e-9)
