"""Benchmark of the speed layer (issue 16): worker throughput, freshness, parity over a replayed day, /score.

1. **Throughput**: ``--backlog`` events (``--customers`` customers, random merchants and amounts, event
   times in the last hour, after the watermark: every one applied) are published to a fresh stream, then
   ONE worker (``StreamWorker.process`` on ``XREADGROUP`` batches of ``stream_worker_batch_events``, as
   ``rtml stream run`` does) drains the backlog: events per second, from the first read to the last
   acknowledgement.
2. **Freshness** at ``--rate`` events/s for ``--seconds``: a publisher in another process appends events
   every 10 ms (pipelined ``XADD``s, as the scorer's publisher does), the worker processes what arrives;
   for each event, the time from its ``XADD`` (the entry id: the Redis server's arrival time, ms) to the
   end of the round trip that wrote it to the state and acknowledged it. p50 / p99 / max.
3. **Parity over a replayed simulated day** (``replay_day``): the seeded simulator's world
   (``--parity-customers`` 20,000 and ``--parity-per-day`` 100,000 transactions a day, the platform's
   defaults; ``--parity-history-days`` 31 days of history, then the replayed day) loaded through the
   validated loader into a PostgreSQL database of its own; dbt's ``customer_features`` of the day. The day
   is replayed hour by hour as production runs it: at each hour boundary W, dbt's
   ``customer_stream_snapshot`` as of W (horizon ``--horizon-hours``, 2) and the ``online_features``
   asset's pushes; the hour's transactions (the simulator's rows validation accepts, as ``rtml stream
   publish`` sends them) are read at their times (``OnlineStore.read_many(pairs, at=...)``, the scorer's
   read), each before its own event is published to a stream and applied by a ``StreamWorker``, and
   every customer feature served is compared with dbt's row of the same ``transaction_id`` (exactly; NaN
   for NULL). Mismatches (target 0) are counted and the first ``--show`` printed.
   ``--watermark-every-hours N`` moves the watermark every N hours (then ``--horizon-hours`` must be at
   least N) to save dbt runs.
4. **/score p99** at 100 requests/s with the speed layer merged into reads vs the same service without it
   (target at most 1.1 x): ``benchmarks/speed_read.py``'s measurement (its options as ``--serving-*``).
   ``--skip-serving`` leaves it out (and ``--skip-parity`` the replay).

Usage: ``.venv/bin/python benchmarks/streaming.py [--backlog 100000 --rate 2000 --seconds 30]``; the
PostgreSQL of ``--database-url`` (a server URL) and the Redis of ``--redis-url`` (defaults:
``RTML_DATABASE_URL`` / ``RTML_REDIS_URL``, else the machine's; where those do not answer, embedded ones it
starts and stops); databases, stream keys and key prefixes of its own, removed at the end.
Takes about 18 minutes with the defaults on 2 cores (the replay's 24 dbt snapshot builds over 3.2M rows
about 8 of them; ``--parity-customers 2000 --parity-per-day 10000`` makes the day smaller).
Prints its figures and ends with one JSON line: ``events_per_s``, ``freshness_p50_ms`` /
``freshness_p99_ms``, ``parity_mismatches`` / ``parity_transactions``, ``score_p99_on_ms`` /
``score_p99_off_ms`` / ``score_p99_ratio``, the load averages, and ``targets_met`` per figure.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import redis
from psycopg.rows import dict_row

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed_read
from _machine import json_line, load_average
from _servers import DATABASE_URL, REDIS_URL, servers
from _world import drop_database
from rtml.config import OnlineSettings, ServicesSettings, Settings, SimulatorSettings, get_settings
from rtml.features.dbt import run_dbt
from rtml.features.feature_registry import get_registry
from rtml.features.online import OnlineStore
from rtml.features.online.reader import OnlineFeatures, same_value
from rtml.features.sample_data import create_database, load_simulated
from rtml.ingest.tables import ensure_tables
from rtml.streaming import stream
from rtml.streaming.events import HOUR_US, SECOND_US, TransactionEvent, from_us, to_us
from rtml.streaming.features import FEATURE_COLUMNS
from rtml.streaming.redis_state import SpeedStore
from rtml.streaming.replay import simulator_tables, valid_events
from rtml.streaming.worker import StreamWorker


def make_event(n: int, customers: int, rng: random.Random, ts_us: int) -> TransactionEvent:
    return TransactionEvent(
        transaction_id=f"b{os.getpid()}-{n:09d}",
        customer_id=f"c{rng.randrange(customers):06d}",
        merchant_id=f"m{rng.randrange(2_000):05d}",
        amount=round(rng.lognormvariate(3.5, 1.0), 2) or 0.01,
        event_ts_us=ts_us,
        merchant_category="grocery",
        currency="EUR",
        channel="pos",
        country="DE",
    )


def publish_at_rate(redis_url: str, key: str, rate: float, seconds: float, customers: int) -> None:
    """A publisher process: ``rate`` events/s for ``seconds``, a batch every 10 ms, event time now."""
    client = redis.Redis.from_url(redis_url)
    rng = random.Random(7)
    began, sent, tick, total = time.monotonic(), 0, 0.01, int(rate * seconds)
    while sent < total:
        elapsed = time.monotonic() - began
        due = min(total, int(elapsed * rate)) - sent
        if due > 0:
            now_us = int(time.time() * SECOND_US)
            events = [make_event(sent + i, customers, rng, now_us) for i in range(due)]
            stream.publish(client, key, events, retention_s=3600)
            sent += due
        time.sleep(max(0.0, began + (int(elapsed / tick) + 1) * tick - time.monotonic()))
    client.close()


def drain(worker: StreamWorker, until: int, timeout_s: float) -> tuple[float, list[float]]:
    """Process until ``until`` entries were processed: (seconds from the first read that returned entries,
    XADD-to-written times of every entry in seconds)."""
    settings = worker.settings
    freshness: list[float] = []
    started: float | None = None
    deadline = time.monotonic() + timeout_s
    while worker.counts.processed < until:
        if time.monotonic() > deadline:
            raise TimeoutError(f"processed {worker.counts.processed} of {until}")
        entries = stream.read_new(
            worker.client, worker.key, worker.group, worker.consumer, settings.stream.worker_batch_events, 100
        )
        if not entries:
            continue
        if started is None:
            started = time.perf_counter()
        worker.process(entries)
        written_ms = time.time() * 1000
        freshness += [(written_ms - int(e.id.split("-")[0])) / 1000 for e in entries]
    assert started is not None
    return time.perf_counter() - started, freshness


# --- 3. parity over a replayed simulated day --------------------------------------------------------------
PARITY_START = datetime(2026, 10, 1, tzinfo=UTC)


@dataclass
class Parity:
    """What the replay compared."""

    transactions: int = 0
    mismatches: int = 0
    """Transactions whose served features differ from dbt's row in any column (or could not be merged,
    or have no dbt row)."""
    mismatched_values: int = 0
    not_merged: Counter[str] = field(default_factory=Counter)
    missing_dbt_rows: int = 0
    replayed: set[str] = field(default_factory=set)
    outcomes: Counter[str] = field(default_factory=Counter)
    details: list[str] = field(default_factory=list)
    reads: int = 0
    ties: int = 0
    """Transactions at the same instant as an earlier-listed one of the same customer (excluded from each
    other's windows)."""
    dbt_seconds: list[float] = field(default_factory=list)
    push_seconds: list[float] = field(default_factory=list)


def dbt_or_exit(args: list[str], url: str, env: dict[str, str] | None = None) -> float:
    began = time.perf_counter()
    proc = run_dbt(args, url, check=False, extra_env=env)
    if proc.returncode != 0:
        raise SystemExit(f"dbt {' '.join(args)} failed:\n{proc.stdout[-5000:]}")
    return time.perf_counter() - began


def build_parity_world(
    url: str, settings: Settings, day: datetime
) -> tuple[dict[str, dict[str, Any]], float]:
    """The simulator's world from ``PARITY_START`` to the end of ``day`` through the validated loader; dbt's
    ``customer_features`` rows of ``day`` (the hourly runs' incremental path over the day's window) and
    the batch views' tables (``*_latest``) the online store pushes. Returns dbt's rows by id, seconds."""
    began = time.perf_counter()
    end = day + timedelta(days=1)
    with psycopg.connect(url) as conn:
        ensure_tables(conn)
    # the incremental models exist (empty) first, so the day's features are built by the hourly runs' path:
    # only the window's rows, each aggregating its customer's history (not every row of the month)
    dbt_or_exit(["run", "--full-refresh", "--select", "stg_transactions", "customer_features"], url)
    load_simulated(url, settings, PARITY_START, end, labels_until=end)
    loaded = time.perf_counter() - began
    select = ["stg_transactions", "stg_labels", "+customer_features_latest", "+merchant_features_latest"]
    dbt_or_exit(["run", "--full-refresh", "--select", *select, "--exclude", "customer_features"], url)
    window = {"RTML_DBT_MIN_TS": day.isoformat(), "RTML_DBT_MAX_TS": end.isoformat()}
    dbt_or_exit(["run", "--select", "customer_features"], url, window)
    with psycopg.connect(url) as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "select * from features.customer_features where event_ts >= %s and event_ts < %s", (day, end)
        )
        dbt = {row["transaction_id"]: row for row in cur}
        rows = conn.execute("select count(*) from raw.transactions").fetchone()
    print(
        f"{'parity world':<40} {rows[0] if rows else 0:,} rows loaded in {loaded:.0f} s, dbt's features "
        f"of the day ({len(dbt):,} rows) in {time.perf_counter() - began - loaded:.0f} s",
        flush=True,
    )
    return dbt, time.perf_counter() - began


