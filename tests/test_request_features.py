"""Request-time features (``rtml.features.request_features``) against the offline SQL on real rows:
for transactions of the simulated training world, the ``features.customer_features`` value must equal
the request-time computation from the customer's state just before the transaction (the state the
online store would hold: 30-day mean and std, newest earlier transaction, merchants seen before).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from rtml.features import request_features as rf

T0 = datetime(2026, 11, 1, 12, tzinfo=UTC)


def test_formulas_on_crafted_values() -> None:
    assert rf.seconds_since_prev_txn(T0, T0 - timedelta(minutes=2, microseconds=5)) == 120.000005
    assert math.isnan(rf.seconds_since_prev_txn(T0, None))
    assert rf.amount_zscore_30d(30.0, 10.0, 5.0) == 4.0
    for mean, std in ((10.0, 0.0), (10.0, math.nan), (math.nan, math.nan), (None, None), (10.0, -1.0)):
        assert math.isnan(rf.amount_zscore_30d(30.0, mean, std)), (mean, std)
    assert rf.is_new_merchant("m1", frozenset({"m2"}))
    assert not rf.is_new_merchant("m2", frozenset({"m2"}))
    assert rf.is_new_merchant("m1", None)


def test_model_row_types_and_sources() -> None:
    txn = {"amount": 25.5, "timestamp": T0, "merchant_id": "m1", "channel": "pos", "currency": "EUR"}
    customer = {
        "txn_count_1h": 2,
        "amount_mean_30d": 20.5,
        "amount_std_30d": 2.5,
        "last_txn_ts": T0 - timedelta(seconds=30),
        "known_merchant_ids": frozenset({"m1"}),
    }
    merchant = {"merchant_fraud_rate_30d": 0.01}
    numeric = [
        "amount",
        "txn_count_1h",
        "amount_zscore_30d",
        "seconds_since_prev_txn",
        "is_new_merchant",
        "merchant_fraud_rate_30d",
        "merchant_txn_count_7d",
    ]
    row = rf.model_row(txn, customer, merchant, numeric, ["merchant_category", "channel", "currency"])
    assert row["merchant_category"] is None and row["channel"] == "pos"
    assert row["amount"] == 25.5 and row["txn_count_1h"] == 2.0
    assert row["amount_zscore_30d"] == 2.0 and row["seconds_since_prev_txn"] == 30.0
    assert row["is_new_merchant"] == 0.0 and row["merchant_fraud_rate_30d"] == 0.01
    assert math.isnan(row["merchant_txn_count_7d"])
    assert all(isinstance(row[name], float) for name in numeric)


STATE_SQL = """
select f.transaction_id, t.amount::float8, t.event_ts, t.merchant_id,
       f.amount_mean_30d, f.amount_std_30d,
       f.amount_zscore_30d, f.seconds_since_prev_txn, f.is_new_merchant,
       (select max(p.event_ts) from features.stg_transactions p
         where p.customer_id = t.customer_id and p.event_ts < t.event_ts) as last_txn_ts,
       (select coalesce(array_agg(distinct p.merchant_id), '{}') from features.stg_transactions p
         where p.customer_id = t.customer_id and p.event_ts < t.event_ts) as known_merchant_ids
from features.customer_features f
join features.stg_transactions t using (transaction_id)
where f.transaction_id in (select transaction_id from features.customer_features
                           order by md5(transaction_id) limit 3000)
"""


@pytest.fixture(scope="module")
def offline_rows(training_db: str) -> list[tuple]:
    with psycopg.connect(training_db) as conn:
        schema = conn.execute(
            "select table_schema from information_schema.tables where table_name = 'stg_transactions'"
        ).fetchone()
        assert schema is not None, "stg_transactions not built"
        rows = conn.execute(
            STATE_SQL.replace("features.stg_transactions", f"{schema[0]}.stg_transactions")
        ).fetchall()
    assert len(rows) == 3000
    return rows


def test_request_features_equal_offline_sql(offline_rows: list[tuple]) -> None:
    kinds = {"first": 0, "zscore": 0, "new": 0, "known": 0}
    for txn_id, amount, event_ts, merchant_id, mean, std, zscore, since, new, last_ts, known in offline_rows:
        state = {
            "amount_mean_30d": math.nan if mean is None else mean,
            "amount_std_30d": math.nan if std is None else std,
            "last_txn_ts": last_ts,
            "known_merchant_ids": frozenset(known),
        }
        got = rf.compute(amount=amount, event_ts=event_ts, merchant_id=merchant_id, customer_state=state)
        if since is None:
            assert math.isnan(got["seconds_since_prev_txn"]), txn_id
            kinds["first"] += 1
        else:
            assert got["seconds_since_prev_txn"] == pytest.approx(since, rel=0, abs=1e-6), txn_id
        if zscore is None:
            assert math.isnan(got["amount_zscore_30d"]), txn_id
        else:
            assert got["amount_zscore_30d"] == pytest.approx(zscore, rel=1e-12, abs=1e-12), txn_id
            kinds["zscore"] += 1
        assert got["is_new_merchant"] is new, txn_id
        kinds["new" if new else "known"] += 1
    # the sample exercises every branch
    assert all(count > 0 for count in kinds.values()), kinds
