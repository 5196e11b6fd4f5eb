"""The speed layer's exact features (rtml.streaming) against dbt's ``customer_features``.

Hypothesis draws customer histories (bursts one second apart, ties at the same instant, events exactly
on and one microsecond around window edges and watermarks, amounts PostgreSQL rounds, equal amounts);
each drawn example is one customer, so all examples share ONE database and two dbt runs. The batch era
(before the watermark W1) goes through the platform's loader into ``raw.transactions`` with everything
else; dbt builds ``customer_features`` over all rows and ``customer_stream_snapshot`` at W1, then at W2
(the watermark moving mid-stream). The stream era arrives out of order, with duplicates and late replays,
in two phases around the move; the merged features at every stream transaction's time must equal
dbt's row for that transaction in every column, exactly (NULL for NULL). Three ways the arrivals reach
the state: in process, through Redis (the Lua APPLY), and through a real stream and consumer group where
a worker dies mid-batch every time and a surviving ``StreamWorker`` claims its batch.
"""

from __future__ import annotations

import dataclasses
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pytest
import redis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from psycopg.rows import dict_row

from rtml.config import IngestSettings, OnlineSettings, get_settings
from rtml.features.dbt import run_dbt
from rtml.ingest.loader import load_transactions
from rtml.sources.schema import TRANSACTIONS
from rtml.streaming import numeric, stream
from rtml.streaming.events import DAY_US, HOUR_US, SECOND_US, TransactionEvent, from_us, to_us
from rtml.streaming.features import FEATURE_COLUMNS, BeyondHorizon, NotExact, customer_features_at
from rtml.streaming.redis_state import SpeedStore, pack_snapshot, unpack_snapshot
from rtml.streaming.snapshot import WINDOWS_US, BatchSnapshot, fetch_snapshots
from rtml.streaming.state import CustomerStreamState, Outcome
from rtml.streaming.worker import StreamWorker

# W1 just after 04:00 UTC: the 7-day edges and the stream both cross the night boundary (06:00)
W1 = datetime(2026, 10, 20, 4, 17, 23, 500, tzinfo=UTC)
W1_US = to_us(W1)
W2_US = W1_US + 71 * 60 * SECOND_US + 123_457
HORIZON = "3 hours"
STREAM_END_US = W2_US + 100 * 60 * SECOND_US  # every stream transaction is within W2 + horizon
EXAMPLES = 80
MERCHANTS = ["m1", "m2", "m3", "m4", "m5"]


@dataclass
class History:
    events: list[TransactionEvent]
    seed: int  # arrival order, duplicates, replays


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[tuple[int, str, float]], int]:
    span_s = (STREAM_END_US - W1_US) // SECOND_US
    watermarks = [W1_US, W1_US + 1, W2_US - 1, W2_US, W2_US + 1]
    anchors = draw(
        st.lists(
            st.one_of(
                st.integers(0, span_s).map(lambda s: W1_US + s * SECOND_US), st.sampled_from(watermarks)
            ),
            min_size=1,
            max_size=6,
        )
    )
    times: list[int] = []
    for anchor in anchors:  # a burst: the anchor and up to 4 more one second apart
        times += [anchor + i * SECOND_US for i in range(draw(st.integers(0, 4)))] or [anchor]
    for _ in range(draw(st.integers(0, 8))):  # on a window's trailing edge of a later event, +- 1 us
        base = draw(st.sampled_from(times + watermarks))
        width = draw(st.sampled_from(list(WINDOWS_US.values())))
        times.append(base - width + draw(st.sampled_from([-1, 0, 0, 1])))
    times += draw(st.lists(st.integers(-31 * DAY_US, -1).map(lambda o: W1_US + o), max_size=8))
    for _ in range(draw(st.integers(0, 3))):  # ties: another transaction at exactly the same instant
        times.append(draw(st.sampled_from(times)))
    same = draw(st.booleans())  # equal amounts: stddev 0, no z-score
    amount = st.one_of(
        st.integers(1, 2_000_000).map(lambda c: c / 100),
        st.sampled_from([5.0, 12.345, 0.005, 0.015, 19_999.99, 1.005]),
        st.floats(0.01, 20_000, allow_nan=False).map(lambda x: max(0.01, round(x, 4))),
    )
    fixed = draw(amount)
    rows = [(ts, draw(st.sampled_from(MERCHANTS)), fixed if same else draw(amount)) for ts in times]
    return rows, draw(st.integers(0, 2**32))


