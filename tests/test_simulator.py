"""The transaction simulator: determinism, schema, fraud patterns, labels, dirty rows and drift."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from rtml.config import IngestSettings, SimulatorSettings
from rtml.sources.scenarios import ScenarioTimeline
from rtml.sources.schema import LABELS, TRANSACTIONS
from rtml.sources.simulator import DRIFT_SCENARIOS, Simulator

START = datetime(2026, 11, 2, tzinfo=UTC)  # a Monday
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
INGEST = IngestSettings()  # the currencies and the amount ceiling of valid rows


def simulator(timeline: ScenarioTimeline | Path | None = None, **overrides: Any) -> Simulator:
    """A simulator of the tests' small world; ``timeline``: its run-time scenarios (default none);
    ``overrides``: SimulatorSettings."""
    values: dict[str, Any] = {
        "seed": 11,
        "start": START,
        "customers": 2_000,
        "merchants": 300,
        "transactions_per_day": 20_000,
        "dirty_share": 0.002,
        "drift_scenario": None,
        "drift_start": None,
    }
    values.update(overrides)
    return Simulator(
        SimulatorSettings(**values), INGEST, ScenarioTimeline() if timeline is None else timeline
    )


@pytest.fixture(scope="module")
def sim() -> Simulator:
    return simulator()


@pytest.fixture(scope="module")
def two_days(sim: Simulator) -> pd.DataFrame:
    """Two days of transactions with their ground truth."""
    tx = sim.transactions(START, START + 2 * DAY).to_pandas()
    truth = sim.truth(START, START + 2 * DAY).to_pandas()
    assert (tx.transaction_id.values == truth.transaction_id.values).all()
    return tx.assign(
        is_fraud=truth.is_fraud.values, pattern=truth.pattern.values, dirty=truth.dirty_kind.values
    )


# --- determinism --------------------------------------------------------------------------------------
def test_same_seed_and_window_give_identical_tables(sim: Simulator) -> None:
    again = simulator()
    assert sim.transactions(START, START + 6 * HOUR).equals(again.transactions(START, START + 6 * HOUR))


def test_chunking_does_not_change_rows(sim: Simulator) -> None:
    day = sim.transactions(START, START + DAY)
    hourly = pa.concat_tables([sim.transactions(START + i * HOUR, START + (i + 1) * HOUR) for i in range(24)])
    chunked = pa.concat_tables(list(sim.iter_transactions(START, START + DAY, hours_per_chunk=5)))
    odd = pa.concat_tables(
        [
            sim.transactions(START, START + timedelta(minutes=90)),
            sim.transactions(START + timedelta(minutes=90), START + DAY),
        ]
    )
    assert day.equals(hourly)
    assert day.equals(chunked)
    assert day.equals(odd)


def test_iter_transactions_yields_chunks_of_the_requested_size(sim: Simulator) -> None:
    chunks = list(sim.iter_transactions(START, START + 5 * HOUR, hours_per_chunk=2))
    assert len(chunks) == 3
    last = chunks[-1].column("event_ts").to_pylist()
    assert min(last) >= START + 4 * HOUR


def test_different_seed_gives_different_rows(sim: Simulator) -> None:
    other = simulator(seed=12)
    a, b = sim.transactions(START, START + HOUR), other.transactions(START, START + HOUR)
    assert a.column("customer_id").to_pylist()[:50] != b.column("customer_id").to_pylist()[:50]


def test_nothing_before_sim_start_and_empty_windows(sim: Simulator) -> None:
    before = sim.transactions(START - DAY, START)
    assert before.num_rows == 0
    assert before.schema.equals(TRANSACTIONS)
    assert sim.transactions(START + HOUR, START + HOUR).num_rows == 0
    assert sim.labels(START - DAY, START).schema.equals(LABELS)


# --- schema and shape ---------------------------------------------------------------------------------
def test_schema_window_order_and_ids(sim: Simulator, two_days: pd.DataFrame) -> None:
    start, end = START + timedelta(minutes=30), START + timedelta(hours=5, minutes=10)
    table = sim.transactions(start, end)
    assert table.schema.equals(TRANSACTIONS, check_metadata=False)
    ts = table.column("event_ts").to_pylist()
    assert min(ts) >= start and max(ts) < end
    df = two_days
    assert df.sort_values(["event_ts", "transaction_id"], kind="stable").index.equals(df.index)
    duplicated = df.transaction_id.duplicated(keep="first")
    assert (df.loc[duplicated, "dirty"] == "duplicate_transaction_id").all()
    assert duplicated.sum() == (df.dirty == "duplicate_transaction_id").sum()
    assert df.transaction_id.str.fullmatch(r"t\d{14}").all()


def test_volume_and_daily_cycle(two_days: pd.DataFrame) -> None:
    per_day = len(two_days) / 2
    assert 15_000 < per_day < 25_000
    by_hour = two_days.groupby(two_days.event_ts.dt.hour).size()
    assert by_hour.loc[[2, 3, 4]].mean() < 0.3 * by_hour.loc[[12, 18]].mean()


def test_clean_rows_are_valid(two_days: pd.DataFrame) -> None:
    clean = two_days[two_days.dirty == ""]
    assert (clean.amount > 0).all() and (clean.amount <= INGEST.max_amount).all()
    assert clean.currency.isin(INGEST.currencies).all()
    assert (clean.customer_id != "").all() and (clean.merchant_id != "").all()
    assert clean.channel.isin(["pos", "online", "atm"]).all()
    assert (clean.loc[clean.merchant_category == "atm", "channel"] == "atm").all()


# --- fraud patterns -----------------------------------------------------------------------------------
def test_fraud_rate_is_plausible(two_days: pd.DataFrame) -> None:
    rate = two_days.is_fraud.mean()
    assert 0.005 <= rate <= 0.02


def test_card_testing_tiny_digital_goods_amounts(two_days: pd.DataFrame) -> None:
    df = two_days
    tiny = (df.amount <= 3.0) & (df.amount > 0) & (df.merchant_category == "digital_goods")
    assert df.loc[tiny, "is_fraud"].sum() >= 20
    assert df.loc[tiny, "is_fraud"].mean() > 10 * df.is_fraud.mean()


def test_account_takeover_bursts(two_days: pd.DataFrame) -> None:
    ato = two_days[two_days.pattern == "account_takeover"]
    per_customer_hour = ato.groupby([ato.customer_id, ato.event_ts.dt.floor("h")]).size()
    assert (per_customer_hour >= 3).sum() >= 5
    assert (ato.channel == "online").all()
    legit = two_days[~two_days.is_fraud]
    assert ato.amount.median() > 3 * legit.amount.median()


def test_high_risk_categories_at_night(two_days: pd.DataFrame) -> None:
    df = two_days
    night_risky = (df.event_ts.dt.hour < 6) & df.merchant_category.isin(["gambling", "crypto", "electronics"])
    assert df.loc[night_risky, "is_fraud"].sum() >= 10
    assert df.loc[night_risky, "is_fraud"].mean() > 5 * df.is_fraud.mean()


# --- labels -------------------------------------------------------------------------------------------
def test_every_clean_transaction_gets_exactly_one_label(sim: Simulator) -> None:
    tx = sim.transactions(START, START + 6 * HOUR).to_pandas()
    truth = sim.truth(START, START + 6 * HOUR).to_pandas()
    table = sim.labels(START, START + 31 * DAY)
    assert table.schema.equals(LABELS, check_metadata=False)
    mine = pc.is_in(table.column("transaction_id"), value_set=pa.array(tx.transaction_id))
    early = table.filter(mine).to_pandas()
    clean_ids = tx.loc[truth.dirty_kind.values == "", "transaction_id"]
    assert early.transaction_id.is_unique
    assert set(early.transaction_id) == set(clean_ids)
    joined = early.merge(tx.drop_duplicates("transaction_id"), on="transaction_id")
    assert (joined.label_ts > joined.event_ts).all()
    assert (joined.label_ts - joined.event_ts).max() <= timedelta(days=30)
    expected = dict(zip(truth.transaction_id, truth.is_fraud, strict=False))
    assert (joined.is_fraud == joined.transaction_id.map(expected)).all()
    assert (joined.label_source == np.where(joined.is_fraud, "chargeback", "confirmed")).all()
    delay = joined.label_ts - joined.event_ts
    assert delay[joined.is_fraud].mean() > delay[~joined.is_fraud].mean()


def test_labels_are_deterministic_and_chunk_invariant(sim: Simulator) -> None:
    first = START + 4 * DAY
    whole = sim.labels(first, first + 2 * DAY)
    assert whole.num_rows > 0
    daily = pa.concat_tables([sim.labels(first, first + DAY), sim.labels(first + DAY, first + 2 * DAY)])
    assert whole.equals(daily)
    assert whole.equals(simulator().labels(first, first + 2 * DAY))
    df = whole.to_pandas()
    assert df.sort_values(["label_ts", "transaction_id"]).index.equals(df.index)
    assert (df.label_ts >= first).all() and (df.label_ts < first + 2 * DAY).all()


# --- dirty rows ---------------------------------------------------------------------------------------
def test_dirty_rows_of_every_kind() -> None:
    sim = simulator(dirty_share=0.02)
    tx = sim.transactions(START, START + DAY).to_pandas()
    kind = sim.truth(START, START + DAY).to_pandas().dirty_kind.values
    assert 0.014 < (kind != "").mean() < 0.026
    first_seen = ~tx.transaction_id.duplicated(keep="first")
    checks = {
        "non_positive_amount": tx.amount <= 0,
        "amount_above_max": tx.amount > INGEST.max_amount,
        "unknown_currency": ~tx.currency.isin(INGEST.currencies),
        "empty_customer_id": tx.customer_id == "",
        "empty_merchant_id": tx.merchant_id == "",
        "duplicate_transaction_id": ~first_seen,
    }
    for name, violates in checks.items():
        rows = kind == name
        assert rows.sum() >= 10, name
        assert violates[rows].all(), name
        assert not violates[kind == ""].any(), name


def test_no_dirty_rows_when_share_is_zero() -> None:
    sim = simulator(dirty_share=0.0)
    truth = sim.truth(START, START + DAY).to_pandas()
    assert (truth.dirty_kind == "").all()
    assert truth.transaction_id.is_unique


# --- drift --------------------------------------------------------------------------------------------
def drifted(scenario: str) -> tuple[Simulator, Simulator]:
    return simulator(), simulator(drift_scenario=scenario, drift_start=START + DAY)


def test_amount_inflation() -> None:
    base, drift = drifted("amount_inflation")
    assert base.transactions(START, START + DAY).equals(drift.transactions(START, START + DAY))
    before = base.transactions(START + DAY, START + 2 * DAY).to_pandas()
    after = drift.transactions(START + DAY, START + 2 * DAY).to_pandas()
    clean = before.amount.between(0.01, 50_000) & after.amount.between(0.01, 50_000)
    assert after.amount[clean].mean() >= 1.4 * before.amount[clean].mean()


def test_new_fraud_pattern() -> None:
    _, drift = drifted("new_fraud_pattern")
    before = drift.truth(START, START + DAY).to_pandas()
    after_tx = drift.transactions(START + DAY, START + 2 * DAY).to_pandas()
    after = drift.truth(START + DAY, START + 2 * DAY).to_pandas()
    assert not (before.pattern == "daytime_low_risk").any()
    new = after_tx[after.pattern.values == "daytime_low_risk"]
    assert len(new) >= 30
    assert new.merchant_category.isin(["grocery", "fashion"]).all()
    assert new.event_ts.dt.hour.between(8, 19).all()
    assert after.is_fraud.mean() > before.is_fraud.mean()


def test_merchant_mix_shift() -> None:
    _, drift = drifted("merchant_mix_shift")
    before = drift.transactions(START, START + DAY).to_pandas()
    after = drift.transactions(START + DAY, START + 2 * DAY).to_pandas()

    def share(df: pd.DataFrame) -> float:
        return float(df.merchant_category.isin(["digital_goods", "travel"]).mean())

    assert share(after) > 1.5 * share(before)


def test_unknown_scenario_is_rejected() -> None:
    with pytest.raises(ValueError) as err:
        simulator(drift_scenario="solar_flare")
    for name in DRIFT_SCENARIOS:
        assert name in str(err.value)
