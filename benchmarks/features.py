"""Benchmark of the dbt feature store.

1. full build (``dbt run --full-refresh``) of staging, feature and training models over N synthetic
   transactions (default 1,000,000 over 10 days, 20k customers, 2k merchants);
2. an hourly incremental run: one new hour of transactions is loaded, then the incremental models run
   with that hour as the window (``RTML_DBT_MIN_TS``/``RTML_DBT_MAX_TS``, what the Dagster partitioned
   asset passes), timed as a whole CLI invocation including dbt start-up;
3. the refresh of the online ``*_latest`` tables.

Usage: ``.venv/bin/python benchmarks/features.py [--rows 1000000]`` with ``RTML_DATABASE_URL`` pointing
at a server (default ``postgresql://postgres@127.0.0.1:5432/postgres``); it works in its own database
``rtml_bench_features``. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import UTC, datetime, timedelta

import psycopg

from rtml.features.dbt import run_dbt, target_dir, window_env
from rtml.features.sample_data import create_database, load_sample, make_labels, make_transactions

START = datetime(2026, 11, 1, tzinfo=UTC)


def timed(label: str, args: list[str], url: str, env: dict[str, str] | None = None) -> float:
    began = time.perf_counter()
    run_dbt(args, url, extra_env=env)
    seconds = time.perf_counter() - began
    print(f"{label:<44} {seconds:8.2f} s")
    results = json.loads((target_dir() / "run_results.json").read_text())["results"]
    for r in sorted(results, key=lambda r: -r["execution_time"]):
        print(f"    {r['unique_id'].split('.')[-1]:<40} {r['execution_time']:8.2f} s")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=float, default=10.0)
    args = parser.parse_args()
    server = os.environ.get("RTML_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    url = create_database(server, "rtml_bench_features")

    began = time.perf_counter()
    transactions = make_transactions(
        args.rows, start=START, days=args.days, customers=20_000, merchants=2_000, seed=7
    )
    labels = make_labels(transactions)
    load_sample(url, transactions, labels)
    print(f"{'generate + COPY raw rows':<44} {time.perf_counter() - began:8.2f} s  ({args.rows:,} rows)")
    run_dbt(["parse"], url)

    full = timed("full build (dbt run --full-refresh, all)", ["run", "--full-refresh"], url)

    # one new hour arrives (about rows/days/24 transactions), loaded like an hourly partition
    hour_start = START + timedelta(days=args.days)
    per_hour = max(1, int(args.rows / args.days / 24))
    new = make_transactions(
        per_hour, start=hour_start, days=1 / 24, customers=20_000, merchants=2_000, seed=8, id_prefix="n"
    )
    load_sample(url, new, replace=False)
    incremental = timed(
        "incremental hour (incremental models)",
        ["run", "--select", "config.materialized:incremental"],
        url,
        window_env(hour_start, hour_start + timedelta(hours=1)),
    )
    latest = timed(
        "online tables (*_latest) refresh",
        ["run", "--select", "customer_features_latest", "merchant_features_latest"],
        url,
    )
    with psycopg.connect(url) as conn:
        features_rows = conn.execute("select count(*) from features.customer_features").fetchone()
        training_rows = conn.execute("select count(*) from features.training_set").fetchone()
    result = {
        "rows": args.rows,
        "full_build_seconds": round(full, 2),
        "full_build_rows_per_second": round(args.rows / full),
        "incremental_seconds": round(incremental, 2),
        "incremental_rows": per_hour,
        "latest_refresh_seconds": round(latest, 2),
        "customer_features_rows": features_rows[0] if features_rows else 0,
        "training_set_rows": training_rows[0] if training_rows else 0,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
