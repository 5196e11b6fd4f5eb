"""The stream worker (``rtml stream run``, issue 16 items 2, 5, 6): the stream into the speed layer's state.

Real Redis (the session's server). The drawn customer histories of tests/test_streaming_features.py are
published shuffled, with duplicates, batch-era (late) events and malformed entries; whatever the workers
do, the state in Redis must equal the in-process state (``rtml.streaming.state``) for the same events,
every entry acknowledged once and counted by outcome. Exactness of the merged features against dbt is
tests/test_streaming_features.py's; this file is about delivery.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis

from rtml.config import Settings, get_settings
from rtml.stack.processes import Sessions, free_port
from rtml.stream_cli import start_demo_worker
from rtml.streaming import stream
from rtml.streaming.events import TransactionEvent
from rtml.streaming.redis_state import SpeedStore
from rtml.streaming.worker import StateWriteRefused, StreamWorker
from tests.redis_cluster import wait_until
from tests.test_stream_io import client, key, scrape  # noqa: F401 (fixtures)
from tests.test_streaming_features import HOUR_US, W1_US, MemoryBackend, drained, draw_histories

MALFORMED = [{"v": "99", "transaction_id": "future"}, {"v": "1", "transaction_id": "broken"}]


@pytest.fixture(scope="module")
def arrivals() -> list[TransactionEvent]:
    """Every drawn event (a quarter of them before the watermark W1: late), a tenth again (duplicates),
    in a shuffled arrival order."""
    events = [e for h in draw_histories()[:40] for e in h.events]
    rng = random.Random(16)
    out = events + rng.sample(events, k=len(events) // 10)
    rng.shuffle(out)
    return out


@pytest.fixture
def store(client: redis.Redis) -> Iterator[SpeedStore]:  # noqa: F811
    speed = SpeedStore(client, f"rtmltest-worker-{uuid.uuid4().hex[:8]}")
    speed.push_snapshots([], W1_US, W1_US + 3 * HOUR_US)  # the newest snapshot's watermark: W1
    yield speed
    speed.purge()


def worker_settings(key: str, store: SpeedStore, **stream: Any) -> Settings:  # noqa: F811
    """The settings in force with the test's stream and online namespace; ``stream``: StreamSettings."""
    values = {"key": key, "worker_batch_events": 64, "worker_block_ms": 20, "claim_idle_ms": 100}
    settings = get_settings()
    return settings.model_copy(
        update={
            "stream": settings.stream.model_copy(update=values | stream),
            "online": settings.online.model_copy(update={"key_prefix": store.prefix}),
        }
    )


def publish(client: redis.Redis, key: str, arrivals: list[TransactionEvent]) -> int:  # noqa: F811
    """The arrivals with the malformed entries among them; the number of entries."""
    stream.publish(client, key, arrivals[:100], retention_s=3600)
    for fields in MALFORMED:
        client.xadd(key, fields)  # type: ignore[arg-type]
    stream.publish(client, key, arrivals[100:], retention_s=3600)
    return len(arrivals) + len(MALFORMED)


def expected(arrivals: list[TransactionEvent]) -> tuple[MemoryBackend, Counter[str]]:
    """The in-process state of the same arrivals, and the outcomes (they do not depend on the order)."""
    memory = MemoryBackend()
    memory.push({}, W1_US, W1_US + 3 * HOUR_US)
    outcomes = Counter(o.value for o in memory.apply(arrivals))
    outcomes["malformed"] = len(MALFORMED)
    return memory, outcomes


def assert_same_state(store: SpeedStore, memory: MemoryBackend) -> None:
    customers = sorted(memory.states)
    in_redis = {c: s for c, (_, s) in zip(customers, store.read(customers), strict=True)}
    for customer in customers:
        mine, theirs = in_redis[customer], memory.states[customer]
        assert mine is not None, customer
        assert (mine.watermark_us, mine.events) == (theirs.watermark_us, theirs.events), customer


def run_until_drained(client: redis.Redis, key: str, workers: list[StreamWorker]) -> None:  # noqa: F811
    """Workers side by side (threads, as separate processes would be) until the group acknowledged all."""
    stop = threading.Event()
    threads = [threading.Thread(target=w.run, args=(stop,)) for w in workers]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    try:
        while not drained(client, key, workers[0].group):
            assert time.monotonic() < deadline, "the workers did not drain the stream"
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert not any(thread.is_alive() for thread in threads)


