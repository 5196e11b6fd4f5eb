"""``POST /score`` with the speed layer merged into the online read vs the same service without it
(issue 16: p99 at 100 requests/s at most 1.1 x).

One command, from a fresh clone, against the PostgreSQL and Redis of ``--database-url`` (a server URL)
and ``--redis-url`` (defaults: ``RTML_DATABASE_URL`` / ``RTML_REDIS_URL``, else the machine's; where those
do not answer, embedded ones it starts and stops); it builds everything it needs and removes it at the end:

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
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import ROOT, Result, Service, drive, merge, score_body
from _machine import json_line, load_average
from _servers import DATABASE_URL, REDIS_URL, servers
from _world import production_world, scored_pair
from rtml.config import OnlineSettings
from rtml.features.online import OnlineStore
from rtml.stack.scorer_process import SERVICE
from rtml.streaming.events import SECOND_US, TransactionEvent, from_us, to_us
from rtml.streaming.snapshot import snapshot_watermark


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
    with contextlib.ExitStack() as stack:
        world = stack.enter_context(production_world(database_url, log_dir, "speed-read"))
        url, tmp = world.url, world.tmp

        store = OnlineStore(
            redis_url,
            online=OnlineSettings(ttl_seconds=0, key_prefix=world.key_prefix, speed_layer_enabled=True),
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

        common = {**world.service_env(redis_url), "RTML_SERVING_WORKERS": "1"}
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
    ap.add_argument("--database-url", default=os.environ.get("RTML_DATABASE_URL", DATABASE_URL))
    ap.add_argument("--redis-url", default=os.environ.get("RTML_REDIS_URL", REDIS_URL))
    ap.add_argument("--rate", type=float, default=100)
    ap.add_argument("--seconds", type=float, default=60, help="per server, over all rounds")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--customer", choices=("busiest", "median"), default="busiest")
    ap.add_argument("--log-dir", default="/tmp/rtml-bench-speed-read")
    args = ap.parse_args()
    load_start = load_average()
    with servers(args.database_url, args.redis_url) as (database_url, redis_url):
        result = measure(
            database_url=database_url,
            redis_url=redis_url,
            rate=args.rate,
            seconds=args.seconds,
            rounds=args.rounds,
            customer=args.customer,
            log_dir=Path(args.log_dir),
        )
    print(json_line(result, load_start))


if __name__ == "__main__":
    main()