def served_vs_dbt(
    event: TransactionEvent, served: OnlineFeatures, row: dict[str, Any] | None, watermark_us: int
) -> list[str]:
    """What differs between the features served for ``event`` and dbt's row (empty: equal), compared as
    the tests do (``tests/test_streaming_features.py``: the typed floats the scorer uses, NaN for NULL)."""
    where = (
        f"{event.transaction_id} ({event.customer_id} at {event.event_ts.isoformat()}, "
        f"W {from_us(watermark_us):%H:%M})"
    )
    if row is None:
        return [f"{where}: no customer_features row"]
    if served.speed_layer != "merged":
        return [f"{where}: read {served.speed_layer}, not merged"]
    out = []
    for column in FEATURE_COLUMNS:
        want = row[column]
        want = math.nan if want is None else want if isinstance(want, bool | int) else float(want)
        if not same_value(served.customer[column], want):
            out.append(f"{where} {column}: served {served.customer[column]!r}, dbt {want!r}")
    return out


def replay_day(
    url: str,
    redis_url: str,
    settings: Settings,
    day: datetime,
    dbt: dict[str, dict[str, Any]],
    every_hours: int,
    horizon_hours: int,
    show: int,
) -> Parity:
    """Replay ``day`` as production runs it: at each watermark W (every ``every_hours`` hours from 00:00)
    dbt's ``customer_stream_snapshot`` as of W and the online store's push (batch views, then the speed
    layer's snapshot: ``online_features``); the simulator's transactions of [W, W + every_hours) as the
    stream carries them (``rtml stream publish``: the rows validation accepts), published in event-time
    order and applied by a ``StreamWorker``; each transaction's features are read at its time
    (``OnlineStore.read_many(..., at=...)``, as the scorer does) BEFORE its event is published, against a
    state holding every event strictly before it (a group of transactions is read together only if none
    of its customers has two different times in it: ties at one instant are excluded from each other's
    windows, by dbt and the merge alike), and compared with dbt's row of the same ``transaction_id``."""
    tag = f"rtmlbench-parity-{os.getpid()}"
    worker_settings = get_settings().model_copy(
        update={
            "stream": get_settings().stream.model_copy(update={"key": f"{tag}:transactions"}),
            "online": get_settings().online.model_copy(update={"key_prefix": tag}),
            "services": get_settings().services.model_copy(update={"redis_url": redis_url}),
        }
    )
    client = redis.Redis.from_url(redis_url)
    store = OnlineStore(
        redis_url,
        online=OnlineSettings(
            ttl_seconds=0, key_prefix=tag, speed_layer_enabled=True, redis_socket_timeout_ms=10_000
        ),
    )
    worker = StreamWorker(client, worker_settings, consumer="parity")
    result = Parity()
    invalid: Counter[str] = Counter()
    now = day + timedelta(days=2)  # validation's clock: the day's rows are all in the past

    def read_then_apply(group: list[TransactionEvent], watermark_us: int) -> None:
        if not group:
            return
        served = store.read_many(
            [(e.customer_id, e.merchant_id) for e in group], at=[(e.event_ts, e.amount) for e in group]
        )
        result.reads += 1
        for event, features in zip(group, served, strict=True):
            row = dbt.get(event.transaction_id)
            result.replayed.add(event.transaction_id)
            result.missing_dbt_rows += row is None
            if features.speed_layer != "merged":
                result.not_merged[features.speed_layer] += 1
            differs = served_vs_dbt(event, features, row, watermark_us)
            result.transactions += 1
            if differs:
                result.mismatches += 1
                result.mismatched_values += len(differs)
                if len(result.details) < show:
                    result.details.extend(differs[: show - len(result.details)])
        expected = worker.counts.processed + len(group)
        stream.publish(client, worker_settings.stream.key, group, retention_s=3600)
        while worker.counts.processed < expected:
            worker.process_once(block_ms=1_000)

    try:
        watermark = day
        first = True
        while watermark < day + timedelta(days=1):
            step_end = min(watermark + timedelta(hours=every_hours), day + timedelta(days=1))
            env = {
                "RTML_DBT_STREAM_AS_OF": watermark.isoformat(),
                "RTML_DBT_STREAM_HORIZON": f"{horizon_hours} hours",
            }
            result.dbt_seconds.append(dbt_or_exit(["run", "--select", "customer_stream_snapshot"], url, env))
            began = time.perf_counter()
            store.push_from_postgres(url, full=first)
            pushed = store.push_speed_snapshot(url)
            result.push_seconds.append(time.perf_counter() - began)
            first = False
            assert pushed is not None and pushed.as_of == watermark and not pushed.skipped, pushed
            w_us = to_us(watermark)
            events = sorted(
                (
                    e
                    for t in valid_events(
                        simulator_tables(settings, watermark, step_end), settings, invalid, now
                    )
                    for e in t
                ),
                key=lambda e: (e.event_ts_us, e.transaction_id),
            )
            group: list[TransactionEvent] = []
            times: dict[str, int] = {}
            for event in events:
                if times.get(event.customer_id, event.event_ts_us) != event.event_ts_us or len(group) >= 500:
                    read_then_apply(group, w_us)
                    group, times = [], {}
                result.ties += event.customer_id in times
                group.append(event)
                times[event.customer_id] = event.event_ts_us
            read_then_apply(group, w_us)
            print(
                f"  W {watermark:%H:%M}: snapshot {result.dbt_seconds[-1]:5.1f} s (dbt), push "
                f"{result.push_seconds[-1]:4.1f} s ({pushed.customers:,} customers), {len(events):,} "
                f"transactions, mismatches so far {result.mismatches}",
                flush=True,
            )
            watermark = step_end
        result.outcomes.update(
            {o: getattr(worker.counts, o) for o in ("applied", "duplicate", "late", "malformed")}
        )
        if invalid:
            print(f"  not published (validation): {dict(invalid)}")
    finally:
        client.delete(worker_settings.stream.key)
        store.purge()
        store.close()
        client.close()
    return result


