"""The scorer's life without its dependencies, as a real ``bentoml serve`` process: it starts with no
production version and with its prediction-log PostgreSQL stopped (a server of this module's own, never
the session's), answers 503 until a version is promoted, shows which scoring path serves (compiled or
sklearn), and loses no prediction-log row while PostgreSQL is down. Then shadow scoring (issue 17): a
staged version scores every request after production answered it (``monitoring.shadow_predictions``)
and every request's model row is logged (``monitoring.served_features``); a broken staged version leaves
production untouched; with the setting off there is no shadow, and a feature-log sample is chosen by
the transaction id."""

from __future__ import annotations

import os
import signal
import time
import uuid
import zlib
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

from rtml.stack.processes import free_port
from rtml.stack.scorer_process import SERVICE
from rtml.training import model_registry
from rtml.training.dataset import FeatureSpec, feature_spec
from rtml.training.loading import load_pipeline
from rtml.training.model import build_pipeline
from rtml.training.train import score as pipeline_score
from tests import local_http
from tests.model_versions import gated, log_version, promote
from tests.own_postgres import OwnPostgres
from tests.test_serving import (
    Server,
    Valkey,
    _env,
    _metadata,
    _metric,
    _metrics,
    _samples,
    start_server,
    transaction,
)

THRESHOLDS = {"threshold_review": "0.3", "threshold_decline": "0.8"}


@dataclass
class Scorer:
    server: Server
    name: str
    tracking_uri: str
    postgres: OwnPostgres
    valkey: Valkey
    env: dict[str, str]
    work: Any

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
    server = start_server("scorer-lifecycle", SERVICE, env, work, probe="/livez")
    try:
        yield Scorer(server, name, mlflow_tracking_uri, postgres, valkey, env, work)
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
    assert local_http.get(f"{url}/livez").status_code == 200
    assert local_http.get(f"{url}/readyz").status_code == 503
    refused = score(scorer)
    assert refused.status_code == 503 and "no model loaded" in refused.json()["error"], refused.text
    assert refused.headers["retry-after"]
    assert _metadata(scorer.server)["model"] is None
    text = _metrics(scorer.server)
    unavailable = {labels["reason"]: n for labels, n in _samples(text, "rtml_scoring_unavailable_total")}
    assert unavailable["no_model"] >= 1

    client = model_registry.client_for(scorer.tracking_uri)
    version = log_version(fitted(feature_spec(), compilable=True), scorer.name, gated(THRESHOLDS))
    promote(client, scorer.name, version, "first production version")
    wait_for(scorer.server, lambda meta: (meta["model"] or {}).get("version") == version)
    assert local_http.get(f"{url}/readyz").status_code == 200
    answered = score(scorer)
    assert answered.status_code == 200 and answered.json()["model_version"] == version
    assert _metadata(scorer.server)["model"]["path"] == "compiled"


def test_the_scoring_path_shows_when_a_model_cannot_be_compiled(scorer: Scorer) -> None:
    compiled = _metadata(scorer.server)["model"]["version"]
    before = score(scorer).json()["fraud_probability"]
    client = model_registry.client_for(scorer.tracking_uri)
    version = log_version(fitted(feature_spec(), compilable=False), scorer.name, gated(THRESHOLDS))
    promote(client, scorer.name, version, "a model the compiler cannot take")
    wait_for(scorer.server, lambda meta: meta["model"]["version"] == version)
    assert _metadata(scorer.server)["model"]["path"] == "sklearn"
    answered = score(scorer).json()
    assert answered["model_version"] == version and answered["fraud_probability"] != before
    text = _metrics(scorer.server)
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
    text = _metrics(scorer.server)
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
    text = _metrics(scorer.server)
    assert _metric(text, "rtml_predictions_drained_total") == len(scorer.request_ids) - 10
    assert _metric(text, "rtml_predictions_dropped_total") == 0
    assert _metric(text, "rtml_predictions_spill_bytes") == 0


