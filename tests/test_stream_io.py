"""The transaction stream's transport (issue 16, items 1 and 4): publishing, retention, consumer groups,
the scorer's publisher under a Redis outage, and the lander into ``raw.transactions``.

Real Redis (the session's embedded server; one of its own for the outage) and real PostgreSQL (a
scratch database). The scorer's end-to-end publishing is in tests/test_serving.py.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import redis

from rtml.config import Settings, get_settings
from rtml.services import redis as redis_service
from rtml.services.processes import free_port, stop_pid
from rtml.streaming import lander as lander_module
from rtml.streaming import stream
from rtml.streaming.events import TransactionEvent, to_us
from rtml.streaming.lander import LandCounts, Lander
from rtml.streaming.publisher import EventPublisher

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
    client.delete(name)


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
    client = redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1)
    gate = {"open": True}
    publisher = EventPublisher(
        client, "s", retention_s=3600, queue_max=50, batch=10, available=lambda: gate["open"]
    )
    began = time.perf_counter()
    accepted = [publisher.put(event(i)) for i in range(60)]  # nothing listens on the port
    put_ms = (time.perf_counter() - began) * 1000
    assert put_ms < 50, f"put waited {put_ms:.1f} ms"
    assert accepted.count(True) >= 50 and publisher.dropped == accepted.count(False) >= 1
    deadline = time.monotonic() + 5
    while publisher.redis_ok and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not publisher.redis_ok and publisher.status()["redis"] == "unavailable"
    server = redis_service.start_embedded(tmp_path / "valkey", preferred_port=port)
    try:
        assert server.url.endswith(f":{port}/0")
        gate["open"] = False  # the breaker open: the publisher does not even try
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


# --- the lander -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lander_db(scratch_database: Callable[[str], str]) -> str:
    return scratch_database("stream_lander")


def lander_settings(key: str, database_url: str) -> Settings:
    return get_settings().model_copy(
        update={
            "stream_key": key,
            "database_url": database_url,
            "stream_lander_batch_events": 50,
            "stream_lander_batch_ms": 100.0,
            "stream_claim_idle_ms": 50,
            "transactions_feed": "stream",
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
    first = Lander(client, lander_db, settings, consumer="a")
    counts = land_all(first)
    ids = {e.transaction_id for e in good}
    raw, quarantine = stream_rows(lander_db)
    assert raw == dict.fromkeys(ids, 1)
    assert quarantine == {"event_malformed": 2, "amount_not_positive": 1}
    assert (counts.read, counts.loaded, counts.quarantined, counts.duplicates) == (124, 120, 3, 1)
    assert client.xpending(key, settings.stream_lander_group)["pending"] == 0

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
    assert client.xpending(key, settings.stream_lander_group)["pending"] == 30
    # restarted under the same name: its own pending entries first, the same source replaced by itself
    again = Lander(client, lander_db, settings, consumer="b").land_once(block_ms=50)
    assert (again.read, again.loaded, again.duplicates) == (30, 30, 0)
    # ... or, had it not come back, another lander claims them: they are duplicates then
    stream.publish(client, key, later[:5], retention_s=3600)
    stream.read_new(client, key, settings.stream_lander_group, "dies", count=5, block_ms=None)
    time.sleep(0.1)
    claimed = Lander(client, lander_db, settings, consumer="c").land_once(block_ms=50)
    assert (claimed.read, claimed.loaded, claimed.duplicates) == (5, 0, 5)

    raw, quarantine = stream_rows(lander_db)
    assert raw == dict.fromkeys(ids | {e.transaction_id for e in later}, 1)
    assert client.xpending(key, settings.stream_lander_group)["pending"] == 0
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


def test_land_refuses_to_run_when_the_simulator_feeds_raw_transactions() -> None:
    from typer.testing import CliRunner

    from rtml.cli import app

    result = CliRunner().invoke(app, ["stream", "land"], env={"RTML_TRANSACTIONS_FEED": "simulator"})
    assert result.exit_code == 2 and "RTML_TRANSACTIONS_FEED" in result.output
