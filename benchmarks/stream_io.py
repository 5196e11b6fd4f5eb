"""The transaction stream's transport: publishing and landing throughput.

    .venv/bin/python benchmarks/stream_io.py --events 200000

The PostgreSQL and Redis of ``RTML_DATABASE_URL`` / ``RTML_REDIS_URL``, else the machine's; where those
do not answer, embedded ones it starts and stops. Redis: a stream key of its own, deleted at the end.
PostgreSQL: a database of its own, ``rtml_bench_stream_io_<pid>``, on that server; dropped at the end.

The events are the simulator's transactions (validated: what the scorer would publish), generated once.
Timed: (a) ``stream.publish`` in pipelined batches of ``stream_publish_batch``; (b) ``EventPublisher``
in the caller's process (as the scorer ran it before its sidecar): the cost of ``put`` on the caller's
thread, from the first put until the background thread has published everything, and the caller's
process CPU per event (its thread's included); (b') the same through the scoring worker's sidecar
(``rtml.serving.sidecar``, the publisher in a child process): the CPU per event the caller's process
still spends (queueing, pickling into the pipe, reading the child's reports); (c) the lander landing
the whole stream into ``raw.transactions`` (micro-batches of ``stream_lander_batch_events``, each
through the validated loader); (d) a replay of a fifth of the events, all duplicates (looked up,
skipped, counted). The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import psycopg
import redis
from sqlalchemy.engine import make_url

from _machine import json_line, load_average
from _servers import DATABASE_URL, REDIS_URL, servers
from rtml.config import Settings, database_url_for, get_settings
from rtml.serving.sidecar import Sidecar, StreamTarget
from rtml.streaming import replay, stream
from rtml.streaming.events import TransactionEvent
from rtml.streaming.lander import LandCounts, Lander
from rtml.streaming.publisher import EventPublisher

SIM_START = datetime(2026, 11, 1, tzinfo=UTC)


def events_for(settings: Settings, count: int) -> list[TransactionEvent]:
    out: list[TransactionEvent] = []
    start = SIM_START
    invalid: Counter[str] = Counter()
    while len(out) < count:
        tables = replay.simulator_tables(settings, start, start + timedelta(days=1))
        for events in replay.valid_events(tables, settings, invalid, now=start + timedelta(days=2)):
            out.extend(events)
        start += timedelta(days=1)
    return out[:count]


def land_everything(lander: Lander) -> tuple[LandCounts, list[float]]:
    total, seconds = LandCounts(), []
    while True:
        began = time.perf_counter()
        batch = lander.land_once(block_ms=50)
        if not batch.read:
            return total, seconds
        seconds.append(time.perf_counter() - began)
        total.add(batch)


def process_cpu_s() -> float:
    """This process's CPU (all its threads; not its children's)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    args = parser.parse_args()
    load_start = load_average()
    with servers(
        os.environ.get("RTML_DATABASE_URL", DATABASE_URL), os.environ.get("RTML_REDIS_URL", REDIS_URL)
    ) as (server, redis_url):
        measure(args, server, redis_url, load_start)


