"""Benchmark of the online feature store (Redis).

1. bulk push: a full push of N synthetic customers and M merchants (string tables shaped like the
   ``*_latest`` tables), timed end to end (digests, protocol encoding, sending, replies, switch,
   deletion of the previous namespace); then an incremental push where 1 % of the customers changed;
2. online lookup of 1 customer + 1 merchant (``OnlineStore.read``, one EVALSHA round trip), and of
   100 pairs (``read_many``), p50/p99 over many sequential calls; next to it the bare redis-py
   baseline: a pipelined HGETALL of two hashes.

Usage: ``.venv/bin/python benchmarks/online.py [--customers 1000000 --merchants 100000]`` with
``RTML_REDIS_URL`` pointing at a server (default ``redis://127.0.0.1:6379/0``; where none answers, an
embedded one it starts and stops). It writes under its own
key prefix and deletes it at the end. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from _machine import json_line, load_average
from _servers import REDIS_URL, servers
from rtml.config import OnlineSettings
from rtml.features.feature_registry import get_registry
from rtml.features.online import OnlineStore
from rtml.features.online.schema import OnlineView

AS_OF_US = 1_764_547_200_000_000  # 2025-12-01 UTC, in microseconds


def synthetic_table(view: OnlineView, ids: np.ndarray, rng: np.random.Generator) -> pa.Table:
    """Values rendered like PostgreSQL renders them: integers, 2-decimal sums, full doubles, µs epochs."""
    n = len(ids)
    columns: dict[str, pa.Array] = {view.entity_key: pa.array(ids)}
    for field in view.fields:
        if field.kind == "int64":
            values = pa.array(rng.integers(0, 200, n))
        elif field.kind == "float64" and "_sum_" in field.name:
            values = pa.array(np.round(rng.gamma(2.0, 150.0, n), 2))
        elif field.kind == "float64":
            values = pa.array(rng.random(n) * 300)
        elif field.kind == "timestamp":
            values = pa.array(AS_OF_US - rng.integers(0, 30 * 86_400 * 1_000_000, n))
        else:  # string_set: a handful of merchants per customer
            merchants = rng.integers(0, 100_000, (n, 5))
            parts = [
                pc.binary_join_element_wise("m", pc.cast(pa.array(merchants[:, k]), pa.string()), "")
                for k in range(5)
            ]
            columns[field.name] = pc.binary_join_element_wise(*parts, "\x1f")
            continue
        columns[field.name] = pc.cast(values, pa.string())
    return pa.table(columns)


def percentiles(call: Callable[[], object], repeat: int, warmup: int = 500) -> tuple[float, float]:
    for _ in range(warmup):
        call()
    samples = np.empty(repeat)
    for i in range(repeat):
        began = time.perf_counter_ns()
        call()
        samples[i] = time.perf_counter_ns() - began
    return float(np.percentile(samples, 50) / 1e6), float(np.percentile(samples, 99) / 1e6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--merchants", type=int, default=100_000)
    parser.add_argument("--lookups", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3, help="full pushes (the best one counts)")
    parser.add_argument("--ttl", type=int, default=7 * 86_400, help="key TTL in seconds (0: none)")
    args = parser.parse_args()
    load_start = load_average()
    with servers(redis_url=os.environ.get("RTML_REDIS_URL", REDIS_URL)) as (_, url):
        measure(args, url, load_start)


def measure(args: argparse.Namespace, url: str, load_start: list[float]) -> None:
    store = OnlineStore(
        url, get_registry(), online=OnlineSettings(ttl_seconds=args.ttl, key_prefix=f"rtmlbench{os.getpid()}")
    )
    rng = np.random.default_rng(7)
    customer_ids = np.char.add("c", np.arange(args.customers).astype(str)).astype(object)
    merchant_ids = np.char.add("m", np.arange(args.merchants).astype(str)).astype(object)
    tables = {
        "customer_features": synthetic_table(store.customer_view, customer_ids, rng),
        "merchant_features": synthetic_table(store.merchant_view, merchant_ids, rng),
    }
    entities = args.customers + args.merchants
    try:
        runs = []
        for attempt in range(args.repeat):
            began = time.perf_counter()
            result = store.push_tables(tables, full=True)
            seconds = time.perf_counter() - began
            write = seconds - result.cleanup_seconds
            runs.append((seconds, write, result.cleanup_seconds))
            print(
                f"full push #{attempt + 1}: {entities:,} entities, {result.bytes_sent / 1e6:.0f} MB: "
                f"written and switched in {write:.2f} s = {entities / write:,.0f}/s; "
                f"old namespace deleted in {result.cleanup_seconds:.2f} s; total {seconds:.2f} s"
            )
        full_seconds = min(run[0] for run in runs)
        write_seconds = min(run[1] for run in runs)

        customers = tables["customer_features"]
        changed = rng.random(customers.num_rows) < 0.01
        bumped = pc.if_else(pa.array(changed), "999", customers.column("txn_count_1h"))
        customers = customers.set_column(
            customers.schema.get_field_index("txn_count_1h"), "txn_count_1h", bumped
        )
        began = time.perf_counter()
        incremental = store.push_tables({**tables, "customer_features": customers})
        incremental_seconds = time.perf_counter() - began
        written = incremental.entities_written
        print(
            f"incremental push: {written:,} of {entities:,} changed, {incremental_seconds:.2f} s "
            f"= {entities / incremental_seconds:,.0f} entities checked/s"
        )

        def pick() -> tuple[str, str]:
            return customer_ids[rng.integers(args.customers)], merchant_ids[rng.integers(args.merchants)]

        one_p50, one_p99 = percentiles(lambda: store.read(*pick()), args.lookups)
        feats = store.read(*pick())
        assert not feats.missing, feats
        batch_p50, batch_p99 = percentiles(
            lambda: store.read_many([pick() for _ in range(100)]), args.lookups // 10, 50
        )
        namespaces = store.current_namespaces()
        raw = store.client

        def bare_pipeline() -> object:
            customer, merchant = pick()
            pipe = raw.pipeline(transaction=False)
            pipe.hgetall(f"{namespaces['customer_features']}:e:{customer}")
            pipe.hgetall(f"{namespaces['merchant_features']}:e:{merchant}")
            return pipe.execute()

        base_p50, base_p99 = percentiles(bare_pipeline, args.lookups)
        print(f"lookup 1 customer + 1 merchant: p50 {one_p50:.3f} ms, p99 {one_p99:.3f} ms")
        print(f"lookup 100 pairs (read_many):   p50 {batch_p50:.3f} ms, p99 {batch_p99:.3f} ms")
        print(f"bare redis-py pipelined HGETALL x2 (no typing): p50 {base_p50:.3f} ms, p99 {base_p99:.3f} ms")
        summary = {
            "customers": args.customers,
            "merchants": args.merchants,
            "ttl_s": args.ttl,
            "push_write_s": round(write_seconds, 3),
            "push_entities_per_s": round(entities / write_seconds),
            "push_with_cleanup_s": round(full_seconds, 3),
            "push_with_cleanup_entities_per_s": round(entities / full_seconds),
            "push_bytes_per_entity": round(result.bytes_sent / entities, 1),
            "push_incremental_s": round(incremental_seconds, 3),
            "push_incremental_written": written,
            "lookup_p50_ms": round(one_p50, 4),
            "lookup_p99_ms": round(one_p99, 4),
            "lookup_100_p50_ms": round(batch_p50, 4),
            "lookup_100_p99_ms": round(batch_p99, 4),
            "baseline_pipeline_p50_ms": round(base_p50, 4),
            "baseline_pipeline_p99_ms": round(base_p99, 4),
        }
    finally:
        store.purge()
        store.close()
    print(json_line(summary, load_start))


if __name__ == "__main__":
    main()