def test_a_killed_sidecar_is_replaced_and_the_log_goes_on(scorer: Scorer) -> None:
    """The worker's sidecar process (the prediction log's writer) killed (-9) while idle: the worker
    notices without traffic, starts another, counts the restart, and the requests that follow are all
    logged (PostgreSQL is up: the test before started it)."""
    process = _metadata(scorer.server)["predictions_log"]["process"]
    assert process["pid"] and process["restarts"] == 0, process
    os.kill(process["pid"], signal.SIGKILL)
    wait_for(scorer.server, lambda meta: meta["predictions_log"]["process"]["restarts"] == 1)
    before = len(scorer.request_ids)
    for _ in range(20):
        assert score(scorer).status_code == 200
    wait_for(scorer.server, lambda meta: meta["predictions_log"]["pending"] == 0)
    after = _metadata(scorer.server)["predictions_log"]["process"]
    assert after["pid"] not in (None, process["pid"]), after
    assert _metric(_metrics(scorer.server), "rtml_scorer_sidecar_restarts_total") == 1
    with psycopg.connect(scorer.postgres.url) as conn:
        found = conn.execute(
            "select count(*) from monitoring.predictions where request_id = any(%s)",
            (scorer.request_ids[before:],),
        ).fetchone()
    assert found == (20,)


# --- shadow scoring and the served-features log (issue 17) -------------------------------------------
SHADOW_THRESHOLDS = {"threshold_review": "0.2", "threshold_decline": "0.9"}  # its own, not production's


def stage(scorer: Scorer, version: str) -> None:
    model_registry.client_for(scorer.tracking_uri).set_registered_model_alias(scorer.name, "staging", version)


def score_many(scorer: Scorer, n: int, server: Server | None = None) -> list[dict[str, Any]]:
    """``n`` transactions of distinct ids, answered 200 by ``server`` (the scorer's by default)."""
    answers = []
    for i in range(n):
        txn = transaction("c-shadow", f"m-shadow-{i % 3}", datetime(2026, 11, 21, i, tzinfo=UTC), 10.0 + i)
        response = (server or scorer.server).post("/score", {"transaction": txn})
        assert response.status_code == 200, response.text
        answers.append({**response.json(), "header": response.headers["x-model-version"]})
    return answers


def rows_of(scorer: Scorer, table: str, request_ids: list[str], want: int, timeout: float = 20) -> list[Any]:
    """The rows of ``table`` for ``request_ids`` once there are ``want`` of them (ordered by request)."""
    query = f"select * from monitoring.{table} where request_id = any(%s) order by request_id"
    deadline = time.monotonic() + timeout
    while True:
        with psycopg.connect(scorer.postgres.url) as conn:
            cur = conn.execute(query, (request_ids,))
            names = [c.name for c in cur.description or ()]
            rows = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        if len(rows) >= want or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def rescore(scorer: Scorer, version: str, features: list[dict[str, Any]]) -> list[float]:
    """The registered Pipeline of ``version`` on logged model rows (JSON null → NaN / missing)."""
    spec = feature_spec()
    frame = pd.DataFrame(features, columns=spec.columns)
    for name in spec.numeric:
        frame[name] = frame[name].astype(float)
    for name in spec.categorical:
        frame[name] = frame[name].astype(object)
    return [float(p) for p in pipeline_score(load_pipeline(f"models:/{scorer.name}/{version}"), frame)]


def test_a_staged_version_is_shadow_scored_and_logged_while_production_answers(scorer: Scorer) -> None:
    production = _metadata(scorer.server)["model"]["version"]
    staged = log_version(fitted(feature_spec(), compilable=True), scorer.name, gated(SHADOW_THRESHOLDS))
    stage(scorer, staged)  # gated, not approved: enough for a shadow, not for production
    wait_for(scorer.server, lambda meta: (meta["shadow"]["model"] or {}).get("version") == staged)
    assert _metadata(scorer.server)["model"]["version"] == production

    answers = score_many(scorer, 6)
    assert {(a["model_version"], a["header"]) for a in answers} == {(production, production)}
    ids = [a["request_id"] for a in answers]
    by_id = {a["request_id"]: a for a in answers}
    shadow = rows_of(scorer, "shadow_predictions", ids, len(ids))
    logged = rows_of(scorer, "served_features", ids, len(ids))
    assert [r["request_id"] for r in shadow] == sorted(ids) == [r["request_id"] for r in logged]
    # what production scored: its Pipeline on the logged rows gives the probabilities it answered
    assert rescore(scorer, production, [r["features"] for r in logged]) == pytest.approx(
        [by_id[r["request_id"]]["fraud_probability"] for r in logged], abs=1e-12
    )
    # the staged version scored the same rows, and decided by its own thresholds
    expected = rescore(scorer, staged, [r["features"] for r in logged])
    assert [r["probability"] for r in shadow] == pytest.approx(expected, abs=1e-9)
    for row, probability in zip(shadow, expected, strict=True):
        assert row["model_version"] == staged
        assert row["transaction_id"] == by_id[row["request_id"]]["transaction_id"]
        decision = "decline" if probability >= 0.9 else "review" if probability >= 0.2 else "approve"
        assert row["decision"] == decision
    for row in logged:
        assert row["model_version"] == production
        assert set(row["features"]) == set(feature_spec().columns)
        assert row["speed_layer"] in ("merged", "beyond_horizon", "not_exact", "disabled"), row
        # this Redis holds no pushed views: the read found no build of either (the defaults scored)
        assert not any(row["feature_versions"].values()), row
    text = _metrics(scorer.server)
    assert _metric(text, "rtml_scoring_shadow_scored_total") >= len(ids)
    assert _metric(text, "rtml_scoring_shadow_errors_total") == 0
    info = {labels["model_version"]: n for labels, n in _samples(text, "rtml_scoring_shadow_model_info")}
    assert info[staged] == 1.0


