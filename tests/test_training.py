"""Training end to end on real PostgreSQL and a real MLflow (the session server's ``mlflow`` database):
three weeks of simulated transactions through the ingest loader, ``dbt run`` of the feature and training
models in a database of their own (``rtml_training_test``), then ``train_and_register``: the model
separates fraud on the newest (test) weeks, the run carries params, metrics, threshold tags and curve
plots, and a version of ``fraud-detector`` is registered from the run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rtml.config import Settings
from rtml.features.dbt import run_dbt
from rtml.features.sample_data import create_database, ensure_raw_tables
from rtml.ingest.loader import load_labels, load_transactions
from rtml.services.stack import StackInfo
from rtml.sources.simulator import Simulator
from rtml.training import evaluate
from rtml.training.dataset import FeatureSpec, split_by_time
from rtml.training.tracking import MODEL_NAME, TrainingResult, train_and_register

START = datetime(2026, 9, 1, tzinfo=UTC)
DAYS = 21
LABEL_DAYS = 10  # labels arriving up to 10 days after the last transaction are known


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        data_dir=tmp_path_factory.mktemp("rtml-training"),
        sim_start=START,
        sim_customers=2_000,
        sim_transactions_per_day=8_000,
    )


@pytest.fixture(scope="module")
def training_db(database_url: str, settings: Settings, separate_dbt_target: Path) -> str:
    import psycopg

    url = create_database(database_url, "rtml_training_test")
    with psycopg.connect(url) as conn:
        ensure_raw_tables(conn)
    simulator = Simulator(settings)
    end = START + timedelta(days=DAYS)
    load_transactions(url, simulator.iter_transactions(START, end, hours_per_chunk=24), "sim", settings)
    load_labels(url, [simulator.labels(START, end + timedelta(days=LABEL_DAYS))], "sim-labels", settings)
    proc = run_dbt(["run", "--full-refresh", "--select", "+training_set"], url, check=False)
    assert proc.returncode == 0, proc.stdout[-5000:]
    return url


@pytest.fixture(scope="module")
def trained(training_db: str, stack: StackInfo, settings: Settings) -> TrainingResult:
    return train_and_register(
        training_db, stack.mlflow_database_url, settings.home / "mlflow-artifacts", settings
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


def test_run_and_registered_version(trained: TrainingResult, stack: StackInfo) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(stack.mlflow_database_url, stack.mlflow_database_url)
    run = client.get_run(trained.run_id)
    assert run.data.params["class_weight"] == "balanced"
    assert {"learning_rate", "max_iter", "validation_start", "test_start"} <= set(run.data.params)
    assert run.data.metrics["test_roc_auc"] == pytest.approx(trained.metrics["test_roc_auc"])
    assert {"validation_pr_auc", "test_recall_at_1pct_fpr", "test_brier"} <= set(run.data.metrics)
    assert float(run.data.tags["threshold_decline"]) == trained.thresholds.decline
    assert float(run.data.tags["threshold_review"]) == trained.thresholds.review
    plots = {a.path for a in client.list_artifacts(trained.run_id, "plots")}
    assert {"plots/roc_test.png", "plots/pr_test.png"} <= plots
    assert run.info.artifact_uri.startswith("file:")  # a local folder (the data directory's by default)

    version = client.get_model_version(MODEL_NAME, trained.model_version)
    assert version.run_id == trained.run_id
    assert version.tags["threshold_decline"] == run.data.tags["threshold_decline"]
    assert not version.aliases  # promotion is explicit

    import mlflow

    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/{trained.model_version}")
    schema = model.metadata.get_input_schema()
    assert schema is not None and "amount" in schema.input_names()


def test_split_never_mixes_time() -> None:
    ts = pd.Timestamp("2026-09-01", tz="UTC") + pd.to_timedelta(np.arange(100) // 2, unit="h")
    frame = pd.DataFrame({"event_ts": ts, "amount": np.arange(100.0), "is_fraud": np.arange(100) % 5 == 0})
    frame = frame.sample(frac=1, random_state=1)  # arrival order must not matter
    data = split_by_time(frame, FeatureSpec(numeric=["amount"], categorical=[]))
    assert data.train.event_ts.max() < data.validation.event_ts.min()
    assert data.validation.event_ts.max() < data.test.event_ts.min()
    assert len(data.train) + len(data.validation) + len(data.test) == 100


def test_thresholds_respect_the_false_positive_budget() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(5_000) < 0.05).astype(int)
    scores = np.clip(rng.normal(0.3 + 0.4 * y, 0.15), 0, 1)
    t = evaluate.choose_thresholds(y, scores)
    assert np.mean(scores[y == 0] >= t.decline) <= evaluate.DECLINE_FPR
    assert np.mean(scores[y == 0] >= t.review) <= evaluate.REVIEW_FPR
    assert set(t.decide(np.array([0.0, t.review, t.decline]))) == {"approve", "review", "decline"}