def outcome_counts(worker: StreamWorker) -> Counter[str]:
    c = worker.counts
    return Counter(applied=c.applied, duplicate=c.duplicate, late=c.late, malformed=c.malformed)


def test_one_worker_gives_the_in_process_state_and_counts_every_outcome(
    client: redis.Redis,  # noqa: F811
    key: str,  # noqa: F811
    store: SpeedStore,
    arrivals: list[TransactionEvent],
) -> None:
    entries = publish(client, key, arrivals)
    worker = StreamWorker(client, worker_settings(key, store), consumer="only")
    run_until_drained(client, key, [worker])
    memory, outcomes = expected(arrivals)
    assert_same_state(store, memory)
    assert outcome_counts(worker) == outcomes and sum(outcomes.values()) == entries
    assert min(outcomes.values()) >= 2 and outcomes["late"] > 50, outcomes  # not a vacuous pass
    registry = worker.metrics.registry
    for outcome, n in outcomes.items():
        assert registry.get_sample_value("rtml_stream_events_processed_total", {"outcome": outcome}) == n
    assert registry.get_sample_value("rtml_stream_freshness_seconds_count") == outcomes["applied"]
    assert registry.get_sample_value("rtml_stream_batch_seconds_count") == worker.counts.batches
    assert worker.measure_lag() == (0, 0.0)
    # a replay of everything: all duplicates or late, the state unchanged
    stream.publish(client, key, arrivals, retention_s=3600)
    run_until_drained(client, key, [worker])
    assert worker.counts.applied == outcomes["applied"]
    assert_same_state(store, memory)
    # the stream deleted under the worker (a flush, a restore): it makes its group again and goes on
    client.delete(key)
    fresh = [replace(e, transaction_id=f"{e.transaction_id}-new") for e in arrivals[:50]]
    stream.publish(client, key, fresh, retention_s=3600)
    processed = worker.counts.processed
    run_until_drained(client, key, [worker])
    assert worker.counts.processed == processed + 50
    memory.apply(fresh)
    assert_same_state(store, memory)


def test_two_workers_in_one_group_share_the_work_and_give_the_same_state(
    client: redis.Redis,  # noqa: F811
    key: str,  # noqa: F811
    store: SpeedStore,
    arrivals: list[TransactionEvent],
) -> None:
    settings = worker_settings(key, store, worker_batch_events=16)
    workers = [StreamWorker(client, settings, consumer=name) for name in ("a", "b")]
    entries = publish(client, key, arrivals)
    run_until_drained(client, key, workers)
    memory, outcomes = expected(arrivals)
    assert_same_state(store, memory)
    assert outcome_counts(workers[0]) + outcome_counts(workers[1]) == outcomes
    shares = [w.counts.processed for w in workers]
    assert sum(shares) == entries and min(shares) > entries // 10, shares  # both took part


def test_a_worker_killed_mid_batch_loses_nothing_and_counts_nothing_twice(
    client: redis.Redis,  # noqa: F811
    key: str,  # noqa: F811
    store: SpeedStore,
    arrivals: list[TransactionEvent],
) -> None:
    settings = worker_settings(key, store)
    entries = publish(client, key, arrivals)
    StreamWorker(client, settings, consumer="dies")  # the group exists
    # the dying worker read a batch and wrote part of it (its pipeline cut before the XACK)
    batch = stream.read_new(client, key, settings.stream.worker_group, "dies", count=120, block_ms=None)
    parsed = [TransactionEvent.from_fields(e.fields) for e in batch[:50] if e.fields[b"v"] == b"1"]
    written_before = Counter(o.value for o in store.apply_many(parsed, W1_US))
    assert client.xpending(key, settings.stream.worker_group)["pending"] == 120

    survivor = StreamWorker(client, settings, consumer="survives")
    run_until_drained(client, key, [survivor])
    assert survivor.counts.claimed == 120  # after stream_claim_idle_ms, from the dead consumer
    memory, outcomes = expected(arrivals)
    assert_same_state(store, memory)
    assert survivor.counts.processed == entries  # every entry once by the survivor ...
    assert survivor.counts.applied + written_before["applied"] == outcomes["applied"]  # ... each id once
    assert survivor.counts.duplicate == outcomes["duplicate"] + written_before["applied"]


