"""Training end to end on real PostgreSQL and the session's MLflow server: a snapshot of three weeks of
simulated, dbt-built ``training_set`` (see the ``training_db`` fixture), fit, evaluation, logging with
lineage, registration; then the registry workflow: evaluation gate, promotion, rollback."""

from __future__ import annotations

import hashlib
import json
import subprocess
import uuid

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from rtml.config import Settings
from rtml.training import evaluate, model_registry
from rtml.training.dataset import FeatureSpec, feature_spec, split_by_time
from rtml.training.lineage import TAGS
from rtml.training.tracking import TrainingResult, train_and_register
from tests.model_versions import TRAINED_MODEL, copied

# The weakened model: no customer history or merchant features, and a few shallow trees.
WEAK = {"params": {"max_iter": 5, "max_depth": 2}}


@pytest.fixture(scope="module")
def model_name() -> str:
    """A registered model of this module's own: other tests register `fraud-detector` versions too."""
    return f"fraud-detector-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def client(mlflow_tracking_uri: str) -> MlflowClient:
    return model_registry.client_for(mlflow_tracking_uri)


@pytest.fixture(scope="module")
def trained(trained_model: TrainingResult, client: MlflowClient, model_name: str) -> TrainingResult:
    """The session's trained version (``trained_model``), copied under this module's name: its tests move
    aliases."""
    return copied(client, trained_model, TRAINED_MODEL, model_name)


def weak_exclusions() -> tuple[str, ...]:
    spec = feature_spec()
    return tuple(name for name in spec.numeric if name != "amount")


def train_weak(training_db: str, tracking_uri: str, settings: Settings, model_name: str) -> TrainingResult:
    return train_and_register(
        training_db, tracking_uri, settings, exclude_features=weak_exclusions(), model_name=model_name, **WEAK
    )


def test_model_separates_fraud_on_the_test_window(trained: TrainingResult) -> None:
    m = trained.metrics
    assert m["test_roc_auc"] > 0.85, m
    assert m["test_pr_auc"] > m["test_fraud_rate"], m  # better than chance
    assert 0 < m["test_recall_at_1pct_fpr"] <= 1 and 0 <= m["test_brier"] <= 1
    # thresholds come from validation and honour their false-positive budgets there
    assert trained.thresholds.review <= trained.thresholds.decline
    assert m["validation_decline_fpr"] <= evaluate.DECLINE_FPR
    assert m["test_decline_recall"] > 0


def test_run_and_registered_version(trained: TrainingResult, client: MlflowClient, model_name: str) -> None:
    run = client.get_run(trained.run_id)
    assert run.data.params["class_weight"] == "balanced"
    assert {"learning_rate", "max_iter", "validation_start", "test_start"} <= set(run.data.params)
    assert run.data.metrics["test_roc_auc"] == pytest.approx(trained.metrics["test_roc_auc"])
    assert {"validation_pr_auc", "test_recall_at_1pct_fpr", "test_brier"} <= set(run.data.metrics)
    assert float(run.data.tags["threshold_decline"]) == trained.thresholds.decline
    assert float(run.data.tags["threshold_review"]) == trained.thresholds.review
    plots = {a.path for a in client.list_artifacts(trained.run_id, "plots")}
    assert {"plots/roc_test.png", "plots/pr_test.png", "plots/permutation_importance.png"} <= plots
    assert [d.dataset.digest for d in run.inputs.dataset_inputs] == [trained.lineage.snapshot_md5]

    version = client.get_model_version(model_name, trained.model_version)
    assert version.run_id == trained.run_id
    assert version.tags["threshold_decline"] == run.data.tags["threshold_decline"]
    assert not version.aliases  # the gate and people move aliases, training does not

    info = mlflow.models.get_model_info(f"models:/{model_name}/{trained.model_version}")
    assert info.flavors["sklearn"]["serialization_format"] == "skops"  # what rtml.training.loading loads
    schema = info.signature.inputs if info.signature else None
    assert schema is not None and "amount" in schema.input_names()


def test_compiled_model_scores_like_the_registered_pipeline(trained: TrainingResult, model_name: str) -> None:
    """The scoring service's fast path (``rtml.training.compiled``) on the real test window."""
    from rtml.training.compiled import compile_pipeline
    from rtml.training.loading import load_pipeline

    pipeline = load_pipeline(f"models:/{model_name}/{trained.model_version}")
    compiled = compile_pipeline(pipeline)
    X = trained.holdout.X
    expected = pipeline.predict_proba(X[list(pipeline.feature_names_in_)])[:, 1]
    got = compiled.predict(X.to_dict("records"))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)
    # as the service sends them when a request has no merchant_category / country
    missing = X.assign(merchant_category=None, country=None)
    expected = pipeline.predict_proba(missing[list(pipeline.feature_names_in_)])[:, 1]
    np.testing.assert_allclose(compiled.predict(missing.to_dict("records")), expected, rtol=0, atol=1e-9)