def draw_histories() -> list[History]:
    drawn: list[tuple[list[tuple[int, str, float]], int]] = []

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(histories())
    def collect(example: tuple[list[tuple[int, str, float]], int]) -> None:
        drawn.append(example)

    collect()
    out = []
    for index, (rows, seed) in enumerate(drawn):
        customer = f"h{index:04d}"
        events = [
            TransactionEvent(
                f"{customer}-{i:03d}", customer, merchant, amount, ts, "grocery", "EUR", "pos", "DE"
            )
            for i, (ts, merchant, amount) in enumerate(rows)
        ]
        out.append(History(events, seed))
    return out


def load(url: str, events: list[TransactionEvent]) -> None:
    """Every event into raw.transactions through the platform's validated loader."""
    table = pa.Table.from_pylist(
        [
            {
                "transaction_id": e.transaction_id,
                "event_ts": e.event_ts,
                "customer_id": e.customer_id,
                "merchant_id": e.merchant_id,
                "merchant_category": e.merchant_category,
                "amount": e.amount,
                "currency": e.currency,
                "channel": e.channel,
                "country": e.country,
            }
            for e in events
        ],
        schema=TRANSACTIONS,
    )
    result = load_transactions(
        url, [table], "stream-parity", IngestSettings(), now=from_us(STREAM_END_US) + timedelta(days=1)
    )
    assert result.rows_loaded == len(events), result


def snapshot_env(as_of_us: int) -> dict[str, str]:
    return {"RTML_DBT_STREAM_AS_OF": from_us(as_of_us).isoformat(), "RTML_DBT_STREAM_HORIZON": HORIZON}


def same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return bool(a == b) and type(a) is type(b)


class MemoryBackend:
    """The state in process (rtml.streaming.state)."""

    def __init__(self) -> None:
        self.snapshots: dict[str, BatchSnapshot] = {}
        self.states: dict[str, CustomerStreamState] = {}
        self.as_of_us = self.valid_until_us = 0

    def push(self, rows: dict[str, BatchSnapshot], as_of_us: int, valid_until_us: int) -> None:
        self.snapshots, self.as_of_us, self.valid_until_us = rows, as_of_us, valid_until_us
        for state in self.states.values():
            state.advance(as_of_us)
            assert all(e.event_ts_us >= as_of_us for e in state.events.values())

    def apply(self, events: list[TransactionEvent]) -> list[Outcome]:
        return [
            self.states.setdefault(e.customer_id, CustomerStreamState(e.customer_id, self.as_of_us)).apply(e)
            for e in events
        ]

    def features(self, event: TransactionEvent) -> dict[str, Any]:
        customer = event.customer_id
        snapshot = self.snapshots.get(customer) or BatchSnapshot.empty(
            customer, self.as_of_us, self.valid_until_us
        )
        return customer_features_at(
            snapshot,
            self.states.get(customer),
            event_ts_us=event.event_ts_us,
            merchant_id=event.merchant_id,
            amount=event.amount,
        )


class RedisBackend:
    """The state in the session's Redis (rtml.streaming.redis_state), read back for every request."""

    def __init__(self, store: SpeedStore) -> None:
        self.store = store

    def push(self, rows: dict[str, BatchSnapshot], as_of_us: int, valid_until_us: int) -> None:
        assert self.store.push_snapshots(rows.values(), as_of_us, valid_until_us) == len(rows)

    def apply(self, events: list[TransactionEvent]) -> list[Outcome]:
        watermark = self.store.watermark()
        assert watermark is not None
        return self.store.apply_many(events, watermark[0])

    def features(self, event: TransactionEvent) -> dict[str, Any]:
        return self.store.features_at(
            event.customer_id,
            event_ts_us=event.event_ts_us,
            merchant_id=event.merchant_id,
            amount=event.amount,
        )