def test_the_demo_starts_rtml_stream_run_which_serves_metrics_and_stops_cleanly_on_sigterm(
    client: redis.Redis,  # noqa: F811
    key: str,  # noqa: F811
    store: SpeedStore,
    redis_url: str,
    arrivals: list[TransactionEvent],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`rtml demo`'s worker (start_demo_worker): a child process of its own; the demo's stop (SIGTERM, as
    on Ctrl-C) ends it cleanly, exit 0 with its summary line."""
    port = free_port()
    for name, value in (("STREAM_KEY", key), ("ONLINE_KEY_PREFIX", store.prefix)):
        monkeypatch.setenv(f"RTML_{name}", value)
    monkeypatch.setenv("RTML_STREAM_WORKER_METRICS_PORT", str(port))
    children = Sessions()
    start_demo_worker(
        get_settings().model_copy(
            update={"stream": get_settings().stream.model_copy(update={"worker_metrics_port": port})}
        ),
        redis_url,
        tmp_path,
        children,
    )
    (proc,) = children.leaders
    log = tmp_path / "stream-worker.log"
    try:
        publish(client, key, arrivals)
        _, outcomes = expected(arrivals)
        # all three outcomes waited for: a batch's entries are acknowledged, then counted one by one
        processed = {
            outcome: ("rtml_stream_events_processed_total", (("outcome", outcome),))
            for outcome in ("applied", "late", "duplicate")
        }
        wanted = {outcome: outcomes[outcome] for outcome in processed}
        deadline, samples = time.monotonic() + 60, {}

        def counted() -> dict[str, float | None]:
            return {outcome: samples.get(sample) for outcome, sample in processed.items()}

        while counted() != wanted or not drained(client, key, "features"):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, (counted(), wanted, log.read_text())
            time.sleep(0.2)
            try:
                samples = scrape(port)
            except OSError:
                continue
        time.sleep(1.2)  # the next lag measurement sees the group caught up
        samples = scrape(port)
        assert samples[("rtml_stream_consumer_lag_events", ())] == 0
        assert samples[("rtml_stream_consumer_lag_seconds", ())] == 0
        began = time.monotonic()
        assert children.stop(5) == []  # none had to be killed
        assert time.monotonic() - began < 3
    finally:
        children.stop(1)
    assert proc.returncode == 0, log.read_text()
    assert log.read_text().splitlines()[-1].startswith("stopped: applied")


# --- Redis Cluster (the fixture: conftest, tests/redis_cluster.py) -----------------------------------------
def test_two_workers_on_a_redis_cluster_give_the_in_process_state(
    redis_cluster: redis.RedisCluster, arrivals: list[TransactionEvent]
) -> None:
    name = f"rtmltest:stream:{uuid.uuid4().hex[:8]}"
    speed = SpeedStore(redis_cluster, f"rtmltest-worker-{uuid.uuid4().hex[:8]}")  # type: ignore[arg-type]
    speed.push_snapshots([], W1_US, W1_US + 3 * HOUR_US)
    # the customers' hashes are spread over the three masters (one slot per customer: the hash tag)
    masters = {redis_cluster.get_node_from_key(speed.key(e.customer_id)).name for e in arrivals}
    assert len(masters) == 3, masters
    # both alive: neither claims the other's batch (a slow host may apply a batch for longer than 100 ms,
    # and a batch applied twice counts its outcomes twice, though the state stays the same)
    settings = worker_settings(name, speed, worker_batch_events=16, claim_idle_ms=60_000)
    workers = [StreamWorker(redis_cluster, settings, consumer=n) for n in ("a", "b")]  # type: ignore[arg-type]
    entries = publish(redis_cluster, name, arrivals)  # type: ignore[arg-type]
    run_until_drained(redis_cluster, name, workers)  # type: ignore[arg-type]
    memory, outcomes = expected(arrivals)
    assert_same_state(speed, memory)
    assert outcome_counts(workers[0]) + outcome_counts(workers[1]) == outcomes
    shares = [w.counts.processed for w in workers]
    assert sum(shares) == entries and min(shares) > 0, shares
    # a worker dead mid-batch: its entries claimed by the other, duplicates where it had written
    stream.publish(redis_cluster, name, arrivals[:40], retention_s=3600)  # type: ignore[arg-type]
    stream.read_new(redis_cluster, name, settings.stream.worker_group, "dies", 40, None)  # type: ignore[arg-type]
    survivor = StreamWorker(redis_cluster, worker_settings(name, speed, worker_batch_events=16), consumer="a")  # type: ignore[arg-type]
    run_until_drained(redis_cluster, name, [survivor])  # type: ignore[arg-type]
    assert survivor.counts.claimed == 40
    assert_same_state(speed, memory)


def test_a_redis_refusing_writes_leaves_the_batch_pending_and_stops_the_worker(
    tmp_path: Path, arrivals: list[TransactionEvent]
) -> None:
    """maxmemory reached (noeviction): the APPLYs are refused, so nothing of the batch is acknowledged; the
    worker logs and raises instead of going on, and once Redis accepts writes again a worker restarted under
    the same name applies the whole batch: nothing lost."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server not found: apt-get install redis-server")
    port = free_port()
    node = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        own = redis.Redis(port=port)
        wait_until(own.ping, "redis answers")
        speed = SpeedStore(own, "rtmltest-oom")
        worker = StreamWorker(own, worker_settings("rtmltest:oom", speed), consumer="w")
        publish(own, "rtmltest:oom", arrivals[:200])
        own.config_set("maxmemory", 1)  # every write that may grow memory is refused from now on
        with pytest.raises(StateWriteRefused, match="Redis refused"):
            worker.process_once(block_ms=10)
        assert worker.counts.processed == 0  # nothing counted as applied
        batch = own.xpending("rtmltest:oom", worker.group)["pending"]
        assert batch == worker.settings.stream.worker_batch_events  # the batch read: none acknowledged
        own.config_set("maxmemory", 0)
        restarted = StreamWorker(own, worker_settings("rtmltest:oom", speed), consumer="w")
        while restarted.process_once(block_ms=10):
            pass
        assert own.xpending("rtmltest:oom", worker.group)["pending"] == 0
        assert restarted.counts.processed == own.xlen("rtmltest:oom")  # the refused batch and the rest, once
        own.close()
    finally:
        node.terminate()
        node.wait(10)


