"""The scorer's life without its dependencies, as a real ``bentoml serve`` process: it starts with no
production version and with its prediction-log PostgreSQL stopped (a server of this module's own, never
the session's), answers 503 until a version is promoted, shows which scoring path serves (compiled or
sklearn), and loses no prediction-log row while PostgreSQL is down."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import numpy as np
import pandas as pd
import psycopg
import pytest
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from rtml.services.processes import free_port
from rtml.training import registry
from rtml.training.dataset import FeatureSpec, feature_spec
from rtml.training.model import build_pipeline
from tests.model_versions import gated, log_version, promote
from tests.own_postgres import OwnPostgres
from tests.test_serving import Server, Valkey, _env, _metadata, _metric, _samples, start_server, transaction

THRESHOLDS = {"threshold_review": "0.3", "threshold_decline": "0.8"}


@dataclass
class Scorer:
    server: Server
    name: str
    tracking_uri: str
    postgres: OwnPostgres

    @property
    def request_ids(self) -> list[str]:
        """Of every request answered 200 (``Server.post`` collects them)."""
        return self.server.request_ids


def fitted(spec: FeatureSpec, compilable: bool) -> Pipeline:
    """A small model of the real feature set; with a scaler in front of the numeric columns it cannot be
    compiled (``rtml.training.compiled`` takes only the passthrough that ``model.build_pipeline`` makes)."""
    rng = np.random.default_rng(7 if compilable else 8)  # two different models
    X = {name: rng.normal(size=500) for name in spec.numeric}
    X.update({name: rng.choice(["a", "b"], size=500).astype(object) for name in spec.categorical})
    frame = pd.DataFrame(X)[spec.columns]
    pipeline = build_pipeline(spec, max_iter=10)
    if not compilable:
        pipeline.set_params(preprocess__numeric=StandardScaler())
    return pipeline.fit(frame, frame[spec.numeric[0]] > 0.5)


@pytest.fixture(scope="module")
def scorer(mlflow_tracking_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scorer]:
    work = tmp_path_factory.mktemp("scorer-lifecycle")
    postgres = OwnPostgres(work)
    postgres.stop()  # the scorer starts without its PostgreSQL
    valkey = Valkey(work / "valkey", port=free_port())
    valkey.data_dir.mkdir()
    valkey.start()
    name = f"fraud-detector-lifecycle-{uuid.uuid4().hex[:8]}"  # no version holds production
    env = _env(
        RTML_REDIS_URL=valkey.url,
        RTML_DATABASE_URL=postgres.url,
        RTML_DATA_DIR=str(work / "data"),
        RTML_MLFLOW_TRACKING_URI=mlflow_tracking_uri,
        RTML_MODEL_NAME=name,
        RTML_SERVING_MODEL_POLL_SECONDS="0.5",
        RTML_PREDICTIONS_FLUSH_MS="100",
        BENTOML_HOME=str(work / "bentoml-home"),
        BENTOML_DO_NOT_TRACK="true",
    )
    server = start_server("scorer-lifecycle", "service:FraudScorer", env, work, probe="/livez")
    try:
        yield Scorer(server, name, mlflow_tracking_uri, postgres)
    finally:
        server.stop()
        valkey.stop()
        postgres.stop()


def score(scorer: Scorer) -> httpx.Response:
    txn = transaction("c-lifecycle", "m-lifecycle", datetime(2026, 11, 20, tzinfo=UTC))
    return scorer.server.post("/score", {"transaction": txn})


def wait_for(server: Server, condition: Callable[[dict[str, Any]], bool], timeout: float = 30) -> None:
    """Until ``condition(/metadata)`` holds."""
    deadline = time.monotonic() + timeout
    while not condition(meta := _metadata(server)):
        assert time.monotonic() < deadline, f"{meta}\n{server.tail()}"
        time.sleep(0.2)


def test_not_ready_without_a_production_version_then_ready_once_one_is_promoted(scorer: Scorer) -> None:
    url = scorer.server.url
    assert httpx.get(f"{url}/livez").status_code == 200
    assert httpx.get(f"{url}/readyz").status_code == 503
    refused = score(scorer)
    assert refused.status_code == 503 and "no model loaded" in refused.json()["error"], refused.text
    assert refused.headers["retry-after"]
    assert _metadata(scorer.server)["model"] is None
    text = httpx.get(f"{url}/metrics").text
    unavailable = {labels["reason"]: n for labels, n in _samples(text, "rtml_scoring_unavailable_total")}
    assert unavailable["no_model"] >= 1

    client = registry.client_for(scorer.tracking_uri)
    version = log_version(fitted(feature_spec(), compilable=True), scorer.name, gated(THRESHOLDS))
    promote(client, scorer.name, version, "first production version")
    wait_for(scorer.server, lambda meta: (meta["model"] or {}).get("version") == version)
    assert httpx.get(f"{url}/readyz").status_code == 200
    answered = score(scorer)
    assert answered.status_code == 200 and answered.json()["model_version"] == version
    assert _metadata(scorer.server)["model"]["path"] == "compiled"


def test_the_scoring_path_shows_when_a_model_cannot_be_compiled(scorer: Scorer) -> None:
    compiled = _metadata(scorer.server)["model"]["version"]
    before = score(scorer).json()["fraud_probability"]
    client = registry.client_for(scorer.tracking_uri)
    version = log_version(fitted(feature_spec(), compilable=False), scorer.name, gated(THRESHOLDS))
    promote(client, scorer.name, version, "a model the compiler cannot take")
    wait_for(scorer.server, lambda meta: meta["model"]["version"] == version)
    assert _metadata(scorer.server)["model"]["path"] == "sklearn"
    answered = score(scorer).json()
    assert answered["model_version"] == version and answered["fraud_probability"] != before
    text = httpx.get(f"{scorer.server.url}/metrics").text
    info = {
        (labels["model_version"], labels["path"]): n
        for labels, n in _samples(text, "rtml_scoring_model_info")
    }
    assert info == {(compiled, "compiled"): 0.0, (version, "sklearn"): 1.0}


def test_no_prediction_is_lost_while_postgres_is_down(scorer: Scorer) -> None:
    """PostgreSQL has been down since the scorer started: every answer is still 200, the rows wait on
    disk, and all of them are in the table once PostgreSQL is back — without a restart of the scorer."""
    for _ in range(50):
        assert score(scorer).status_code == 200
    wait_for(scorer.server, lambda meta: meta["predictions_log"]["pending"] == 0)
    log = _metadata(scorer.server)["predictions_log"]
    assert log["database"] == "unavailable" and log["written"] == 0, log
    assert log["spilled"] == len(scorer.request_ids) and log["spill_bytes"] > 0, log
    text = httpx.get(f"{scorer.server.url}/metrics").text
    assert _metric(text, "rtml_predictions_spilled_total") == len(scorer.request_ids)
    assert _metric(text, "rtml_predictions_spill_bytes") > 0

    scorer.postgres.start()
    wait_for(scorer.server, lambda meta: meta["predictions_log"]["drained"] == len(scorer.request_ids))
    for _ in range(10):  # and the live path writes again
        assert score(scorer).status_code == 200
    wait_for(scorer.server, lambda meta: meta["predictions_log"]["written"] == 10)
    with psycopg.connect(scorer.postgres.url) as conn:
        found = conn.execute(
            "select count(*) from monitoring.predictions where request_id = any(%s)", (scorer.request_ids,)
        ).fetchone()
    assert found == (len(scorer.request_ids),)
    text = httpx.get(f"{scorer.server.url}/metrics").text
    assert _metric(text, "rtml_predictions_drained_total") == len(scorer.request_ids) - 10
    assert _metric(text, "rtml_predictions_dropped_total") == 0
    assert _metric(text, "rtml_predictions_spill_bytes") == 0
    assert scorer.server.stop(signal.SIGTERM) == 0, scorer.server.tail()