class WorkerBackend(RedisBackend):
    """The arrivals through a real stream and consumer group: each time, a worker reads half of them and
    dies having written part of its batch (never acknowledged), and a surviving ``StreamWorker`` claims
    that batch and processes the rest. Only counts come back from a worker, so ``apply`` returns the
    outcomes as a multiset (sorted): the effective outcome of each arrival, what was written once."""

    def __init__(self, store: SpeedStore, client: redis.Redis) -> None:
        super().__init__(store)
        self.client, self.key, self.deaths = client, f"{store.prefix}:stream", 0
        self.settings = get_settings().model_copy(
            update={
                "stream": get_settings().stream.model_copy(
                    update={"key": self.key, "worker_batch_events": 32, "claim_idle_ms": 1}
                ),
                "online": get_settings().online.model_copy(update={"key_prefix": store.prefix}),
            }
        )
        self.survivor = StreamWorker(client, self.settings, consumer="survives")

    def apply(self, events: list[TransactionEvent]) -> list[Outcome]:
        stream.publish(self.client, self.key, events, retention_s=3600)
        group, self.deaths = self.settings.stream.worker_group, self.deaths + 1
        dying = f"dies-{self.deaths}"
        batch = stream.read_new(self.client, self.key, group, dying, max(1, len(events) // 2), None)
        parsed = [TransactionEvent.from_fields(entry.fields) for entry in batch]
        watermark = self.store.watermark()
        assert watermark is not None
        written = Counter(self.store.apply_many(parsed[: len(parsed) // 2 + 1], watermark[0]))
        before = dataclasses.replace(self.survivor.counts)
        time.sleep(0.002)  # idle past stream_claim_idle_ms: the dead consumer's batch is claimable
        while not drained(self.client, self.key, group):
            self.survivor.process_once(block_ms=5)
        counts = self.survivor.counts
        assert counts.claimed - before.claimed == len(batch)
        # the survivor processed every entry once; what the dead worker had applied came back duplicate
        applied = counts.applied - before.applied + written[Outcome.APPLIED]
        duplicate = counts.duplicate - before.duplicate - written[Outcome.APPLIED]
        late = counts.late - before.late
        assert applied + duplicate + late == len(events)
        return sorted([Outcome.APPLIED] * applied + [Outcome.DUPLICATE] * duplicate + [Outcome.LATE] * late)


def drained(client: redis.Redis, key: str, group: str) -> bool:
    info = next((g for g in client.xinfo_groups(key) if g["name"].decode() == group), None)
    return info is not None and info["pending"] == 0 and info["lag"] == 0


Backend = MemoryBackend | RedisBackend


@pytest.fixture(scope="module")
def parity_world(scratch_database: Callable[[str], str], separate_dbt_target: Path) -> dict[str, Any]:
    """The drawn histories, loaded; dbt's rows; the snapshot rows at W1 and at W2 (customers with a row)."""
    worlds = draw_histories()
    url = scratch_database("streaming")
    load(url, [e for h in worlds for e in h.events])
    proc = run_dbt(
        [
            "run",
            "--full-refresh",
            "--select",
            "stg_transactions",
            "customer_features",
            "customer_stream_snapshot",
        ],
        url,
        check=False,
        extra_env=snapshot_env(W1_US),
    )
    assert proc.returncode == 0, proc.stdout[-5000:]
    first = {s.customer_id: s for s in fetch_snapshots(url)}
    proc = run_dbt(
        ["run", "--select", "customer_stream_snapshot"], url, check=False, extra_env=snapshot_env(W2_US)
    )
    assert proc.returncode == 0, proc.stdout[-5000:]
    second = {s.customer_id: s for s in fetch_snapshots(url)}
    for rows, as_of in ((first, W1_US), (second, W2_US)):
        assert {(s.as_of_us, s.valid_until_us) for s in rows.values()} == {(as_of, as_of + 3 * HOUR_US)}
    with psycopg.connect(url) as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute("select * from features.customer_features")
        dbt = {row["transaction_id"]: row for row in cur}
    return {"worlds": worlds, "first": first, "second": second, "dbt": dbt}


@pytest.fixture(params=["memory", "redis", "workers"])
def backend(request: pytest.FixtureRequest, redis_url: str) -> Iterator[Backend]:
    if request.param == "memory":
        yield MemoryBackend()
        return
    client = redis.Redis.from_url(redis_url)
    store = SpeedStore(client, f"rtmltest-speed-{uuid.uuid4().hex[:8]}")
    try:
        yield RedisBackend(store) if request.param == "redis" else WorkerBackend(store, client)
    finally:
        store.purge()
        client.delete(f"{store.prefix}:stream")
        client.close()


def test_stream_features_equal_dbt_across_a_moving_watermark(
    parity_world: dict[str, Any], backend: Backend
) -> None:
    worlds: list[History] = parity_world["worlds"]
    dbt: dict[str, dict[str, Any]] = parity_world["dbt"]
    mismatches: list[str] = []
    compared = {"phase 1": 0, "phase 2": 0}
    seen: set[str] = set()
    outcomes: Counter[Outcome] = Counter()

    def arrive(arrivals: list[TransactionEvent], watermark_us: int) -> None:
        """Apply arrivals; each outcome is what idempotence by id and the watermark require."""
        expected = []
        for event in arrivals:
            if event.event_ts_us < watermark_us:
                expected.append(Outcome.LATE)
            elif event.transaction_id in seen:
                expected.append(Outcome.DUPLICATE)
            else:
                expected.append(Outcome.APPLIED)
                seen.add(event.transaction_id)
        got = backend.apply(arrivals)
        assert got == (sorted(expected) if isinstance(backend, WorkerBackend) else expected)
        outcomes.update(expected)

    def check(events: list[TransactionEvent], phase: str) -> None:
        for event in events:
            mine, theirs = backend.features(event), dbt[event.transaction_id]
            mismatches.extend(
                f"{event.transaction_id} {column}: stream {mine[column]!r} dbt {theirs[column]!r}"
                for column in FEATURE_COLUMNS
                if not same(mine[column], theirs[column])
            )
            compared[phase] += 1

    # phase 1 (snapshot at W1): every event before W2, some after, duplicates, late batch replays
    backend.push(parity_world["first"], W1_US, W1_US + 3 * HOUR_US)
    plans = []
    for history in worlds:
        rng, events = random.Random(history.seed), history.events
        early = [e for e in events if W1_US <= e.event_ts_us < W2_US]
        later = [e for e in events if e.event_ts_us >= W2_US]
        ahead = [e for e in later if rng.random() < 0.4]
        arrivals = early + ahead + rng.sample(early + ahead, k=min(3, len(early + ahead)))
        batch = [e for e in events if e.event_ts_us < W1_US]
        arrivals += rng.sample(batch, k=min(2, len(batch)))
        rng.shuffle(arrivals)
        arrive(arrivals, W1_US)
        check(early, "phase 1")
        plans.append((rng, events, later))

    # the watermark moves to W2: the new snapshot holds [W1, W2); the rest arrives, with replays
    backend.push(parity_world["second"], W2_US, W2_US + 3 * HOUR_US)
    for rng, events, later in plans:
        rest = [e for e in later if e.transaction_id not in seen]
        arrivals = rest + rng.sample(events, k=min(4, len(events))) + rng.sample(rest, k=min(2, len(rest)))
        rng.shuffle(arrivals)
        arrive(arrivals, W2_US)
        check(later, "phase 2")

    assert not mismatches, "\n".join(mismatches[:20])
    # the draws exercised what they are meant to (not a vacuous pass)
    assert compared["phase 1"] > 50 and compared["phase 2"] > 50, compared
    assert min(outcomes.values()) > 20 and len(outcomes) == 3, outcomes
    values = [row for row in dbt.values() if row["event_ts"] >= W1]
    assert any(r["txn_count_1h"] >= 3 for r in values)  # bursts
    assert any(r["amount_zscore_30d"] is not None for r in values)
    assert any(r["amount_std_30d"] == 0 for r in values)  # equal amounts
    assert any(r["night_share_7d"] not in (None, 0.0, 1.0) for r in values)
    assert any(not r["is_new_merchant"] for r in values) and any(r["is_new_merchant"] for r in values)
    edges = sum(len(s.edge_events) for s in parity_world["first"].values())
    assert edges > 50, edges


def test_snapshot_packs_for_redis_without_loss(parity_world: dict[str, Any]) -> None:
    for snapshot in [*parity_world["first"].values(), *parity_world["second"].values()]:
        assert unpack_snapshot(snapshot.customer_id, pack_snapshot(snapshot)) == snapshot


def test_merge_refuses_what_it_cannot_answer_exactly(parity_world: dict[str, Any]) -> None:
    snapshot = next(s for s in parity_world["first"].values() if s.txn_count["30d"])
    state = CustomerStreamState(snapshot.customer_id, W2_US)  # already advanced past this snapshot
    with pytest.raises(NotExact):
        customer_features_at(snapshot, state, event_ts_us=W2_US, merchant_id="m1", amount=1.0)
    with pytest.raises(NotExact):
        customer_features_at(snapshot, None, event_ts_us=W1_US - 1, merchant_id="m1", amount=1.0)
    with pytest.raises(BeyondHorizon):
        customer_features_at(
            snapshot, None, event_ts_us=snapshot.valid_until_us + 1, merchant_id="m1", amount=1.0
        )
    # at the watermark itself the features are the snapshot's own windows
    at_w = customer_features_at(snapshot, None, event_ts_us=W1_US, merchant_id="m1", amount=1.0)
    assert at_w["txn_count_30d"] == snapshot.txn_count["30d"]


def test_event_round_trips_through_its_stream_fields() -> None:
    event = TransactionEvent("t-1", "c-1", "m-1", 12.345, W1_US, "grocery", "EUR", "pos", "DE")
    wire = {k.encode(): v.encode() for k, v in event.to_fields().items()}
    assert TransactionEvent.from_fields(wire) == event
    assert event.amount_numeric == Decimal("12.35")  # as stg_transactions rounds 12.345 (15 digits)
    with pytest.raises(ValueError, match="schema version"):
        TransactionEvent.from_fields({**event.to_fields(), "v": "2"})


def test_numeric_mirror_is_bit_for_bit_postgres(database_url: str) -> None:
    """avg / stddev_samp / z-score / integer avg over numeric, cast to double, on many value sets."""
    rng = random.Random(1)
    groups: list[list[Decimal]] = []
    for _ in range(1_500):
        n = rng.choice([1, 2, 2, 3, 5, 10, 50, 200])
        if rng.random() < 0.2:  # nearly equal values
            base = rng.randint(1, 10**7)
            cents = [base + rng.choice([0, 0, 1]) for _ in range(n)]
        else:
            cents = [rng.randint(1, rng.choice([100, 10**4, 10**7, 10**9])) for _ in range(n)]
        groups.append([Decimal(c).scaleb(-2) for c in cents])
    nights = [[rng.randint(0, 1) for _ in g] for g in groups]
    with psycopg.connect(database_url) as conn:
        conn.execute("create temp table v (g int, x numeric(12, 2), first numeric(12, 2), night int)")
        with conn.cursor().copy("copy v from stdin") as copy_in:
            for g, xs in enumerate(groups):
                for x, night in zip(xs, nights[g], strict=True):
                    copy_in.write_row((g, x, xs[0], night))
        rows = conn.execute(
            """select g, avg(x)::float8, stddev_samp(x)::float8,
                      case when stddev_samp(x) > 0 then ((min(first) - avg(x)) / stddev_samp(x))::float8 end,
                      avg(night)::float8
               from v group by g order by g"""
        ).fetchall()
    mismatched = []
    for g, mean, std, zscore, night_share in rows:
        cents = [int(x.scaleb(2)) for x in groups[g]]
        total, squares = numeric.Num(sum(cents), 2), numeric.Num(sum(c * c for c in cents), 4)
        m = numeric.avg(len(cents), total)
        s = numeric.stddev_samp(len(cents), total, squares)
        z = (
            numeric.to_double(numeric.divide(numeric.subtract(numeric.Num(cents[0], 2), m), s))
            if m is not None and s is not None and s.unscaled > 0
            else None
        )
        ours = (
            numeric.to_double(m),
            numeric.to_double(s),
            z,
            numeric.to_double(numeric.avg(len(cents), numeric.Num(sum(nights[g]), 0))),
        )
        if ours != (mean, std, zscore, night_share):
            mismatched.append((g, ours, (mean, std, zscore, night_share)))
    assert len(rows) == len(groups) and not mismatched, mismatched[:5]


def test_online_read_merges_the_speed_layer_behind_its_setting(
    parity_world: dict[str, Any], redis_url: str
) -> None:
    """``OnlineStore.read_at`` with the speed layer on returns dbt's values at the request's time (the
    typed floats the scorer uses); off it is ``read`` as before."""
    import math

    from rtml.features import request_features
    from rtml.features.feature_registry import load_registry
    from rtml.features.online import OnlineStore
    from rtml.features.online.reader import same_value

    registry, prefix = load_registry(), f"rtmltest-speedread-{uuid.uuid4().hex[:8]}"
    on = OnlineStore(redis_url, registry, online=OnlineSettings(key_prefix=prefix, speed_layer_enabled=True))
    off = OnlineStore(
        redis_url, registry, online=OnlineSettings(key_prefix=prefix, speed_layer_enabled=False)
    )
    try:
        assert off.speed is None and on.speed is not None
        on.speed.push_snapshots(parity_world["second"].values(), W2_US, W2_US + 3 * HOUR_US)
        events = [e for h in parity_world["worlds"] for e in h.events if e.event_ts_us >= W2_US]
        on.speed.apply_many(events, W2_US)
        for event in events[:150]:
            merged = on.read_at(
                event.customer_id, event.merchant_id, event_ts=event.event_ts, amount=event.amount
            )
            assert merged.speed_layer == "merged"
            row = parity_world["dbt"][event.transaction_id]
            for column in FEATURE_COLUMNS:
                want = row[column]
                want = math.nan if want is None else want if isinstance(want, bool | int) else float(want)
                assert same_value(merged.customer[column], want), (event.transaction_id, column)
            # what the scorer derives from the merged state agrees with dbt
            derived = request_features.compute(
                amount=event.amount,
                event_ts=event.event_ts,
                merchant_id=event.merchant_id,
                customer_state=merged.customer,
            )
            assert derived["is_new_merchant"] == row["is_new_merchant"]
            prev = row["seconds_since_prev_txn"]
            assert same_value(derived["seconds_since_prev_txn"], math.nan if prev is None else prev)
            plain = off.read_at(
                event.customer_id, event.merchant_id, event_ts=event.event_ts, amount=event.amount
            )
            assert plain.speed_layer == "disabled"
            batch = off.read(event.customer_id, event.merchant_id).customer
            assert all(same_value(plain.customer[k], v) for k, v in batch.items())
        beyond = on.read_at(event.customer_id, "m1", event_ts=from_us(W2_US + 3 * HOUR_US + 1), amount=1.0)
        assert beyond.speed_layer == "beyond_horizon"
    finally:
        if on.speed is not None:
            on.speed.purge()
        on.close()
        off.close()


def test_a_burst_is_visible_from_its_second_payment(parity_world: dict[str, Any], redis_url: str) -> None:
    """The issue's burst: eight payments one second apart, each at a new merchant. With the speed
    layer, the second payment already sees the first (before it, every one got the last refresh's
    values)."""
    from rtml.features.feature_registry import load_registry
    from rtml.features.online import OnlineStore

    customer = "burst-customer"  # a card never seen before the watermark (a stolen one, first used)
    store = OnlineStore(
        redis_url,
        load_registry(),
        online=OnlineSettings(key_prefix=f"rtmltest-burst-{uuid.uuid4().hex[:8]}", speed_layer_enabled=True),
    )
    assert store.speed is not None
    try:
        store.speed.push_snapshots(parity_world["second"].values(), W2_US, W2_US + 3 * HOUR_US)
        burst = [
            TransactionEvent(f"burst-{i}", customer, f"new-{i}", 99.0, W2_US + 10 * SECOND_US + i * SECOND_US)
            for i in range(8)
        ]
        seen = []
        for i, event in enumerate(burst):  # scored, then published: each is read before it is applied
            feats = store.read_at(customer, event.merchant_id, event_ts=event.event_ts, amount=event.amount)
            seen.append(feats.customer)
            # unknown to the batch views, known to the stream from its second payment on
            assert ("customer" in feats.missing) == (i == 0)
            assert store.speed.apply(event, W2_US) is Outcome.APPLIED
        assert [c["txn_count_1h"] for c in seen] == list(range(8))
        assert [c["distinct_merchants_24h"] for c in seen] == list(range(8))
        assert [c["amount_sum_1h"] for c in seen] == [99.0 * i for i in range(8)]
        assert all(c["seconds_since_prev_txn"] == 1.0 for c in seen[1:])
        assert all(c["is_new_merchant"] for c in seen)
    finally:
        store.speed.purge()
        store.close()
