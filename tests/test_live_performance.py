"""Live model performance on real PostgreSQL and dbt: three simulated days go through the ingest loader,
their labels through ``stg_labels`` (dbt); the prediction log holds scores of two model versions (one a
shadow on the middle day), a retried request and a transaction without a label; one transaction is
relabelled later (confirmed, then a chargeback). Every figure must equal scikit-learn's on the same rows.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
import pytest
from sklearn.metrics import average_precision_score, precision_score, recall_score, roc_auc_score

from rtml.config import ServicesSettings, Settings, SimulatorSettings, get_settings
from rtml.defs.monitoring.assets import live_model_performance
from rtml.defs.resources import PostgresServer
from rtml.monitoring import live
from rtml.monitoring.predictions import PredictionRow, ensure_table, prediction_row, write_rows
from rtml.sources.schema import LABELS
from rtml.stack.local import StackInfo

START = datetime(2026, 9, 1, tzinfo=UTC)
DAYS = 3
REVIEW, DECLINE = 0.5, 0.8


@pytest.fixture(scope="module")
def live_db(
    scratch_database: Callable[[str], str],
    tmp_path_factory: pytest.TempPathFactory,
    separate_dbt_target: Path,
) -> tuple[str, pd.DataFrame]:
    """The database, and the expected rows: one per (transaction, version) with its latest score and
    latest label (NaN when unlabelled)."""
    from rtml.features.dbt import run_dbt
    from rtml.ingest.loader import load_labels, load_transactions
    from rtml.ingest.tables import ensure_tables
    from rtml.sources.scenarios import timeline_path
    from rtml.sources.simulator import Simulator

    settings = Settings(
        services=ServicesSettings(data_dir=tmp_path_factory.mktemp("rtml-live")),
        simulator=SimulatorSettings(
            start=START, customers=1_000, transactions_per_day=3_000, dirty_share=0.0
        ),
    )
    url = scratch_database("live")
    with psycopg.connect(url) as conn:
        ensure_tables(conn)
    simulator = Simulator(settings.simulator, settings.ingest, timeline_path(settings.services))
    end = START + timedelta(days=DAYS)
    transactions = simulator.transactions(START, end)
    load_transactions(url, [transactions], "sim", settings.ingest)
    labels = simulator.labels(START, end + timedelta(days=30))  # every label has arrived
    load_labels(url, [labels], "sim-labels", settings.ingest)

    frame = transactions.to_pandas()
    truth = dict(zip(labels["transaction_id"].to_pylist(), labels["is_fraud"].to_pylist(), strict=True))
    legit = frame.loc[frame["transaction_id"].map(truth) == False, "transaction_id"]  # noqa: E712
    relabelled = str(legit.iloc[10])
    relabel = pa.Table.from_pylist(
        [
            {
                "transaction_id": relabelled,
                "is_fraud": True,
                "label_ts": end + timedelta(days=40),
                "label_source": "chargeback",
            }
        ],
        schema=LABELS,
    )
    load_labels(url, [relabel], "late-chargeback", settings.ingest)
    truth[relabelled] = True
    proc = run_dbt(["run", "--select", "stg_labels"], url, check=False)
    assert proc.returncode == 0, proc.stdout[-5000:]

    rng = np.random.default_rng(5)

    def predict(txn: dict[str, Any], version: str, probability: float, delay: timedelta) -> PredictionRow:
        decision = "decline" if probability >= DECLINE else "review" if probability >= REVIEW else "approve"
        event_ts = txn["event_ts"].to_pydatetime()
        request = {**txn, "amount": float(txn["amount"]), "timestamp": event_ts}  # the service's field names
        return prediction_row(
            request,
            request_id=uuid.uuid4().hex,
            model_version=version,
            probability=probability,
            decision=decision,
            scored_at=event_ts + delay,
        )

    records: list[dict[str, Any]] = frame.to_dict("records")
    rows: list[PredictionRow] = []
    for txn in records:
        day = (txn["event_ts"] - pd.Timestamp(START)).days
        for version in ["3"] + (["4"] if day == 1 else []):  # v4 shadows v3 on the middle day
            # an informative but imperfect model: fraud scores higher on average
            mean = 0.75 if truth.get(txn["transaction_id"]) else 0.3
            probability = float(np.clip(rng.normal(mean, 0.2), 0.0, 1.0))
            rows.append(predict(txn, version, probability, timedelta(milliseconds=5)))
    first = records[5]
    rows.append(predict(first, "3", 0.99, timedelta(seconds=3)))  # a client retry, scored later
    # a scored transaction that never got a label (not in the raw data at all)
    rows.append(replace(predict(first, "3", 0.2, timedelta(0)), transaction_id="t-unlabelled"))

    latest: dict[tuple[str, str], PredictionRow] = {}  # the later score of a retried transaction counts
    for row in sorted(rows, key=lambda row: row.scored_at or row.event_ts):
        latest[(row.transaction_id, row.model_version)] = row
    expected = pd.DataFrame(
        [
            {
                "day": row.event_ts.date(),
                "model_version": row.model_version,
                "probability": row.probability,
                "flagged": row.decision != "approve",
                "is_fraud": truth.get(row.transaction_id),
            }
            for row in latest.values()
        ]
    )
    ensure_table(url)
    with psycopg.connect(url) as conn:
        write_rows(conn, rows)
    return url, expected


def test_daily_figures_equal_sklearn_on_the_same_rows(live_db: tuple[str, pd.DataFrame]) -> None:
    url, expected = live_db
    performance = live.compute(url, days=7)
    assert performance.last_day == (START + timedelta(days=DAYS - 1)).date()
    assert performance.first_day == performance.last_day - timedelta(days=6)
    got = {(d.day, d.model_version): d for d in performance.days}
    assert sorted(got) == sorted({(r.day, r.model_version) for r in expected.itertuples()})

    for (day, version), group in expected.groupby(["day", "model_version"]):
        figures = got[(day, version)]
        labelled = group[group["is_fraud"].notna()]
        y = labelled["is_fraud"].astype(bool).to_numpy()
        # one prediction per transaction and version (the retry counted once), the unlabelled one included
        assert figures.predictions == len(group) and figures.labelled == len(labelled)
        assert figures.frauds == y.sum() > 0 and figures.flagged == labelled["flagged"].sum()
        assert figures.roc_auc == pytest.approx(roc_auc_score(y, labelled["probability"]))
        assert figures.pr_auc == pytest.approx(average_precision_score(y, labelled["probability"]))
        assert figures.precision == pytest.approx(precision_score(y, labelled["flagged"]))
        assert figures.recall == pytest.approx(recall_score(y, labelled["flagged"]))
        assert figures.complete == (day < performance.last_day)
        assert 0.7 < figures.roc_auc < 1.0  # the scores were informative, and not perfect


def test_figures_are_stored_once_per_day_and_version(live_db: tuple[str, pd.DataFrame]) -> None:
    url, _ = live_db
    performance = live.compute(url, days=7)
    assert live.store(url, performance) == len(performance.days) == 4
    assert live.store(url, performance) == 4  # a rerun updates the same rows
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "select day, model_version, predictions, labelled, roc_auc, precision, recall, complete"
            " from monitoring.live_model_performance order by day, model_version"
        ).fetchall()
    assert [(r[0], r[1]) for r in rows] == [(d.day, d.model_version) for d in performance.days]
    for row, figures in zip(rows, performance.days, strict=True):
        assert row[2:] == (
            figures.predictions,
            figures.labelled,
            pytest.approx(figures.roc_auc),
            pytest.approx(figures.precision),
            pytest.approx(figures.recall),
            figures.complete,
        )

    # published: the latest complete day (the middle one), both versions
    samples = live.samples(performance)
    middle = (START + timedelta(days=1)).date()
    assert [d.day for d in performance.latest_complete] == [middle, middle]
    labelled = {
        s.labels["model_version"]: s.value for s in samples if s.name == "rtml_live_labelled_predictions"
    }
    assert labelled == {d.model_version: d.labelled for d in performance.latest_complete}
    auc = {
        s.labels["model_version"]: s.value
        for s in samples
        if s.name == "rtml_live_model_metric" and s.labels["metric"] == "roc_auc"
    }
    assert auc == {d.model_version: pytest.approx(d.roc_auc) for d in performance.latest_complete}
    assert {s.labels["window"] for s in samples} == {"1d"}


def test_window_is_limited_to_the_last_days(live_db: tuple[str, pd.DataFrame]) -> None:
    url, _ = live_db
    performance = live.compute(url, days=1)
    assert {d.day for d in performance.days} == {performance.last_day}
    assert performance.latest_complete == []  # the only day is still filling up


def test_bad_requests_are_refused(
    live_db: tuple[str, pd.DataFrame], scratch_database: Callable[[str], str]
) -> None:
    url, _ = live_db
    with pytest.raises(live.LivePerformanceError, match="must be positive"):
        live.compute(url, days=0)
    empty = scratch_database("live_empty")
    with pytest.raises(live.LivePerformanceError, match="does not exist"):
        live.compute(empty, days=7)


def test_asset_stores_and_describes_each_day(live_db: tuple[str, pd.DataFrame], stack: StackInfo) -> None:
    url, _ = live_db
    result = dg.materialize(
        [live_model_performance],
        instance=dg.DagsterInstance.from_config(str(stack.dagster_home)),
        resources={"postgres": PostgresServer(url=url), "settings": get_settings()},
    )
    assert result.success
    [materialization] = result.asset_materializations_for_node("live_model_performance")
    metadata = {key: value.value for key, value in materialization.metadata.items()}
    assert metadata["rows_written"] == 4
    assert metadata["latest_complete_day"] == (START + timedelta(days=1)).date().isoformat()
    days = metadata["days"].records
    assert [(r.data["day"], r.data["model_version"]) for r in days][:2] == [
        (START.date().isoformat(), "3"),
        ((START + timedelta(days=1)).date().isoformat(), "3"),
    ]
    assert 0.7 < metadata["v3/roc_auc"] < 1.0 and metadata["v4/labelled"] > 0