def parity(args: argparse.Namespace) -> dict[str, Any]:
    day = PARITY_START + timedelta(days=args.parity_history_days)
    name = f"rtml_bench_streaming_parity_{os.getpid()}"
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["DBT_TARGET_PATH"] = str(Path(tmp) / "dbt-target")  # the project's target/ stays as it is
        get_registry.cache_clear()  # the online store reads this target's manifest
        settings = Settings(
            services=ServicesSettings(data_dir=Path(tmp) / "data"),
            simulator=SimulatorSettings(
                start=PARITY_START, customers=args.parity_customers, transactions_per_day=args.parity_per_day
            ),
        )
        url = create_database(args.database_url, name)
        try:
            dbt, world_s = build_parity_world(url, settings, day)
            began = time.perf_counter()
            result = replay_day(
                url,
                args.redis_url,
                settings,
                day,
                dbt,
                args.watermark_every_hours,
                args.horizon_hours,
                args.show,
            )
            replay_s = time.perf_counter() - began
        finally:
            drop_database(args.database_url, name)
            get_registry.cache_clear()
    print(
        f"{'parity over a replayed day':<40} {result.mismatches:,} mismatched of {result.transactions:,} "
        f"transactions ({result.mismatched_values} values; not merged {dict(result.not_merged)}; no dbt row "
        f"{result.missing_dbt_rows}); worker outcomes {dict(result.outcomes)}; world {world_s:.0f} s, "
        f"replay {replay_s:.0f} s (snapshot dbt runs {sum(result.dbt_seconds):.0f} s)"
    )
    for line in result.details:
        print(f"  mismatch: {line}")
    return {
        "parity_mismatches": result.mismatches,
        "parity_mismatched_values": result.mismatched_values,
        "parity_transactions": result.transactions,
        "parity_ties": result.ties,
        "parity_dbt_rows": len(dbt),
        "parity_dbt_rows_not_replayed": len(dbt.keys() - result.replayed),
        "parity_customers": args.parity_customers,
        "parity_transactions_per_day": args.parity_per_day,
        "parity_watermarks": len(result.dbt_seconds),
        "parity_watermark_every_hours": args.watermark_every_hours,
        "parity_horizon_hours": args.horizon_hours,
        "parity_worker_outcomes": dict(result.outcomes),
        "parity_world_seconds": round(world_s, 1),
        "parity_replay_seconds": round(replay_s, 1),
        "parity_snapshot_dbt_seconds_mean": round(sum(result.dbt_seconds) / len(result.dbt_seconds), 2),
    }