def test_rtml_stream_run_and_status_on_a_redis_cluster(
    redis_cluster: redis.RedisCluster,
    redis_cluster_url: str,
    arrivals: list[TransactionEvent],
    tmp_path: Path,
) -> None:
    """The command itself on a cluster (``RTML_REDIS_CLUSTER``): `rtml stream run` applies what was published
    and stops cleanly; `rtml stream status` reads the group there."""
    name = f"rtmltest:stream:{uuid.uuid4().hex[:8]}"
    speed = SpeedStore(redis_cluster, f"rtmltest-cli-{uuid.uuid4().hex[:8]}")  # type: ignore[arg-type]
    speed.push_snapshots([], W1_US, W1_US + 3 * HOUR_US)
    env = {
        **os.environ,
        "RTML_REDIS_URL": redis_cluster_url,
        "RTML_REDIS_CLUSTER": "true",
        "RTML_STREAM_KEY": name,
        "RTML_ONLINE_KEY_PREFIX": speed.prefix,
        "RTML_STREAM_WORKER_METRICS_PORT": "0",
    }
    rtml = [sys.executable, "-m", "rtml.cli", "stream"]
    entries = publish(redis_cluster, name, arrivals)  # type: ignore[arg-type]
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen([*rtml, "run"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: drained(redis_cluster, name, "features"), "the worker drained the stream", 60)  # type: ignore[arg-type]
        status = subprocess.run(
            [*rtml, "status", "--group", "features"], env=env, capture_output=True, text=True, timeout=60
        )
        assert status.returncode == 0, status.stdout + status.stderr
        found = json.loads(status.stdout)
        assert (found["length"], found["lag"], found["pending"]) == (entries, 0, 0), found
        assert len(found["consumers"]) == 1
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    assert worker.returncode == 0, (tmp_path / "worker.log").read_text()
    memory, _ = expected(arrivals)
    assert_same_state(speed, memory)
