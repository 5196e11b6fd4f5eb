"""Benchmark of the dbt feature store.

1. full build (``dbt run --full-refresh``) of staging, feature and training models over N synthetic
   transactions (default 1,000,000 over 10 days, 20k customers, 2k merchants);
2. an hourly incremental run of a live day without a gap: the history ends at 11:00 of its last day,
   the hour 11:00-12:00 is loaded, then the incremental models run with that hour as the window
   (``RTML_DBT_MIN_TS``/``RTML_DBT_MAX_TS``, what the Dagster partitioned asset passes), timed as a
   whole CLI invocation including dbt start-up; then the same hour again as the Dagster asset builds
   it (``dbt build``: the models, then their data tests, which read the hour's rows where they can);
3. the refresh of the online ``*_latest`` tables;
4. the same hour of a live day after a gap: four weeks later (a hole in ``raw.transactions``, as when
   the hourly schedule resumes after the demo's history), the hour 11:00-12:00, the incremental models,
   then the ``*_latest`` tables again. As in the live stack, labels kept arriving during the hole (the
   daily labels job loads the simulator's labels, one per transaction, also of transactions never
   loaded): one label per transaction of the hole, about ``rows / days * 28``.

Usage: ``.venv/bin/python benchmarks/features.py [--rows 1000000]`` with ``RTML_DATABASE_URL`` pointing
at a server (default ``postgresql://postgres@127.0.0.1:5432/postgres``; where none answers, an embedded
one it starts and stops); it works in its own database ``rtml_bench_features``. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import psycopg

from _machine import json_line, load_average
from _servers import DATABASE_URL, servers
from rtml.features.dbt import dbt_env, dbt_executable, project_dir, run_dbt, target_dir, window_env
from rtml.features.sample_data import copy_frame, create_database, load_sample, make_labels, make_transactions

START = datetime(2026, 11, 1, 11, tzinfo=UTC)  # the history ends at 11:00, in the middle of a live day
GAP = timedelta(days=28)  # the hole before the "after a gap" hour


def timed(label: str, args: list[str], url: str, env: dict[str, str] | None = None) -> float:
    """A ``dbt`` process, start-up included, as the Dagster dbt assets run it (``DbtCliResource``);
    ``run_dbt`` would run it in this process, where dbt's imports are paid once."""
    began = time.perf_counter()
    proc = subprocess.run(
        [dbt_executable(), "--no-version-check", *args],
        cwd=project_dir(),
        env={**os.environ, **dbt_env(url), **(env or {})},
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - began
    if proc.returncode != 0:
        raise SystemExit(f"dbt {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}")
    print(f"{label:<44} {seconds:8.2f} s")
    results = json.loads((target_dir() / "run_results.json").read_text())["results"]
    for r in sorted(results, key=lambda r: -r["execution_time"]):
        print(f"    {r['unique_id'].split('.')[-1]:<40} {r['execution_time']:8.2f} s")
    return seconds


def hole_labels(url: str, start: datetime, end: datetime, n: int, seed: int = 11) -> None:
    """``n`` labels with label_ts in [start, end) of transactions that were never loaded (the hole):
    1.5 % fraud chargebacks, the rest confirmed, like the simulator's one label per transaction."""
    rng = np.random.default_rng(seed)
    fraud = rng.random(n) < 0.015
    offsets = np.sort(rng.integers(0, int((end - start).total_seconds() * 1e6), size=n))
    labels = pd.DataFrame(
        {
            "transaction_id": [f"hole{i:09d}" for i in range(n)],
            "is_fraud": fraud,
            "label_ts": pd.Timestamp(start) + pd.to_timedelta(offsets, unit="us"),
            "label_source": np.where(fraud, "chargeback", "confirmed"),
            "source": "labels/hole",
        }
    )
    with psycopg.connect(url) as conn:
        copy_frame(conn, "raw.labels", labels)
        conn.commit()
    run_dbt(["run", "--select", "stg_labels"], url)  # what the daily labels run rebuilds; not timed


def hourly_run(
    label: str, url: str, hour_start: datetime, rows: int, *, seed: int
) -> tuple[float, float, float]:
    """Load one hour of ``rows`` transactions, run the incremental models over that hour's window, build
    them over it again with their tests (the Dagster asset's ``dbt build``), then refresh the online
    tables: (incremental, incremental build, latest)."""
    new = make_transactions(
        rows,
        start=hour_start,
        days=1 / 24,
        customers=20_000,
        merchants=2_000,
        seed=seed,
        id_prefix=f"h{seed}-",
    )
    load_sample(url, new, replace=False)
    incremental = timed(
        f"incremental {label} ({rows:,} rows)",
        ["run", "--select", "config.materialized:incremental"],
        url,
        window_env(hour_start, hour_start + timedelta(hours=1)),
    )
    build = timed(  # the same hour again, as the Dagster asset builds it: the models, then their tests
        f"incremental {label}, dbt build (with its tests)",
        ["build", "--exclude-resource-type", "unit_test", "--select", "config.materialized:incremental"],
        url,
        window_env(hour_start, hour_start + timedelta(hours=1)),
    )
    latest = timed(
        f"online tables (*_latest) after the {label}",
        ["run", "--select", "customer_features_latest", "merchant_features_latest"],
        url,
    )
    return incremental, build, latest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=float, default=10.0)
    args = parser.parse_args()
    load_start = load_average()
    with servers(os.environ.get("RTML_DATABASE_URL", DATABASE_URL)) as (server, _):
        measure(args, server, load_start)


def measure(args: argparse.Namespace, server: str, load_start: list[float]) -> None:
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
    incremental, build, latest = hourly_run("hour of a live day", url, hour_start, per_hour, seed=8)
    began = time.perf_counter()
    hole = int(args.rows / args.days * GAP.days)
    hole_labels(url, hour_start + timedelta(hours=1), hour_start + GAP, hole)
    print(
        f"{'labels during the hole (not timed)':<44} {time.perf_counter() - began:8.2f} s  ({hole:,} labels)"
    )
    gap_incremental, gap_build, gap_latest = hourly_run(
        "hour after a 4-week gap", url, hour_start + GAP, per_hour, seed=9
    )
    with psycopg.connect(url) as conn:
        features_rows = conn.execute("select count(*) from features.customer_features").fetchone()
        training_rows = conn.execute("select count(*) from features.training_set").fetchone()
    result = {
        "rows": args.rows,
        "full_build_seconds": round(full, 2),
        "full_build_rows_per_second": round(args.rows / full),
        "incremental_seconds": round(incremental, 2),
        "incremental_build_seconds": round(build, 2),
        "incremental_rows": per_hour,
        "latest_refresh_seconds": round(latest, 2),
        "gap_incremental_seconds": round(gap_incremental, 2),
        "gap_incremental_build_seconds": round(gap_build, 2),
        "gap_latest_refresh_seconds": round(gap_latest, 2),
        "gap_labels": hole,
        "customer_features_rows": features_rows[0] if features_rows else 0,
        "training_set_rows": training_rows[0] if training_rows else 0,
    }
    print(json_line(result, load_start))


if __name__ == "__main__":
    main()