def measure(args: argparse.Namespace, server: str, redis_url: str, load_start: list[float]) -> None:
    name = f"rtml_bench_stream_io_{os.getpid()}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    database_url = database_url_for(server, name)
    client = redis.Redis.from_url(redis_url)
    key = f"rtml:bench:stream-io:{uuid.uuid4().hex[:8]}"
    settings = get_settings().model_copy(
        update={
            "simulator": get_settings().simulator.model_copy(update={"start": SIM_START}),
            "stream": get_settings().stream.model_copy(update={"key": key}),
            "services": get_settings().services.model_copy(update={"database_url": database_url}),
        }
    )
    retention_s = settings.stream.retention_hours * 3600
    try:
        began = time.perf_counter()
        events = events_for(settings, args.events)
        print(f"{len(events)} events from the simulator in {time.perf_counter() - began:.1f} s")

        batch = settings.stream.publish_batch
        began = time.perf_counter()
        for at in range(0, len(events), batch):
            stream.publish(client, key, events[at : at + batch], retention_s)
        publish_s = time.perf_counter() - began
        print(f"(a) publish, {batch} per round trip: {len(events) / publish_s:,.0f} events/s")

        other = f"{key}:publisher"
        publisher = EventPublisher(
            client, other, retention_s=retention_s, queue_max=len(events) + 1, batch=batch
        )
        cpu, began = process_cpu_s(), time.perf_counter()
        for event in events:
            publisher.put(event)
        put_s = time.perf_counter() - began
        while publisher.published < len(events):
            time.sleep(0.005)
        drained_s = time.perf_counter() - began
        thread_cpu_us = (process_cpu_s() - cpu) / len(events) * 1e6
        publisher.close()
        client.delete(other)
        print(
            f"(b) EventPublisher: put {put_s / len(events) * 1e6:.2f} µs each on the caller's thread; "
            f"all published after {drained_s:.2f} s ({len(events) / drained_s:,.0f} events/s); "
            f"the caller's process CPU {thread_cpu_us:.1f} µs per event"
        )

        target = StreamTarget(redis_url, other, retention_s, queue_max=len(events) + 1, batch=batch)
        sidecar = Sidecar(None, stream=target)
        time.sleep(1)  # the child's start-up is not the events' cost
        cpu, began = process_cpu_s(), time.perf_counter()
        for event in events:
            sidecar.publish(event)
        while sidecar.stream_counts["published"] < len(events):
            time.sleep(0.005)
        sidecar_s = time.perf_counter() - began
        sidecar_cpu_us = (process_cpu_s() - cpu) / len(events) * 1e6
        sidecar.close()
        assert client.xlen(other) == len(events)
        client.delete(other)
        print(
            f"(b') the sidecar: all published after {sidecar_s:.2f} s ({len(events) / sidecar_s:,.0f} "
            f"events/s); the caller's process CPU {sidecar_cpu_us:.1f} µs per event"
        )

        lander = Lander(client, database_url, settings, consumer="bench")
        began = time.perf_counter()
        landed, batch_seconds = land_everything(lander)
        land_s = time.perf_counter() - began
        assert landed.loaded + landed.quarantined == len(events) and landed.duplicates == 0, landed
        p50 = statistics.median(batch_seconds) * 1000
        print(
            f"(c) lander: {landed} in {land_s:.2f} s ({len(events) / land_s:,.0f} events/s; "
            f"batch of {settings.stream.lander_batch_events} p50 {p50:.0f} ms)"
        )

        again = events[: len(events) // 5]
        for at in range(0, len(again), batch):
            stream.publish(client, key, again[at : at + batch], retention_s)
        began = time.perf_counter()
        replayed, _ = land_everything(lander)
        replay_s = time.perf_counter() - began
        assert replayed.duplicates == len(again) and replayed.loaded == 0, replayed
        print(f"(d) replay of {len(again)} events: all duplicates, {len(again) / replay_s:,.0f} events/s")

        figures = {
            "events": len(events),
            "publish_rows_per_s": round(len(events) / publish_s),
            "publisher_put_us": round(put_s / len(events) * 1e6, 2),
            "publisher_rows_per_s": round(len(events) / drained_s),
            "publisher_caller_cpu_us": round(thread_cpu_us, 1),
            "sidecar_rows_per_s": round(len(events) / sidecar_s),
            "sidecar_caller_cpu_us": round(sidecar_cpu_us, 1),
            "lander_rows_per_s": round(len(events) / land_s),
            "lander_batch_p50_ms": round(p50, 1),
            "lander_replay_rows_per_s": round(len(again) / replay_s),
        }
        print(json_line(figures, load_start))
    finally:
        client.delete(key)
        client.close()
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')
        assert make_url(database_url).database == name


if __name__ == "__main__":
    main()