def worker_figures(args: argparse.Namespace) -> dict[str, Any]:
    """Parts 1 and 2: one worker's throughput on a backlog, freshness at a steady rate."""
    redis_url = args.redis_url
    tag = f"rtmlbench-stream-{os.getpid()}"
    settings = get_settings().model_copy(
        update={
            "stream": get_settings().stream.model_copy(update={"key": f"{tag}:transactions"}),
            "online": get_settings().online.model_copy(update={"key_prefix": tag}),
            "services": get_settings().services.model_copy(update={"redis_url": redis_url}),
        }
    )
    client = redis.Redis.from_url(redis_url)
    store = SpeedStore(client, tag)
    now_us = int(time.time() * SECOND_US)
    store.push_snapshots([], now_us - HOUR_US, now_us + 2 * HOUR_US)  # every event after the watermark
    results: dict[str, Any] = {}
    try:
        # 1. throughput on a backlog
        rng = random.Random(16)
        backlog = [
            make_event(n, args.customers, rng, now_us - rng.randrange(HOUR_US - SECOND_US))
            for n in range(args.backlog)
        ]
        for at in range(0, len(backlog), 5_000):
            stream.publish(client, settings.stream.key, backlog[at : at + 5_000], retention_s=3600)
        worker = StreamWorker(client, settings, consumer="bench")
        elapsed, _ = drain(worker, args.backlog, timeout_s=600)
        assert worker.counts.applied == args.backlog, worker.counts
        rate = args.backlog / elapsed
        print(
            f"{'throughput, one worker (backlog)':<40} {rate:10,.0f} events/s  "
            f"({args.backlog:,} events in {elapsed:.2f} s, batches of {settings.stream.worker_batch_events})"
        )
        results |= {"events_per_s": round(rate), "backlog_events": args.backlog}

        # 2. freshness at a steady rate, the publisher in a process of its own
        publisher = multiprocessing.get_context("spawn").Process(
            target=publish_at_rate,
            args=(redis_url, settings.stream.key, args.rate, args.seconds, args.customers),
        )
        publisher.start()
        expected = args.backlog + int(args.seconds * args.rate)
        _, freshness = drain(worker, expected, timeout_s=args.seconds + 120)
        publisher.join(30)
        steady = np.array(freshness) * 1000
        p50, p99, worst = (float(np.percentile(steady, q)) for q in (50, 99, 100))
        print(
            f"{'freshness XADD -> state written':<40} p50 {p50:6.1f} ms  p99 {p99:6.1f} ms  max "
            f"{worst:6.1f} ms  ({len(steady):,} events at {args.rate:,.0f}/s for {args.seconds:.0f} s)"
        )
        results |= {
            "freshness_p50_ms": round(p50, 1),
            "freshness_p99_ms": round(p99, 1),
            "freshness_max_ms": round(worst, 1),
            "freshness_rate_events_per_s": args.rate,
            "freshness_events": len(steady),
        }
    finally:
        client.delete(settings.stream.key)
        store.purge()
        client.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=os.environ.get("RTML_DATABASE_URL", DATABASE_URL))
    parser.add_argument("--redis-url", default=os.environ.get("RTML_REDIS_URL", REDIS_URL))
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--customers", type=int, default=20_000, help="customers of the worker's events")
    parser.add_argument("--rate", type=float, default=2_000.0, help="events/s of the freshness run")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the freshness run")
    parser.add_argument("--skip-parity", action="store_true")
    parser.add_argument("--parity-customers", type=int, default=20_000)
    parser.add_argument("--parity-per-day", type=int, default=100_000, help="transactions a day")
    parser.add_argument("--parity-history-days", type=int, default=31, help="days before the replayed one")
    parser.add_argument("--watermark-every-hours", type=int, default=1)
    parser.add_argument("--horizon-hours", type=int, default=2)
    parser.add_argument("--show", type=int, default=10, help="mismatches printed")
    parser.add_argument("--skip-serving", action="store_true")
    parser.add_argument("--serving-rate", type=float, default=100, help="requests/s per server")
    parser.add_argument("--serving-seconds", type=float, default=60, help="per server, over all rounds")
    parser.add_argument("--serving-rounds", type=int, default=30)
    parser.add_argument("--serving-customer", choices=("busiest", "median"), default="busiest")
    args = parser.parse_args()
    if args.horizon_hours < args.watermark_every_hours:
        parser.error("--horizon-hours must cover --watermark-every-hours")

    load_start = load_average()
    with servers(args.database_url, args.redis_url) as (database_url, redis_url):
        args.database_url, args.redis_url = database_url, redis_url
        measure(args, load_start)


