"""``POST /score`` with the speed layer merged into the online read vs the same service without it
(issue 16: p99 at 100 requests/s at most 1.1 x).

One command, from a fresh clone, against the machine's PostgreSQL and Redis (``--database-url``, a
server URL; ``--redis-url``); it builds everything it needs and removes it at the end:

1. a simulated world (``rtml.features.sample_data.load_simulated``, the test suite's training world:
   2,000 customers, 8,000 transactions a day, 3 weeks) in a database ``rtml_bench_speed_read_<pid>``;
   dbt builds the training set, the online tables and ``customer_stream_snapshot`` (W = newest event);
2. an MLflow server of its own (SQLite, temporary folder); a model trained, gated and approved
   (``production``), as the platform does;
3. the online store and the speed layer's snapshot pushed under a key prefix of its own
   (``OnlineStore.push_from_postgres`` + ``push_speed_snapshot``, as the hourly ``online_features`` does),
   and a burst of five stream events of the scored customer applied after W (the worker's apply);
4. two ``rtml.serving.service:FraudScorer`` servers (one worker each, ``RTML_SPEED_LAYER_ENABLED`` true /
   false, the stream publisher off for both), driven in turns (``--rounds``, order alternating, as
   ``benchmarks/serving.py`` does: this machine's speed drifts within minutes) at ``--rate`` requests/s
   open loop; latencies pooled per server. The body is a transaction of that customer (``--customer``:
   the busiest, by default, or the median one) 10 minutes after W, so every read of the "on" server
   merges (checked on its ``/metrics``: ``rtml_speed_layer_reads_total{result="merged"}``).

Usage::

    .venv/bin/python benchmarks/speed_read.py [--rate 100 --seconds 60 --rounds 30 --customer busiest]

Ends with one JSON line (``speed_on_p99_ms``, ``speed_off_p99_ms``, ``p99_ratio``, ...).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import ROOT, Result, Service, drive, merge, score_body
from _machine import json_line, load_average
from rtml.config import OnlineSettings, ServicesSettings, Settings, SimulatorSettings
from rtml.features.dbt import run_dbt
from rtml.features.online import OnlineStore
from rtml.features.sample_data import create_database, load_simulated
from rtml.stack import mlflow_server
from rtml.stack.processes import free_port
from rtml.stack.scorer_process import SERVICE
from rtml.streaming.events import SECOND_US, TransactionEvent, from_us, to_us
from rtml.streaming.snapshot import snapshot_watermark
from rtml.training import model_registry
from rtml.training.tracking import train_and_register

MODEL = "fraud-detector-bench-speed-read"
START = datetime(2026, 9, 1, tzinfo=UTC)
DAYS, LABEL_DAYS = 21, 10


def build_world(database_url: str, settings: Settings) -> None:
    end = START + timedelta(days=DAYS)
    load_simulated(database_url, settings, START, end, labels_until=end + timedelta(days=LABEL_DAYS))
    select = ["+training_set", "+customer_features_latest", "+merchant_features_latest"]
    proc = run_dbt(["run", "--full-refresh", "--select", *select, "customer_stream_snapshot"], database_url)
    if proc.returncode != 0:
        raise SystemExit(proc.stdout[-5000:])


def scored_pair(database_url: str, which: str) -> tuple[str, str, int, int]:
    """The scored customer (``busiest``: the most transactions in the 30 days before W, the largest
    snapshot to merge; ``median``: the median one by that count), a merchant it has used, its 30-day
    count and its number of known merchants."""
    import psycopg

    order = "txn_count_30d desc" if which == "busiest" else "txn_count_30d"
    with psycopg.connect(database_url) as conn:
        customers = conn.execute("select count(*) from features.customer_stream_snapshot").fetchone()
        offset = 0 if which == "busiest" or customers is None else int(customers[0]) // 2
        row = conn.execute(
            "select customer_id, known_merchant_ids[1], txn_count_30d, cardinality(known_merchant_ids)"
            f" from features.customer_stream_snapshot order by {order}, customer_id"
            f" offset {offset} limit 1"
        ).fetchone()
    assert row is not None
    return str(row[0]), str(row[1]), int(row[2]), int(row[3])


def speed_reads(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    pattern = r'^rtml_speed_layer_reads_total\{result="(\w+)"\} ([0-9.e+]+)$'
    return {m[1]: float(m[2]) for m in re.finditer(pattern, text, re.MULTILINE)}


def measure(
    *,
    database_url: str,
    redis_url: str,
    rate: float = 100,
    seconds: float = 60,
    rounds: int = 30,
    customer: str = "busiest",
    log_dir: Path = Path("/tmp/rtml-bench-speed-read"),
) -> dict[str, Any]:
    """Steps 1-4 of the module's docstring against the server ``database_url`` and ``redis_url``; the
    result (the JSON line's fields). Everything it built is removed before it returns.
    ``benchmarks/streaming.py`` runs it too (its ``/score`` figure)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    name = f"rtml_bench_speed_read_{os.getpid()}"
    prefix = f"rtml-bench-speed-read-{os.getpid()}"
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        os.environ["DBT_TARGET_PATH"] = str(tmp / "dbt-target")  # the project's target/ stays as it is
        settings = Settings(
            services=ServicesSettings(data_dir=tmp / "data"),
            simulator=SimulatorSettings(start=START, customers=2_000, transactions_per_day=8_000),
        )
        started = time.perf_counter()
        url = create_database(database_url, name)
        stack.callback(drop_database, database_url, name)
        build_world(url, settings)
        print(f"world built in {time.perf_counter() - started:.0f} s", file=sys.stderr)

        server = mlflow_server.start(
            f"sqlite:///{tmp / 'mlflow.db'}", free_port(), tmp / "artifacts", log_dir / "mlflow.log", tmp
        )
        stack.callback(mlflow_server.stop, server.pid)
        trained = train_and_register(url, server.url, settings, model_name=MODEL)
        client = model_registry.client_for(server.url)
        model_registry.gate(client, trained.model_version, trained.holdout, settings, name=MODEL)
        model_registry.promote(
            client, trained.model_version, "benchmark", "speed_read", name=MODEL, allow_rejected=True
        )
        print(f"model v{trained.model_version} in production", file=sys.stderr)

        store = OnlineStore(
            redis_url, online=OnlineSettings(ttl_seconds=0, key_prefix=prefix, speed_layer_enabled=True)
        )
        stack.callback(store.close)
        stack.callback(store.purge)
        store.push_from_postgres(url, full=True)
        pushed = store.push_speed_snapshot(url)
        watermark = snapshot_watermark(url)
        assert pushed is not None and pushed.customers > 0 and watermark is not None and store.speed
        w_us = to_us(watermark[0])
        scored, merchant, txn_30d, known = scored_pair(url, customer)
        burst = [
            TransactionEvent(f"bench-burst-{i}", scored, f"bench-new-{i}", 20.0 + i, w_us + i * SECOND_US)
            for i in range(5)
        ]
        store.speed.apply_many(burst, w_us)
        body = score_body(
            {
                "transaction_id": "bench-speed-read",
                "customer_id": scored,
                "merchant_id": merchant,
                "amount": 42.5,
                "currency": "EUR",
                "timestamp": from_us(w_us + 600 * SECOND_US).isoformat(),
                "channel": "online",
            }
        )

        common = {
            "RTML_REDIS_URL": redis_url,
            "RTML_DATABASE_URL": url,
            "RTML_MLFLOW_TRACKING_URI": server.url,
            "RTML_MODEL_NAME": MODEL,
            "RTML_ONLINE_KEY_PREFIX": prefix,
            "RTML_STREAM_PUBLISH": "false",
            "RTML_SERVING_WORKERS": "1",
            "BENTOML_DO_NOT_TRACK": "true",
        }
        services: dict[str, Service] = {}
        for label, enabled in (("speed_on", "true"), ("speed_off", "false")):
            env = {
                **common,
                "RTML_SPEED_LAYER_ENABLED": enabled,
                # a home of its own: no packaged model, its own Prometheus multiprocess folder
                "BENTOML_HOME": str(tmp / f"bentoml-{label}"),
            }
            services[label] = stack.enter_context(Service(SERVICE, ROOT, env, log_dir / f"{label}.log"))
            warm = drive(services[label].url, 0, 3, body=body, concurrency=8)
            if warm.errors:
                raise SystemExit(f"{label}: {warm.errors} errors in warm-up: {warm.statuses}")
        runs: dict[str, list[Result]] = {label: [] for label in services}
        for round_ in range(rounds):
            order = list(services.items()) if round_ % 2 == 0 else list(services.items())[::-1]
            for label, service in order:
                runs[label].append(drive(service.url, rate, seconds / rounds, body=body))
        out = {label: merge(results).summary() for label, results in runs.items()}
        reads = {label: speed_reads(service.url) for label, service in services.items()}
        for label in services:
            print(label, out[label], reads[label], file=sys.stderr)
        assert reads["speed_on"].get("merged", 0) > 0 and reads["speed_on"].get("not_exact", 0) == 0, reads
        assert reads["speed_off"].get("merged", 0) == 0, reads

    result: dict[str, Any] = {
        "benchmark": "speed_read",
        "rate_rps": rate,
        "seconds_per_server": seconds,
        "rounds": rounds,
        "snapshot_customers": pushed.customers,
        "customer": customer,
        "customer_txn_count_30d": txn_30d,
        "customer_known_merchants": known,
        **{f"{label}_{key}": out[label][key] for label in out for key in ("p50_ms", "p99_ms", "errors")},
        "speed_on_merged_reads": reads["speed_on"].get("merged", 0),
        "p99_ratio": round(out["speed_on"]["p99_ms"] / out["speed_off"]["p99_ms"], 3),
    }
    result["target_met"] = result["p99_ratio"] <= 1.1 and not result["speed_on_errors"]
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--rate", type=float, default=100)
    ap.add_argument("--seconds", type=float, default=60, help="per server, over all rounds")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--customer", choices=("busiest", "median"), default="busiest")
    ap.add_argument("--log-dir", default="/tmp/rtml-bench-speed-read")
    args = ap.parse_args()
    load_start = load_average()
    result = measure(
        database_url=args.database_url,
        redis_url=args.redis_url,
        rate=args.rate,
        seconds=args.seconds,
        rounds=args.rounds,
        customer=args.customer,
        log_dir=Path(args.log_dir),
    )
    print(json_line(result, load_start))


def drop_database(server_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')


if __name__ == "__main__":
    main()