def test_every_lineage_tag_is_recorded(
    trained: TrainingResult, client: MlflowClient, model_name: str, training_settings: Settings
) -> None:
    tags = client.get_model_version(model_name, trained.model_version).tags
    assert set(TAGS) <= set(tags), set(TAGS) - set(tags)
    # the snapshot trained on is kept under its DVC (md5) hash
    snapshot = training_settings.services.snapshots_dir / f"{tags['dvc_snapshot_md5']}.parquet"
    assert hashlib.md5(snapshot.read_bytes()).hexdigest() == tags["dvc_snapshot_md5"]
    assert int(tags["snapshot_rows"]) == len(pd.read_parquet(snapshot))
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert tags["git_commit"] == head
    assert tags["run_id"] == trained.run_id
    assert tags["feature_definitions"] == "customer_features@1,merchant_features@1"
    assert len(tags["dbt_manifest_sha256"]) == 64
    assert pd.Timestamp(tags["data_window_start"]) <= pd.Timestamp(tags["data_window_end"])


def test_gate_promotion_and_rollback(
    trained: TrainingResult,
    training_db: str,
    mlflow_tracking_uri: str,
    training_settings: Settings,
    client: MlflowClient,
    model_name: str,
) -> None:
    strong = trained.model_version
    settings = training_settings.model_copy(
        update={"training": training_settings.training.model_copy(update={"gate_min_roc_auc": 0.5})}
    )
    weak = train_weak(training_db, mlflow_tracking_uri, settings, model_name)
    assert weak.metrics["test_pr_auc"] < trained.metrics["test_pr_auc"]

    def aliases() -> dict[str, str]:
        return {
            alias: info.version
            for info in model_registry.versions(client, model_name)
            for alias in info.aliases
        }

    # no production yet: the weak model clears the (lowered) floor and is staged, then approved
    first = model_registry.gate(client, weak.model_version, weak.holdout, settings, model_name)
    assert first.staged and first.production_version is None, first
    model_registry.promote(client, weak.model_version, "alice", "first model", model_name)
    assert aliases() == {"production": weak.model_version}

    # the strong model beats production on its own test window: staged, not yet in production
    better = model_registry.gate(client, strong, trained.holdout, settings, model_name)
    assert better.staged and better.production_version == weak.model_version, better
    assert better.challenger["pr_auc"] > better.production["pr_auc"]
    assert aliases() == {"production": weak.model_version, "staging": strong}

    promoted = model_registry.promote(client, strong, "bob", "beats v-weak on PR AUC", model_name)
    assert promoted.tags["approved_by"] == "bob"
    assert promoted.tags["approval_reason"] == "beats v-weak on PR AUC"
    assert promoted.tags["previous_production_version"] == weak.model_version
    assert aliases() == {"production": strong}  # staging is emptied by the promotion

    # a deliberately weakened challenger is rejected with the reason; nothing moves
    weaker = train_weak(training_db, mlflow_tracking_uri, settings, model_name)
    rejected = model_registry.gate(client, weaker.model_version, weaker.holdout, settings, model_name)
    assert not rejected.staged
    tags = client.get_model_version(model_name, weaker.model_version).tags
    assert tags["rejected"] == rejected.reason and "pr_auc" in rejected.reason
    assert aliases() == {"production": strong}
    with pytest.raises(model_registry.RegistryError, match="rejected by the evaluation gate"):
        model_registry.promote(client, weaker.model_version, "carol", "try anyway", model_name)

    # rollback → the previous production version, recorded on both; then promote again
    restored = model_registry.rollback(client, "carol", "alert: decline rate doubled", model_name)
    assert restored.version == weak.model_version
    assert aliases() == {"production": weak.model_version}
    rolled = client.get_model_version(model_name, strong).tags
    assert (rolled["rolled_back_by"], rolled["rollback_reason"]) == ("carol", "alert: decline rate doubled")
    assert rolled["rolled_back_to"] == weak.model_version
    again = model_registry.promote(client, strong, "bob", "root cause fixed upstream", model_name)
    assert again.tags["previous_production_version"] == weak.model_version
    assert aliases() == {"production": strong}

    listed = {info.version: info for info in model_registry.versions(client, model_name)}
    assert listed[strong].status == "production" and listed[weaker.model_version].status == "rejected"
    assert listed[strong].metrics["test_roc_auc"] == pytest.approx(trained.metrics["test_roc_auc"])
    last = json.loads(client.get_registered_model(model_name).tags["last_action"])
    assert last["action"] == "promote" and last["by"] == "bob"


