"""Benchmark of the stream worker (`rtml stream run`, issue 16), part 1: throughput and freshness.

1. **Throughput**: ``--backlog`` events (``--customers`` customers, random merchants and amounts, event
   times in the last hour, after the watermark: every one applied) are published to a fresh stream, then
   ONE worker (``StreamWorker.process`` on ``XREADGROUP`` batches of ``stream_worker_batch_events``, as
   ``rtml stream run`` does) drains the backlog: events per second, from the first read to the last
   acknowledgement.
2. **Freshness** at ``--rate`` events/s for ``--seconds``: a publisher in another process appends events
   every 10 ms (pipelined ``XADD``s, as the scorer's publisher does), the worker processes what arrives;
   for each event, the time from its ``XADD`` (the entry id: the Redis server's arrival time, ms) to the
   end of the round trip that wrote it to the state and acknowledged it. p50 / p99 / max.

Usage: ``.venv/bin/python benchmarks/streaming.py [--backlog 100000 --rate 2000 --seconds 30]`` with
``RTML_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``; its own stream key and key prefix, deleted at the
end). Prints its figures and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import time

import numpy as np
import redis

from rtml.config import get_settings
from rtml.streaming import stream
from rtml.streaming.events import HOUR_US, SECOND_US, TransactionEvent
from rtml.streaming.redis_state import SpeedStore
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
            worker.client, worker.key, worker.group, worker.consumer, settings.stream_worker_batch_events, 100
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=2_000.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    redis_url = os.environ.get("RTML_REDIS_URL", "redis://127.0.0.1:6379/0")
    tag = f"rtmlbench-stream-{os.getpid()}"
    settings = get_settings().model_copy(
        update={"stream_key": f"{tag}:transactions", "online_key_prefix": tag, "redis_url": redis_url}
    )
    client = redis.Redis.from_url(redis_url)
    store = SpeedStore(client, tag)
    now_us = int(time.time() * SECOND_US)
    store.push_snapshots([], now_us - HOUR_US, now_us + 2 * HOUR_US)  # every event after the watermark
    results: dict[str, float | int] = {}
    try:
        # 1. throughput on a backlog
        rng = random.Random(16)
        backlog = [
            make_event(n, args.customers, rng, now_us - rng.randrange(HOUR_US - SECOND_US))
            for n in range(args.backlog)
        ]
        for at in range(0, len(backlog), 5_000):
            stream.publish(client, settings.stream_key, backlog[at : at + 5_000], retention_s=3600)
        worker = StreamWorker(client, settings, consumer="bench")
        elapsed, _ = drain(worker, args.backlog, timeout_s=600)
        assert worker.counts.applied == args.backlog, worker.counts
        rate = args.backlog / elapsed
        print(
            f"{'throughput, one worker (backlog)':<40} {rate:10,.0f} events/s  "
            f"({args.backlog:,} events in {elapsed:.2f} s, batches of {settings.stream_worker_batch_events})"
        )
        results |= {"events_per_s": round(rate), "backlog_events": args.backlog}

        # 2. freshness at a steady rate, the publisher in a process of its own
        publisher = multiprocessing.get_context("spawn").Process(
            target=publish_at_rate,
            args=(redis_url, settings.stream_key, args.rate, args.seconds, args.customers),
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
        client.delete(settings.stream_key)
        store.purge()
        client.close()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
