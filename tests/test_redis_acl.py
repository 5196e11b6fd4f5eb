"""Redis least privilege (issue 19): the compose stack's Redis ACL users, on a real ``redis-server`` started
with the very arguments of ``docker-compose.yaml``'s ``redis`` service.

The scorer's user reads the online store (the read scripts, with the speed layer merged) and appends to
the transaction stream, and nothing else; the stream worker's user applies the stream to the speed layer
and cannot touch the online store's views. Both run the platform's own code paths (``OnlineStore``,
``EventPublisher``, ``StreamWorker``), so a command the code needs and the ACL lacks fails here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
import redis
import yaml

from rtml.config import OnlineSettings, get_settings
from rtml.features.online import OnlineStore
from rtml.stack.processes import free_port
from rtml.streaming.events import HOUR_US, TransactionEvent, from_us
from rtml.streaming.publisher import EventPublisher
from rtml.streaming.redis_state import SpeedStore
from rtml.streaming.snapshot import BatchSnapshot
from rtml.streaming.worker import StreamWorker

ROOT = Path(__file__).resolve().parents[1]
PASSWORDS = {
    "REDIS_PASSWORD": "platform-pw",
    "REDIS_SCORER_PASSWORD": "scorer-pw",
    "REDIS_STREAM_WORKER_PASSWORD": "worker-pw",
}
W_US = 1_790_000_000 * 1_000_000  # the speed layer's watermark in this world


def compose_redis_arguments() -> list[str]:
    """The redis service's command, its ${...} filled in as compose would (test passwords, defaults)."""
    command = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())["services"]["redis"]["command"]

    def fill(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(3)
        return PASSWORDS.get(name) or default or ""

    return [re.sub(r"\$\{(\w+)(:[-?]([^}]*))?\}", fill, part) for part in command]


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server not found: apt-get install redis-server")
    command = compose_redis_arguments()
    assert command[0] == "redis-server"
    port = free_port()
    home = tmp_path_factory.mktemp("redis-acl")
    process = subprocess.Popen(
        [server, *command[1:], "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(home)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    client = redis.Redis(port=port, password=PASSWORDS["REDIS_PASSWORD"])
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.exceptions.ConnectionError:
            assert process.poll() is None, "redis-server refused the compose arguments"
            assert time.monotonic() < deadline, "redis-server did not answer"
            time.sleep(0.05)
    try:
        yield port
    finally:
        process.terminate()
        process.wait(10)


def url(port: int, user: str | None, password: str) -> str:
    return f"redis://{user or ''}:{password}@127.0.0.1:{port}/0"


def views_world(store: OnlineStore) -> dict[str, pa.Table]:
    """One customer and one merchant per view, every field as text (``push_tables``' input)."""

    def table(view_name: str, entity: str) -> pa.Table:
        view = store.views[view_name]
        columns = {view.entity_key: pa.array([entity])}
        for field in view.fields:
            value = {"int64": "3", "float64": "1.5", "timestamp": str(W_US - HOUR_US)}.get(field.kind, "")
            columns[field.name] = pa.array([value], pa.string())
        return pa.table(columns)

    return {
        "customer_features": table("customer_features", "c1"),
        "merchant_features": table("merchant_features", "m1"),
    }


def test_each_service_user_can_do_its_work_and_nothing_more(acl_redis: int) -> None:
    settings = get_settings()
    assert settings.online.key_prefix == "rtml" and settings.stream.key.startswith(
        "rtml:"
    )  # the ACL's patterns
    platform_url = url(acl_redis, None, PASSWORDS["REDIS_PASSWORD"])
    scorer_url = url(acl_redis, "scorer", PASSWORDS["REDIS_SCORER_PASSWORD"])
    worker_url = url(acl_redis, "stream-worker", PASSWORDS["REDIS_STREAM_WORKER_PASSWORD"])

    # the platform (default user): the hourly push of the views and the speed layer's snapshot
    platform = OnlineStore(platform_url, online=OnlineSettings(speed_layer_enabled=True))
    platform.push_tables(views_world(platform))
    assert platform.speed is not None
    platform.speed.push_snapshots(
        [BatchSnapshot.empty("c1", W_US, W_US + 2 * HOUR_US)], W_US, W_US + 2 * HOUR_US
    )

    # the scorer: the online read with the speed layer merged, its probe, and the stream publisher
    scorer = OnlineStore(scorer_url, online=OnlineSettings(speed_layer_enabled=True))
    at = [(from_us(W_US + 60 * 1_000_000), 12.5)]
    (read,) = scorer.read_many([("c1", "m1")], at=at)
    assert read.missing == [] and read.speed_layer == "merged"
    assert read.customer["txn_count_1h"] == 0  # the speed layer's exact value: no event in the last hour
    assert scorer.probe() == platform.current_namespaces()  # the health probe (MGET of the pointers)
    publisher = EventPublisher(redis.Redis.from_url(scorer_url), settings.stream.key, retention_s=3600)
    event = TransactionEvent("t1", "c1", "m1", 12.5, W_US + 30 * 1_000_000, "grocery", "EUR", "pos", "DE")
    publisher.put(event)
    publisher.close()
    assert publisher.published == 1 and publisher.dropped == 0, publisher.status()

    scorer_client = redis.Redis.from_url(scorer_url)
    pointer = platform.keys.pointer("customer_features")
    for command in (
        ("SET", pointer, "elsewhere"),  # repoint a view
        ("DEL", pointer),
        ("HSET", platform.speed.key("c1"), "w", "0"),  # rewrite the speed layer
        ("FLUSHALL",),
        ("CONFIG", "SET", "maxmemory-policy", "allkeys-lru"),
        ("XGROUP", "DESTROY", settings.stream.key, settings.stream.worker_group),
        ("GET", "other-app:secret"),  # outside the platform's keys
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            scorer_client.execute_command(*command)

    with pytest.raises(redis.exceptions.ResponseError, match="can't run this command"):
        scorer_client.eval("return redis.call('SET', KEYS[1], 'x')", 1, pointer)  # a write inside a script
    assert platform.current_namespaces() == scorer.probe()

    # the stream worker: the scorer's event applied to the speed layer, acknowledged
    worker_client = redis.Redis.from_url(worker_url)
    worker = StreamWorker(worker_client, settings, consumer="acl-test")
    assert worker.process_once(block_ms=100) == 1
    assert worker.counts.applied == 1, worker.counts
    _, state = SpeedStore(redis.Redis.from_url(platform_url), settings.online.key_prefix).read(["c1"])[0]
    assert state is not None and set(state.events) == {"t1"}
    (after,) = scorer.read_many([("c1", "m1")], at=at)
    assert after.customer["txn_count_1h"] == 1  # the event, served to the scorer
    for command in (
        ("SET", pointer, "elsewhere"),
        ("DEL", pointer),
        ("FLUSHALL",),
        ("CONFIG", "GET", "requirepass"),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            worker_client.execute_command(*command)
    assert platform.current_namespaces()["customer_features"]  # the views are untouched
    for store in (platform, scorer):
        store.close()