def test_promotion_needs_an_approver_and_reason(
    client: MlflowClient, trained: TrainingResult, model_name: str
) -> None:
    with pytest.raises(model_registry.RegistryError, match="approver and a reason"):
        model_registry.promote(client, trained.model_version, "", "no one", model_name)
    with pytest.raises(model_registry.RegistryError, match="no version '999'"):
        model_registry.promote(client, "999", "alice", "typo", model_name)


def test_split_never_mixes_time() -> None:
    ts = pd.Timestamp("2026-09-01", tz="UTC") + pd.to_timedelta(np.arange(100) // 2, unit="h")
    frame = pd.DataFrame({"event_ts": ts, "amount": np.arange(100.0), "is_fraud": np.arange(100) % 5 == 0})
    frame = frame.sample(frac=1, random_state=1)  # arrival order must not matter
    data = split_by_time(frame, FeatureSpec(numeric=["amount"], categorical=[]))
    assert data.train.event_ts.max() < data.validation.event_ts.min()
    assert data.validation.event_ts.max() < data.test.event_ts.min()
    assert len(data.train) + len(data.validation) + len(data.test) == 100


def test_a_feature_missing_from_every_training_row_trains_and_serves() -> None:
    """A young deployment: the merchant features of a day come from the days before, so on the first
    day they are missing, and a window of the first days trains on rows without them (scikit-learn
    1.9.1 alone fails there: rtml.training.sklearn_internals). The model trains, scores the later rows,
    which have the feature, and compiles for serving."""
    from rtml.training.compiled import compile_pipeline
    from rtml.training.train import fit

    rng = np.random.default_rng(3)
    n = 6_000
    frame = pd.DataFrame(
        {
            "event_ts": pd.Timestamp("2026-11-01", tz="UTC") + pd.to_timedelta(np.arange(n) * 40, unit="s"),
            "amount": rng.lognormal(3, 1, n),
            "merchant_amount_avg_7d": np.where(np.arange(n) < 0.7 * n, np.nan, rng.lognormal(3, 0.5, n)),
            "channel": rng.choice(["web", "pos"], n),
        }
    )
    frame["is_fraud"] = (frame["amount"] > 60) & (frame["channel"] == "web") | (rng.random(n) < 0.01)
    spec = FeatureSpec(numeric=["amount", "merchant_amount_avg_7d"], categorical=["channel"])
    fitted = fit(frame, spec, max_iter=20)
    assert fitted.data.train.X["merchant_amount_avg_7d"].isna().all()  # what scikit-learn alone fails on
    assert fitted.data.test.X["merchant_amount_avg_7d"].notna().all()
    assert fitted.metrics["test_roc_auc"] > 0.8, fitted.metrics
    assert np.isfinite(fitted.test_scores).all()
    compiled = compile_pipeline(fitted.pipeline)  # checked against the pipeline as it compiles
    rows = fitted.data.test.X[spec.columns].head(50).to_dict("records")
    np.testing.assert_allclose(compiled.predict(rows), fitted.test_scores[:50], rtol=0, atol=1e-9)


def test_importance_on_encoded_rows_is_scikit_learns_on_the_pipeline() -> None:
    """The figure's importances (each column shuffled after the model's encoding) equal scikit-learn's
    permutation importance of the whole pipeline (each column shuffled before it), column by column."""
    from sklearn.inspection import permutation_importance

    from rtml.training.figures import feature_importance
    from rtml.training.model import build_pipeline

    rng = np.random.default_rng(0)
    spec = FeatureSpec(numeric=["amount", "count"], categorical=["channel", "country"])
    X = pd.DataFrame(
        {
            "amount": rng.lognormal(3, 1, 4_000),
            "channel": rng.choice(["web", "pos", None], 4_000),
            "count": rng.poisson(3, 4_000).astype(float),
            "country": rng.choice(["DE", "FR", "US"], 4_000),
        }
    )  # the spec's categorical columns come first in the encoded rows, not here
    y = ((X["amount"] > 40) & (X["channel"] == "web") | (rng.random(4_000) < 0.02)).to_numpy(dtype=int)
    pipeline = build_pipeline(spec, max_iter=20).fit(X[spec.columns], y)
    expected = permutation_importance(
        pipeline, X, y, scoring="average_precision", n_repeats=3, random_state=0
    ).importances
    got = feature_importance(pipeline, X, y, seed=0).importances
    assert sorted(pipeline[:-1].get_feature_names_out()) == sorted(X.columns)  # the encoded-rows path
    assert expected[:, 0].std() > 0 and np.abs(expected).sum() > 0  # the features matter
    np.testing.assert_array_equal(got, expected)


def test_thresholds_respect_the_false_positive_budget() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(5_000) < 0.05).astype(int)
    scores = np.clip(rng.normal(0.3 + 0.4 * y, 0.15), 0, 1)
    t = evaluate.choose_thresholds(y, scores)
    assert np.mean(scores[y == 0] >= t.decline) <= evaluate.DECLINE_FPR
    assert np.mean(scores[y == 0] >= t.review) <= evaluate.REVIEW_FPR
    assert set(t.decide(np.array([0.0, t.review, t.decline]))) == {"approve", "review", "decline"}