def measure(args: argparse.Namespace, load_start: list[float]) -> None:
    results: dict[str, Any] = {"benchmark": "streaming"}
    results |= worker_figures(args)
    if not args.skip_parity:
        results |= parity(args)
    if not args.skip_serving:
        serving_load = load_average()
        served = speed_read.measure(
            database_url=args.database_url,
            redis_url=args.redis_url,
            rate=args.serving_rate,
            seconds=args.serving_seconds,
            rounds=args.serving_rounds,
            customer=args.serving_customer,
        )
        print(
            f"{'/score p99, speed layer on / off':<40} {served['speed_on_p99_ms']:.2f} / "
            f"{served['speed_off_p99_ms']:.2f} ms = {served['p99_ratio']:.3f} x  (p50 "
            f"{served['speed_on_p50_ms']:.2f} / {served['speed_off_p50_ms']:.2f} ms, {args.serving_rate:.0f} "
            f"requests/s, {served['customer']} customer: {served['customer_txn_count_30d']} transactions "
            f"in 30 days; load {serving_load[0]} -> {load_average()[0]})"
        )
        results |= {
            "score_p99_on_ms": served["speed_on_p99_ms"],
            "score_p99_off_ms": served["speed_off_p99_ms"],
            "score_p99_ratio": served["p99_ratio"],
            "score_p50_on_ms": served["speed_on_p50_ms"],
            "score_p50_off_ms": served["speed_off_p50_ms"],
            "score_errors": served["speed_on_errors"] + served["speed_off_errors"],
            "score_rate_rps": args.serving_rate,
            "score_seconds_per_server": args.serving_seconds,
            "score_customer": served["customer"],
            "score_customer_txn_count_30d": served["customer_txn_count_30d"],
        }
    results["targets_met"] = {
        "events_per_s": results["events_per_s"] >= 10_000,
        "freshness_p99_ms": results["freshness_p99_ms"] <= 1_000,
        "parity_mismatches": None if args.skip_parity else results["parity_mismatches"] == 0,
        "score_p99_ratio": None
        if args.skip_serving
        else results["score_p99_ratio"] <= 1.1 and results["score_errors"] == 0,
    }
    print(json_line(results, load_start))


if __name__ == "__main__":
    main()