def test_a_broken_staged_version_leaves_production_untouched(scorer: Scorer) -> None:
    production = _metadata(scorer.server)["model"]["version"]
    before = score_many(scorer, 2)
    broken = log_version(
        fitted(feature_spec(), compilable=True),
        scorer.name,
        gated(SHADOW_THRESHOLDS),
        serialization_format="cloudpickle",  # not skops: refused before it is deserialised
    )
    stage(scorer, broken)
    wait_for(scorer.server, lambda meta: (meta["shadow"]["refused"] or {}).get("version") == broken)
    meta = _metadata(scorer.server)
    assert meta["shadow"]["model"] is None and meta["shadow"]["refused"]["reason"] == "format", meta["shadow"]
    assert meta["model"]["version"] == production and meta["registry"]["refused"] is None

    after = score_many(scorer, 2)
    for old, new in zip(before, after, strict=True):
        assert new["model_version"] == new["header"] == production
        assert new["fraud_probability"] == old["fraud_probability"]  # the same transactions' scores
    ids = [a["request_id"] for a in after]
    assert len(rows_of(scorer, "served_features", ids, len(ids))) == len(ids)
    assert rows_of(scorer, "shadow_predictions", ids, 1, timeout=1) == []
    health = local_http.get(f"{scorer.server.url}/health").json()
    assert health["shadow"]["refused"]["version"] == broken
    assert any(f"shadow version {broken} refused" in p for p in health["problems"]), health
    text = _metrics(scorer.server)
    refused = {labels["reason"]: n for labels, n in _samples(text, "rtml_scoring_shadow_refused_total")}
    assert refused == {"format": 1.0}

    model_registry.client_for(scorer.tracking_uri).delete_registered_model_alias(scorer.name, "staging")
    wait_for(scorer.server, lambda meta: meta["shadow"]["refused"] is None)
    assert score_many(scorer, 1)[0]["model_version"] == production


def test_shadow_off_by_setting_and_a_feature_log_sample_chosen_by_transaction_id(scorer: Scorer) -> None:
    """A second scorer on the same registry, Redis and PostgreSQL, with shadow scoring off and half of
    the requests' rows logged; a version is staged, and the first scorer shadows it meanwhile."""
    staged = log_version(fitted(feature_spec(), compilable=True), scorer.name, gated(SHADOW_THRESHOLDS))
    env = {**scorer.env, "RTML_SERVING_SHADOW": "false", "RTML_SERVING_FEATURE_LOG_SAMPLE": "0.5"}
    env["BENTOML_HOME"] = str(scorer.work / "bentoml-home-quiet")
    quiet = start_server("scorer-quiet", SERVICE, env, scorer.work)
    try:
        stage(scorer, staged)
        wait_for(scorer.server, lambda meta: (meta["shadow"]["model"] or {}).get("version") == staged)
        answers = score_many(scorer, 20, server=quiet)
        ids = [a["request_id"] for a in answers]
        assert len(rows_of(scorer, "predictions", ids, len(ids))) == len(ids)
        sampled = {a["request_id"] for a in answers if zlib.crc32(a["transaction_id"].encode()) < 0.5 * 2**32}
        assert 0 < len(sampled) < len(ids)
        logged = rows_of(scorer, "served_features", ids, len(sampled))
        assert {r["request_id"] for r in logged} == sampled
        assert rows_of(scorer, "shadow_predictions", ids, 1, timeout=1) == []
        meta = _metadata(quiet)
        assert meta["shadow"]["enabled"] is False and meta["shadow"]["model"] is None
        assert meta["feature_log"]["sample"] == 0.5
    finally:
        assert quiet.stop(signal.SIGTERM) == 0, quiet.tail()
    assert scorer.server.stop(signal.SIGTERM) == 0, scorer.server.tail()