def test_gate_rejects_a_better_pr_auc_when_a_guarded_metric_drops(
    mlflow_tracking_uri: str, training_settings: Settings
) -> None:
    """Two registered versions of the project's own model, crafted so that on the holdout the challenger
    ranks most frauds at the very top (better PR AUC) but the rest at the very bottom (worse ROC AUC):
    the gate rejects it and names the guarded metric, its drop and the tolerance."""
    from rtml.training.dataset import Split
    from rtml.training.model import TRUSTED_TYPES, build_pipeline
    from rtml.training.tracking import configure

    name = f"fraud-detector-gate-{uuid.uuid4().hex[:8]}"
    client = model_registry.client_for(mlflow_tracking_uri)
    rng = np.random.default_rng(0)
    fraud = rng.random(4_000) < 0.05  # training data: both scores rise with fraud
    train = pd.DataFrame({"channel": "pos", "a": rng.normal(2 * fraud, 1), "b": rng.normal(2 * fraud, 1)})

    def register(score: str) -> str:
        pipeline = build_pipeline(
            FeatureSpec(numeric=[score], categorical=["channel"]), max_iter=20, monotonic_cst=[0, 1]
        )
        pipeline.fit(train[["channel", score]], fraud)
        with mlflow.start_run(experiment_id=configure(mlflow_tracking_uri)):
            info = mlflow.sklearn.log_model(
                pipeline,
                name="model",
                registered_model_name=name,
                skops_trusted_types=TRUSTED_TYPES,
                pip_requirements=["scikit-learn"],
            )
        return str(info.registered_model_version)

    production, challenger = register("a"), register("b")
    client.set_registered_model_alias(name, model_registry.PRODUCTION, production)

    # Holdout: 50 frauds among 1,000. Score a (production) puts every fraud above 600 legitimate rows
    # but among the other 350; score b (challenger) puts 30 frauds above everything, 20 below everything.
    y = np.zeros(1_000, dtype=int)
    y[:50] = 1
    a = np.concatenate([rng.uniform(2, 5, 50), rng.uniform(0, 5, 350), rng.uniform(-5, 0, 600)])
    b = np.concatenate([rng.uniform(8, 9, 30), rng.uniform(-9, -8, 20), rng.uniform(-1.5, 1.5, 950)])
    X = pd.DataFrame({"channel": "pos", "a": a, "b": b})
    event_ts = pd.Series(pd.date_range("2026-11-20", periods=1_000, freq="min", tz="UTC"))
    decision = model_registry.gate(client, challenger, Split(X, y, event_ts), training_settings, name)

    better, worse = decision.challenger, decision.production
    assert better["pr_auc"] > worse["pr_auc"] + training_settings.training.gate_min_improvement
    assert worse["roc_auc"] - better["roc_auc"] > training_settings.training.gate_tolerance
    assert not decision.staged
    assert decision.reason == (
        f"roc_auc regresses from {worse['roc_auc']:.4f} to {better['roc_auc']:.4f} "
        f"(tolerance {training_settings.training.gate_tolerance})"
    )
    tags = client.get_model_version(name, challenger).tags
    assert tags["gate"] == "rejected" and tags["rejected"] == decision.reason
    assert model_registry.version_with_alias(client, model_registry.STAGING, name) is None
