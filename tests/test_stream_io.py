"""The transaction stream's transport (issue 16, items 1 and 4): publishing, retention, consumer groups,
the scorer's publisher under a Redis outage, and the lander into ``raw.transactions``.

Real Redis (the session's embedded server; one of its own for the outage) and real PostgreSQL (a
scratch database). The scorer's end-to-end publishing is in tests/test_serving.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from rtml.config import ServicesSettings, Settings, SimulatorSettings, get_settings
from rtml.serving.sidecar import Sidecar, StreamTarget
from rtml.stack import redis as redis_service
from rtml.stack.processes import free_port, spawn, stop_pid
from rtml.streaming import lander as lander_module
from rtml.streaming import stream
from rtml.streaming.events import TransactionEvent, to_us
from rtml.streaming.lander import LandCounts, Lander
from rtml.streaming.publisher import EventPublisher, no_retries

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


def event(n: int, prefix: str = "t", amount: float = 12.5) -> TransactionEvent:
    return TransactionEvent(
        transaction_id=f"{prefix}{n:05d}",
        customer_id=f"c{n % 7}",
        merchant_id=f"m{n % 5}",
        amount=amount,
        event_ts_us=to_us(T0 + timedelta(seconds=n)),
        merchant_category="grocery",
        currency="EUR",
        channel="pos",
        country="DE",
    )


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(redis_url)
    yield r
    r.close()


@pytest.fixture
def key(client: redis.Redis) -> Iterator[str]:
    name = f"rtmltest:stream:{uuid.uuid4().hex[:8]}"
    yield name
    client.delete(name, *client.scan_iter(f"{name}:*"))  # and the consumers' heartbeats


# --- the stream -------------------------------------------------------------------------------------------
def test_publish_then_read_in_a_group_round_trips_every_field(client: redis.Redis, key: str) -> None:
    events = [event(i, amount=a) for i, a in enumerate((0.1, 12.345, 99999.99))]
    ids = stream.publish(client, key, events, retention_s=3600)
    assert len(ids) == 3 and ids == sorted(ids)
    assert stream.ensure_group(client, key, "g") is True
    assert stream.ensure_group(client, key, "g") is False  # idempotent
    read = stream.read_new(client, key, "g", "c1", count=10, block_ms=100)
    assert [e.id for e in read] == ids
    assert [TransactionEvent.from_fields(e.fields) for e in read] == events
    assert stream.read_new(client, key, "g", "c1", count=10, block_ms=None) == []
    assert stream.ack(client, key, "g", ids) == 3
    assert client.xpending(key, "g")["pending"] == 0


def test_publishing_trims_entries_older_than_the_retention(client: redis.Redis, key: str) -> None:
    old_ms = int(time.time() * 1000) - 3 * 3600_000  # three hours ago
    for i in range(300):
        client.xadd(key, {"v": "1"}, id=f"{old_ms + i}-0")
    stream.publish(client, key, [event(1)], retention_s=3600)
    # `~` trims whole internal nodes (100 entries by default): the old entries' full nodes are gone
    remaining = client.xrange(key)
    assert len(remaining) <= 101, len(remaining)
    assert TransactionEvent.from_fields(remaining[-1][1]) == event(1)
    # within the retention nothing is trimmed
    stream.publish(client, key, [event(2)], retention_s=4 * 3600)
    assert client.xlen(key) == len(remaining) + 1


def test_a_dead_consumers_pending_entries_are_claimed(client: redis.Redis, key: str) -> None:
    ids = stream.publish(client, key, [event(i) for i in range(4)], retention_s=3600)
    stream.ensure_group(client, key, "g")
    assert len(stream.read_new(client, key, "g", "dead", count=4, block_ms=None)) == 4  # never acked
    # not idle long enough yet: nothing to claim
    assert stream.claim_idle(client, key, "g", "alive", min_idle_ms=60_000, count=10).entries == []
    status = stream.group_status(client, key, "g")
    assert status is not None and (status["lag"], status["pending"]) == (0, 4)
    # Redis 7.0 lists "alive" only once entries were delivered to it; Valkey 8 lists it from the claim on
    assert {name: c["pending"] for name, c in status["consumers"].items()} in (
        {"dead": 4},
        {"dead": 4, "alive": 0},
    )
    assert stream.group_status(client, key, "nope") is None
    client.xdel(key, ids[1])  # one pending entry trimmed before anyone landed it
    time.sleep(0.02)
    claimed = stream.claim_idle(client, key, "g", "alive", min_idle_ms=10, count=10)
    assert [e.id for e in claimed.entries] == [ids[0], ids[2], ids[3]]
    assert claimed.trimmed == [ids[1]]
    assert stream.read_own_pending(client, key, "g", "alive", 10) == claimed.entries
    stream.ack(client, key, "g", [e.id for e in claimed.entries])
    assert client.xpending(key, "g")["pending"] == 0


# --- the scorer's publisher -------------------------------------------------------------------------------
def test_publisher_sends_everything_in_order(client: redis.Redis, key: str) -> None:
    counted: list[tuple[str, int]] = []
    publisher = EventPublisher(
        client, key, retention_s=3600, batch=64, on_count=lambda o, n: counted.append((o, n))
    )
    events = [event(i) for i in range(1000)]
    for e in events:
        assert publisher.put(e)
    publisher.close()
    assert publisher.published == 1000 and publisher.dropped == 0
    assert sum(n for o, n in counted if o == "published") == 1000
    assert [TransactionEvent.from_fields(f) for _, f in client.xrange(key)] == events


def test_a_redis_outage_never_blocks_put_and_events_go_out_once_it_is_back(tmp_path: Path) -> None:
    port = free_port()
    client = redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1, retry=no_retries())
    gate = {"open": True}
    publisher = EventPublisher(
        client, "s", retention_s=3600, queue_max=50, batch=10, available=lambda: gate["open"]
    )
    began = time.perf_counter()
    accepted = [publisher.put(event(i)) for i in range(200)]  # nothing listens on the port
    put_ms = (time.perf_counter() - began) * 1000
    assert put_ms < 100, f"200 puts took {put_ms:.1f} ms"
    # the queue holds 50; the thread may hold one batch of 10 out of it (to be put back on failure)
    assert 50 <= accepted.count(True) <= 60 and publisher.dropped == accepted.count(False), accepted
    deadline = time.monotonic() + 5
    while publisher.redis_ok and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not publisher.redis_ok and publisher.status()["redis"] == "unavailable"
    gate["open"] = False  # the breaker open: the publisher does not even try, Redis back or not
    server = redis_service.start_embedded(tmp_path / "valkey", preferred_port=port)
    try:
        assert server.url.endswith(f":{port}/0")
        time.sleep(0.3)
        assert client.xlen("s") == 0 and publisher.pending == accepted.count(True)
        gate["open"] = True
        deadline = time.monotonic() + 10
        while publisher.pending and time.monotonic() < deadline:
            time.sleep(0.02)
        ids = [
            e.transaction_id for e in map(TransactionEvent.from_fields, (f for _, f in client.xrange("s")))
        ]
        # every accepted event once, in order (the refused connections appended nothing; a batch broken
        # midway could repeat a prefix, which consumers count once); only the dropped ones are lost
        assert ids == [f"t{i:05d}" for i, ok in enumerate(accepted) if ok]
        publisher.close()
        assert publisher.redis_ok and publisher.published >= accepted.count(True)
    finally:
        client.close()
        stop_pid(server.pid)


def test_close_with_redis_away_drops_and_counts_what_is_queued() -> None:
    client = redis.Redis(port=free_port(), socket_timeout=1, socket_connect_timeout=1, retry=no_retries())
    counted: list[tuple[str, int]] = []
    publisher = EventPublisher(client, "s", retention_s=3600, on_count=lambda o, n: counted.append((o, n)))
    for i in range(25):
        publisher.put(event(i))
    began = time.monotonic()
    publisher.close(timeout=3)
    assert time.monotonic() - began < 4
    assert (publisher.published, publisher.dropped, publisher.pending) == (0, 25, 0)
    assert sum(n for o, n in counted if o == "dropped") == 25 and not publisher.put(event(99))
    client.close()


def test_close_does_not_wait_for_a_hung_redis_and_counts_each_event_once() -> None:
    hung = socket.create_server(("127.0.0.1", 0))  # accepts connections, never answers
    port = hung.getsockname()[1]
    client = redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1, retry=no_retries())
    publisher = EventPublisher(client, "s", retention_s=3600)
    for i in range(25):
        publisher.put(event(i))
    time.sleep(0.1)  # the thread is stuck sending them
    assert publisher.pending == 25
    began = time.monotonic()
    publisher.close(timeout=0.2)
    assert time.monotonic() - began < 0.5 and publisher.dropped == 25
    time.sleep(1.5)  # the thread's send times out meanwhile: it must not count them again
    assert (publisher.published, publisher.dropped) == (0, 25)
    client.close()
    hung.close()


# --- the publisher in the scorer's sidecar process (rtml.serving.sidecar) ---------------------------------
def wait_until(condition: Callable[[], bool], what: str, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_the_sidecar_publishes_every_event_in_order_and_reports_its_counts(
    client: redis.Redis, redis_url: str, key: str
) -> None:
    counted: list[tuple[str, int]] = []
    sidecar = Sidecar(
        None,  # no prediction log: the sidecar runs for the stream alone
        stream=StreamTarget(redis_url=redis_url, key=key, retention_s=3600, batch=100),
        on_stream_count=lambda outcome, n: counted.append((outcome, n)),
    )
    events = [event(i) for i in range(3000)]
    for e in events:
        assert sidecar.publish(e)
    wait_until(lambda: sidecar.stream_status()["pending"] == 0, f"events pending: {sidecar.stream_status()}")
    status = sidecar.stream_status()
    assert (status["stream"], status["redis"], status["published"], status["dropped"]) == (key, "ok", 3000, 0)
    child = sidecar._child
    sidecar.close()
    assert child is not None and child.returncode == 0
    assert [TransactionEvent.from_fields(f) for _, f in client.xrange(key)] == events
    assert sum(n for o, n in counted if o == "published") == 3000 and not any(
        o == "dropped" for o, _ in counted
    )
    assert not sidecar.publish(event(9999)) and sidecar.stream_counts["dropped"] == 1


def test_events_a_killed_sidecar_held_are_counted_dropped_and_the_next_one_publishes(
    tmp_path: Path, key: str
) -> None:
    """Redis away: the events wait in the sidecar's memory; the sidecar killed (-9): they are counted
    dropped, never silently, and the sidecar that replaces it publishes what follows once Redis is back."""
    port = free_port()
    restarts: list[int] = []
    sidecar = Sidecar(
        None,
        stream=StreamTarget(redis_url=f"redis://127.0.0.1:{port}/0", key=key, retention_s=3600),
        on_restart=lambda: restarts.append(1),
    )
    server = None
    try:
        for i in range(50):
            assert sidecar.publish(event(i, prefix="held"))
        wait_until(lambda: sidecar.stream_status()["redis"] == "unavailable", "the child never tried Redis")
        wait_until(lambda: sidecar._child_stream.get("pending") == 50, f"not held: {sidecar._child_stream}")
        first = sidecar.status()["process"]["pid"]
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: sidecar.restarts == 1, "not restarted")
        assert sidecar.stream_counts == {"published": 0, "dropped": 50}, sidecar.stream_status()
        server = redis_service.start_embedded(tmp_path / "valkey", preferred_port=port)
        after = [event(i, prefix="after") for i in range(10)]
        for e in after:
            assert sidecar.publish(e)
        wait_until(lambda: sidecar.stream_status()["pending"] == 0, f"pending: {sidecar.stream_status()}")
        published = redis.Redis.from_url(server.url).xrange(key)
        assert [TransactionEvent.from_fields(f) for _, f in published] == after
    finally:
        sidecar.close()
        if server is not None:
            stop_pid(server.pid)
    assert sidecar.stream_counts == {"published": 10, "dropped": 50} and restarts == [1]


# --- the lander -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lander_db(scratch_database: Callable[[str], str]) -> str:
    return scratch_database("stream_lander")


def lander_settings(key: str, database_url: str) -> Settings:
    return get_settings().model_copy(
        update={
            "stream": get_settings().stream.model_copy(
                update={
                    "key": key,
                    "lander_batch_events": 50,
                    "lander_batch_ms": 100.0,
                    "claim_idle_ms": 50,
                    "transactions_feed": "stream",
                }
            ),
            "services": get_settings().services.model_copy(update={"database_url": database_url}),
        }
    )


def stream_rows(database_url: str) -> tuple[dict[str, int], dict[str, int]]:
    """(transaction id → rows in raw.transactions, quarantine rule → rows), of stream sources only."""
    with psycopg.connect(database_url) as conn:
        raw = conn.execute(
            "select transaction_id, count(*) from raw.transactions where source like 'stream:%' group by 1"
        ).fetchall()
        quarantine = conn.execute(
            "select rule, count(*) from raw.transactions_quarantine where source like 'stream:%' group by 1"
        ).fetchall()
    return dict(raw), dict(quarantine)


def land_all(lander: Lander) -> LandCounts:
    total = LandCounts()
    for _ in range(50):
        batch = lander.land_once(block_ms=50)
        total.add(batch)
        if not batch.read and not batch.trimmed:
            return total
    raise AssertionError("the lander did not run dry")


def test_lander_loads_each_event_once_across_duplicates_replays_and_a_crash_before_ack(
    client: redis.Redis, key: str, lander_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = lander_settings(key, lander_db)
    good = [event(i, prefix=f"{key[-8:]}-") for i in range(120)]
    bad_amount = event(900, prefix=f"{key[-8:]}-", amount=-5.0)  # a valid event that ingestion refuses
    stream.publish(client, key, [*good[:60], good[10], bad_amount, *good[60:]], retention_s=3600)
    client.xadd(key, {"v": "1", "transaction_id": "broken"})  # not an event: fields missing
    client.xadd(key, {"v": "99", "transaction_id": "future"})  # a schema version this reader does not know
    # PostgreSQL away: nothing is acknowledged, the entries stay pending, and the next attempt takes them
    first = Lander(client, f"postgresql://postgres@127.0.0.1:{free_port()}/x", settings, consumer="a")
    with pytest.raises(psycopg.OperationalError):
        first.land_once(50)
    assert client.xpending(key, settings.stream.lander_group)["pending"] == 50
    first.database_url = lander_db  # PostgreSQL is back
    (oldest, _), *_ = client.xrange(key, count=1)
    assert first.land_once(50).sources[0].startswith(f"stream:{oldest.decode()}..")
    land_all(first)
    counts = dataclasses.replace(first.counts)  # every batch of this lander so far
    ids = {e.transaction_id for e in good}
    raw, quarantine = stream_rows(lander_db)
    assert raw == dict.fromkeys(ids, 1)
    assert quarantine == {"event_malformed": 2, "amount_not_positive": 1}
    assert (counts.read, counts.loaded, counts.quarantined, counts.duplicates) == (124, 120, 3, 1)
    assert client.xpending(key, settings.stream.lander_group)["pending"] == 0

    # a replay of everything (new entries, other batch boundaries): duplicates, nothing loaded again
    stream.publish(client, key, good[5:], retention_s=3600)
    replay = land_all(first)
    assert (replay.read, replay.loaded, replay.quarantined, replay.duplicates) == (115, 0, 0, 115)

    # a crash between the load's commit and the acknowledgement: the load is durable, the entries pending
    later = [event(i, prefix=f"{key[-8:]}-") for i in range(200, 230)]
    stream.publish(client, key, later, retention_s=3600)

    def crash(*args: object) -> int:
        raise KeyboardInterrupt("killed between commit and XACK")

    monkeypatch.setattr(lander_module.stream, "ack", crash)
    with pytest.raises(KeyboardInterrupt):
        Lander(client, lander_db, settings, consumer="b").land_once(block_ms=50)
    monkeypatch.undo()
    assert stream_rows(lander_db)[0] == dict.fromkeys(ids | {e.transaction_id for e in later}, 1)
    assert client.xpending(key, settings.stream.lander_group)["pending"] == 30
    # restarted under the same name: its own pending entries first, the same source replaced by itself
    again = Lander(client, lander_db, settings, consumer="b").land_once(block_ms=50)
    assert (again.read, again.loaded, again.duplicates) == (30, 30, 0)
    # ... or, had it not come back, another lander claims them: they are duplicates then
    stream.publish(client, key, later[:5], retention_s=3600)
    stream.read_new(client, key, settings.stream.lander_group, "dies", count=5, block_ms=None)
    time.sleep(0.1)
    claimed = Lander(client, lander_db, settings, consumer="c").land_once(block_ms=50)
    assert (claimed.read, claimed.loaded, claimed.duplicates) == (5, 0, 5)

    raw, quarantine = stream_rows(lander_db)
    assert raw == dict.fromkeys(ids | {e.transaction_id for e in later}, 1)
    status = stream.group_status(client, key, settings.stream.lander_group)
    assert status is not None and (status["lag"], status["pending"]) == (0, 0)
    beats = {name: c["heartbeat_age_s"] for name, c in status["consumers"].items()}
    assert beats["c"] < 5 and beats["dies"] is None  # a running lander's heartbeat; a reader that died
    # the counting invariant over everything read, and against the receipts in raw.loads
    everything = LandCounts()
    for part in (counts, replay, again, claimed):
        everything.add(part)
    assert everything.read == everything.loaded + everything.quarantined + everything.duplicates
    with psycopg.connect(lander_db) as conn:
        loads = conn.execute(
            "select sum(rows_loaded), sum(rows_quarantined) from raw.loads where source like 'stream:%'"
        ).fetchone()
    assert loads == (len(raw), sum(quarantine.values()))


def test_land_refuses_to_run_when_the_simulator_feeds_raw_transactions_and_status_checks_liveness(
    client: redis.Redis, key: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from rtml.cli import app

    monkeypatch.setenv("RTML_TRANSACTIONS_FEED", "simulator")
    monkeypatch.setenv("RTML_REDIS_URL", redis_url)
    monkeypatch.setenv("RTML_STREAM_KEY", key)
    get_settings.cache_clear()
    try:
        refused = CliRunner().invoke(app, ["stream", "land"])
        stream.ensure_group(client, key, "lander")
        stream.read_new(client, key, "lander", "running", count=1, block_ms=None)
        stream.read_new(client, key, "lander", "silent", count=1, block_ms=None)
        stream.heartbeat(client, key, "lander", "running")
        alive = CliRunner().invoke(app, ["stream", "status", "--alive", "running"])
        silent = CliRunner().invoke(app, ["stream", "status", "--alive", "silent"])
    finally:
        get_settings.cache_clear()
    assert refused.exit_code == 2 and "RTML_TRANSACTIONS_FEED" in refused.output
    # exit codes, not the listing: Redis 7.0 lists a consumer only once entries were delivered to it
    assert alive.exit_code == 0 and '"group": "lander"' in alive.output, alive.output
    assert silent.exit_code == 1 and "silent: no heartbeat" in silent.output, silent.output


def test_traffic_publish_appends_the_simulators_transactions_instead_of_scoring_them(
    client: redis.Redis, key: str, tmp_path: Path
) -> None:
    from rtml.sources.scenarios import timeline_path
    from rtml.sources.simulator import Simulator
    from rtml.traffic import Traffic

    start = datetime(2026, 11, 10, 12, 59, 58, tzinfo=UTC)  # crosses into the next hour
    began = time.monotonic()
    settings = Settings(
        services=ServicesSettings(data_dir=tmp_path),
        simulator=SimulatorSettings(
            start=datetime(2026, 11, 2, tzinfo=UTC), transactions_per_day=1_000_000, drift_scenario=None
        ),
    )
    publisher = EventPublisher(client, key, retention_s=3600)
    traffic = Traffic(
        settings,
        "http://127.0.0.1:9",  # never contacted
        rate_multiplier=1.0,
        duration=4,
        clock=lambda: start + timedelta(seconds=time.monotonic() - began),
        echo=lambda line: None,
        publisher=publisher,
    )
    stats = asyncio.run(traffic.run())
    published = [TransactionEvent.from_fields(fields) for _, fields in client.xrange(key)]
    assert stats.ok == len(published) == publisher.published >= 20 and stats.connection_errors == 0
    assert [e.event_ts_us for e in published] == sorted(e.event_ts_us for e in published)
    assert {e.event_ts.hour for e in published} == {12, 13}
    simulated = Simulator(settings.simulator, settings.ingest, timeline_path(settings.services)).transactions(
        start.replace(minute=0, second=0), start + timedelta(hours=1)
    )
    by_id = {row["transaction_id"]: row for row in simulated.to_pylist()}
    for e in published:  # the simulator's rows, field for field
        row = by_id[e.transaction_id]
        assert (e.customer_id, e.amount, e.event_ts, e.currency) == (
            row["customer_id"],
            row["amount"],
            row["event_ts"],
            row["currency"],
        )
        assert e.amount > 0 and e.currency in settings.ingest.currencies  # invalid rows are not published


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_rtml_stream_land_serves_metrics_that_count_what_it_landed(
    client: redis.Redis, key: str, lander_db: str, redis_url: str, tmp_path: Path
) -> None:
    """`rtml stream land` as its own process, against the session's PostgreSQL and Redis: its /metrics
    count each outcome as raw.transactions and the quarantine hold it, its group's lag (backlog first,
    caught up after), the batches, and each committed event's freshness; SIGTERM stops it, exit 0."""
    prefix = f"{key[-8:]}-m-"
    good = [event(i, prefix=prefix) for i in range(40)]
    # a backlog 5 s old before the lander starts: its lag (age) is at least that
    old_ms = int(time.time() * 1000) - 5000
    client.xadd(key, good[0].to_fields(), id=f"{old_ms}-0")  # type: ignore[arg-type]
    refused = event(950, prefix=prefix, amount=-1.0)  # ingestion's rules quarantine it
    stream.publish(client, key, [*good[1:], good[7], refused], retention_s=3600)
    client.xadd(key, {"v": "1", "transaction_id": f"{prefix}broken"})  # not an event
    settings = lander_settings(key, lander_db)
    backlog = Lander(client, lander_db, settings, consumer="metrics")  # creates the group, lands nothing
    lag_events, lag_age = backlog.measure_lag()
    assert lag_events == 43 and lag_age >= 5
    assert backlog.metrics.registry.get_sample_value("rtml_stream_lander_lag_seconds") == lag_age

    port = free_port()
    env = {
        **os.environ,
        "RTML_TRANSACTIONS_FEED": "stream",
        "RTML_DATABASE_URL": lander_db,
        "RTML_REDIS_URL": redis_url,
        "RTML_STREAM_KEY": key,
        "RTML_STREAM_LANDER_BATCH_EVENTS": "20",
        "RTML_STREAM_LANDER_BATCH_MS": "100",
    }
    log = tmp_path / "stream-lander.log"
    command = [sys.executable, "-m", "rtml.cli", "stream", "land", "--consumer", "metrics"]
    proc = spawn([*command, "--metrics-port", str(port)], env, log)
    outcomes = [("rtml_stream_lander_events_total", (("outcome", o),)) for o in lander_module.OUTCOMES]
    try:
        deadline = time.monotonic() + 60
        samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        while sum(samples.get(outcome, 0) for outcome in outcomes) != 43:  # every entry landed
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, (samples, log.read_text())
            time.sleep(0.2)
            try:
                samples = scrape(port)
            except OSError:
                continue
        counted = {labels[0][1]: samples[(name, labels)] for name, labels in outcomes}
        assert counted == {"loaded": 40, "quarantined": 1, "duplicate": 1, "malformed": 1}
        # what the tables hold, by the metrics' own definitions
        with psycopg.connect(lander_db) as conn:
            rows = conn.execute(
                "select count(*) from raw.transactions where transaction_id like %s", (f"{prefix}%",)
            ).fetchone()
            rules = conn.execute(
                "select rule, count(*) from raw.transactions_quarantine where transaction_id like %s "
                "group by 1 order by 1",
                (f"{prefix}%",),
            ).fetchall()
        assert rows == (40,)
        assert rules == [("amount_not_positive", 1), ("event_malformed", 1)]
        committed = samples[("rtml_stream_lander_batches_total", (("result", "committed"),))]
        assert committed >= 3  # 43 entries in batches of at most 20
        assert samples[("rtml_stream_lander_batches_total", (("result", "failed"),))] == 0
        assert samples[("rtml_stream_lander_batch_seconds_count", ())] == committed
        # freshness per committed event (loaded + quarantined by the loader's rules): the events are an
        # hour old (T0), so all of them lie between the 900 s and 4 h buckets
        fresh = samples[("rtml_stream_lander_freshness_seconds_count", ())]
        assert fresh == 41
        assert samples[("rtml_stream_lander_freshness_seconds_bucket", (("le", "900.0"),))] == 0
        assert samples[("rtml_stream_lander_freshness_seconds_bucket", (("le", "14400.0"),))] == fresh
        time.sleep(1.2)  # the next lag measurement sees the group caught up
        samples = scrape(port)
        assert samples[("rtml_stream_lander_lag_events", ())] == 0
        assert samples[("rtml_stream_lander_lag_seconds", ())] == 0
        # Redis lost the stream (restarted without persistence): the lander makes its group again and
        # lands what is published from then on
        client.delete(key)
        stream.publish(client, key, [event(i, prefix=prefix) for i in range(60, 65)], retention_s=3600)
        while samples[outcomes[0]] != 45:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, (samples, log.read_text())
            time.sleep(0.2)
            samples = scrape(port)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            stop_pid(proc.pid)
    assert log.read_text().splitlines()[-1].startswith("stopped: 48 events read: 45 loaded")
