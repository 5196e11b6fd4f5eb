"""Benchmark of the speed layer's state (docs/streaming.md): memory per customer in Redis, and the cost
of applying events and of an exact read.

The seeded simulator's transactions over 32 days (defaults: the platform's 20,000 customers, 100,000
transactions a day, 2,000 merchants) are COPYed into ``raw.transactions``; dbt builds
``stg_transactions`` and ``customer_stream_snapshot`` at the watermark W (19:00 of day 32 by default, the
evening peak; horizon 2 hours); the snapshot rows are pushed to Redis (``SpeedStore.push_snapshots``);
the simulator's events of [W, W + 2 h) are applied (``apply_many``, pipelines of 500: events/s); then

- memory: ``MEMORY USAGE`` of every customer's hash (mean, p50, p99; times 1,000,000 for 1M customers
  with the same behaviour); the packed snapshot's and the stream events' shares;
- an exact read (``SpeedStore.features_at``: one round trip + the merge) of stream transactions,
  p50/p99.

Usage: ``.venv/bin/python benchmarks/speed_layer_state.py [--customers 20000 --per-day 100000]``, on the
PostgreSQL and Redis of ``RTML_DATABASE_URL`` / ``RTML_REDIS_URL``, else the machine's; where those do not
answer, embedded ones it starts and stops. It works in its own database ``rtml_bench_stream_core_state``,
dropped at the end, and under its own key prefix, deleted at the end. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg
import redis

from _machine import json_line, load_average
from _servers import DATABASE_URL, REDIS_URL, servers
from rtml.features.dbt import run_dbt
from rtml.features.sample_data import create_database, load_sample, simulated_frames
from rtml.streaming.events import HOUR_US, TransactionEvent, to_us
from rtml.streaming.redis_state import SpeedStore, pack_snapshot
from rtml.streaming.snapshot import fetch_snapshots

START = datetime(2026, 10, 1, tzinfo=UTC)
DAYS = 31
HORIZON_HOURS = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--per-day", type=int, default=100_000)
    parser.add_argument("--merchants", type=int, default=2_000)
    parser.add_argument("--reads", type=int, default=5_000)
    parser.add_argument(
        "--watermark-hour",
        type=int,
        default=19,
        help="UTC hour of day 32 the watermark is at (19: the evening peak)",
    )
    args = parser.parse_args()
    load_start = load_average()
    with servers(
        os.environ.get("RTML_DATABASE_URL", DATABASE_URL), os.environ.get("RTML_REDIS_URL", REDIS_URL)
    ) as (server, redis_url):
        measure(args, server, redis_url, load_start)


def measure(args: argparse.Namespace, server: str, redis_url: str, load_start: list[float]) -> None:
    name = "rtml_bench_stream_core_state"
    url = create_database(server, name)
    client = redis.Redis.from_url(redis_url)
    store = SpeedStore(client, f"rtmlbench-speed-{os.getpid()}")
    watermark = START + timedelta(days=DAYS, hours=args.watermark_hour)
    w_us, until_us = to_us(watermark), to_us(watermark) + HORIZON_HOURS * HOUR_US
    try:
        began = time.perf_counter()
        transactions, _ = simulated_frames(
            START, DAYS + 1, per_day=args.per_day, customers=args.customers, merchants=args.merchants
        )
        load_sample(url, transactions)
        print(
            f"{'simulate + COPY raw rows':<40} {time.perf_counter() - began:8.2f} s"
            f"  ({len(transactions):,} rows)"
        )

        began = time.perf_counter()
        env = {
            "RTML_DBT_STREAM_AS_OF": watermark.isoformat(),
            "RTML_DBT_STREAM_HORIZON": f"{HORIZON_HOURS} hours",
        }
        run_dbt(
            ["run", "--full-refresh", "--select", "stg_transactions", "customer_stream_snapshot"],
            url,
            extra_env=env,
        )
        print(f"{'dbt: stg_transactions + snapshot':<40} {time.perf_counter() - began:8.2f} s")

        began = time.perf_counter()
        snapshots = list(fetch_snapshots(url))
        fetched = time.perf_counter() - began
        began = time.perf_counter()
        store.push_snapshots(snapshots, w_us, until_us)
        pushed = time.perf_counter() - began
        print(f"{'fetch snapshot rows':<40} {fetched:8.2f} s  ({len(snapshots):,} customers)")
        print(
            f"{'push to Redis (Lua, pipelined)':<40} {pushed:8.2f} s"
            f"  ({len(snapshots) / pushed:,.0f} customers/s)"
        )

        stream = transactions[
            (transactions["event_ts"] >= watermark)
            & (transactions["event_ts"] < watermark + timedelta(hours=2))
        ]
        events = [
            TransactionEvent(
                r.transaction_id, r.customer_id, r.merchant_id, float(r.amount), to_us(r.event_ts)
            )
            for r in stream.itertuples()
        ]
        began = time.perf_counter()
        for start in range(0, len(events), 500):
            store.apply_many(events[start : start + 500], w_us)
        applied = time.perf_counter() - began
        apply_rate = len(events) / applied
        print(
            f"{'apply stream events (pipelines of 500)':<40} {applied:8.2f} s  ({apply_rate:,.0f} events/s)"
        )

        customers = [s.customer_id for s in snapshots]
        pipe = client.pipeline(transaction=False)
        for customer in customers:
            pipe.memory_usage(store.key(customer), samples=0)
        usage = np.array(pipe.execute(), dtype=float)
        packed = np.array([len(pack_snapshot(s)) for s in snapshots], dtype=float)
        known = np.array([sum(len(m) + 1 for m in s.known_merchant_ids) for s in snapshots], dtype=float)
        edges = np.array([len(s.edge_events) for s in snapshots], dtype=float)
        merchants = np.array([len(s.merchant_last_24h) for s in snapshots], dtype=float)
        print(
            f"{'Redis bytes per customer':<40} mean {usage.mean():.0f}  p50 {np.percentile(usage, 50):.0f}  "
            f"p99 {np.percentile(usage, 99):.0f}"
        )
        print(
            f"{'packed snapshot bytes':<40} mean {packed.mean():.0f} (known merchants {known.mean():.0f}), "
            f"edge events {edges.mean():.2f}, merchants 24 h {merchants.mean():.2f}; "
            f"stream events {len(events) / len(customers):.2f} per customer"
        )

        rng = np.random.default_rng(1)
        picks = [events[i] for i in rng.integers(0, len(events), args.reads)]
        samples = np.empty(len(picks))
        for i, e in enumerate(picks):
            t0 = time.perf_counter_ns()
            store.features_at(
                e.customer_id, event_ts_us=e.event_ts_us, merchant_id=e.merchant_id, amount=e.amount
            )
            samples[i] = time.perf_counter_ns() - t0
        p50, p99 = (float(np.percentile(samples, q) / 1e6) for q in (50, 99))
        print(f"{'exact read (features_at)':<40} p50 {p50:.3f} ms  p99 {p99:.3f} ms")
        result = {
            "customers_count": len(customers),
            "rows_count": len(transactions),
            "redis_per_customer_mean_bytes": round(float(usage.mean())),
            "redis_per_customer_p99_bytes": round(float(np.percentile(usage, 99))),
            "redis_for_1m_customers_gib": round(float(usage.mean()) * 1e6 / 2**30, 3),
            "apply_events_per_s": round(apply_rate),
            "snapshot_push_customers_per_s": round(len(snapshots) / pushed),
            "exact_read_p50_ms": round(p50, 3),
            "exact_read_p99_ms": round(p99, 3),
        }
    finally:
        store.purge()
        client.close()
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')
    print(json_line(result, load_start))


if __name__ == "__main__":
    main()
