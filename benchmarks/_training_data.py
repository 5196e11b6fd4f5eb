"""Benchmark data for the training stage: a database whose ``features.training_set`` holds at least N
labelled rows, built like the training tests build theirs (simulator → ingest loader → ``dbt run
--full-refresh --select +training_set``) and kept between runs.

``ensure_training_rows`` is idempotent: when the database already has enough labelled rows it returns at
once (about 20 ms); otherwise it rebuilds the database from scratch (about 1 minute for 1M rows on the
2-core machine). dbt writes to its own target folder (``DBT_TARGET_PATH``, default
``/tmp/dbt-target-bench``) so the project's ``dbt_project/target`` keeps naming the platform database.

Run alone: ``.venv/bin/python benchmarks/_training_data.py [--rows 1000000]``, on the PostgreSQL of
``RTML_DATABASE_URL``, else the machine's; where that does not answer, on an embedded one it starts and
stops (the database then goes with it).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from datetime import UTC, datetime, timedelta

import psycopg

from _servers import DATABASE_URL, servers
from rtml.config import Settings, database_url_for
from rtml.features.dbt import run_dbt
from rtml.features.sample_data import create_database
from rtml.ingest.loader import load_labels, load_transactions
from rtml.ingest.tables import ensure_tables
from rtml.sources.scenarios import timeline_path
from rtml.sources.simulator import Simulator

DATABASE = "rtml_bench_training"
SIM_START = datetime(2026, 11, 1, tzinfo=UTC)
"""The benchmark's own simulated start: pinned, not the platform's default (which follows the day)."""
LABEL_DAYS = 30
"""Labels are loaded up to this many days past the last transaction: the simulator's longest label
delay, so every clean transaction is labelled."""
DBT_TARGET = "/tmp/dbt-target-bench"


def labelled_rows(url: str) -> int:
    """Labelled rows in ``features.training_set`` (0 when the database or the table is missing)."""
    try:
        with psycopg.connect(url, connect_timeout=10) as conn:
            row = conn.execute("select count(*) from features.training_set where is_labelled").fetchone()
    except psycopg.Error:
        return 0
    return int(row[0]) if row else 0


def ensure_training_rows(
    server_url: str, database: str = DATABASE, rows: int = 1_000_000, settings: Settings | None = None
) -> str:
    """URL of ``database`` on ``server_url`` with at least ``rows`` labelled training rows.

    Builds it (dropping an existing one) only when it has fewer. The simulated window starts at
    ``settings.simulator.start`` and spans enough whole days of ``simulator.transactions_per_day`` (clean
    rows only: dirty rows are quarantined and never labelled); a day is added if the simulator's daily
    noise left the count short.
    """
    settings = settings or Settings()
    settings = settings.model_copy(
        update={"simulator": settings.simulator.model_copy(update={"start": SIM_START})}
    )
    url = database_url_for(server_url, database)
    have = labelled_rows(url)
    if have >= rows:
        return url

    began = time.perf_counter()
    url = create_database(server_url, database)
    with psycopg.connect(url) as conn:
        ensure_tables(conn)
    simulator = Simulator(settings.simulator, settings.ingest, timeline_path(settings.services))
    start = settings.simulator.start
    clean_per_day = settings.simulator.transactions_per_day * (1 - settings.simulator.dirty_share)
    days = max(1, math.ceil(rows / clean_per_day))
    end = start + timedelta(days=days)
    now = start + timedelta(days=days + 1 + LABEL_DAYS)  # the load time: after every label, on any day
    load_transactions(
        url, simulator.iter_transactions(start, end, hours_per_chunk=24), "sim", settings.ingest, now=now
    )
    while _clean_transactions(url) < rows:  # the daily volume is noisy: one more day until enough
        more = end + timedelta(days=1)
        load_transactions(
            url,
            simulator.iter_transactions(end, more, hours_per_chunk=24),
            f"sim-{days}",
            settings.ingest,
            now=now,
        )
        end, days = more, days + 1
    labels = simulator.labels(start, end + timedelta(days=LABEL_DAYS))
    load_labels(url, [labels], "sim-labels", settings.ingest, now=max(now, end + timedelta(days=LABEL_DAYS)))
    loaded = time.perf_counter() - began
    env = {"DBT_TARGET_PATH": os.environ.get("DBT_TARGET_PATH") or DBT_TARGET}
    run_dbt(["run", "--full-refresh", "--select", "+training_set"], url, extra_env=env)
    have = labelled_rows(url)
    print(
        f"built {database}: {days} days, {have:,} labelled training rows "
        f"(load {loaded:.0f} s, total {time.perf_counter() - began:.0f} s)"
    )
    if have < rows:
        raise RuntimeError(f"{database} has {have:,} labelled training rows, fewer than {rows:,}")
    return url


def _clean_transactions(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("select count(*) from raw.transactions").fetchone()
    return int(row[0]) if row else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--database", default=DATABASE)
    args = parser.parse_args()
    with servers(os.environ.get("RTML_DATABASE_URL", DATABASE_URL)) as (server, _):
        began = time.perf_counter()
        url = ensure_training_rows(server, args.database, args.rows)
        print(f"{url}  ({labelled_rows(url):,} labelled rows, {time.perf_counter() - began:.1f} s)")


if __name__ == "__main__":
    main()
