"""Request-time features: the ONE place where the scorer derives the features that cannot be stored
(``meta.online: request`` in ``dbt_project/models/features/_features.yml``) from the customer's stored
state, exactly as ``customer_features.sql`` defines them offline (see ``customer_features_latest.sql``):

    seconds_since_prev_txn = request_ts - last_txn_ts                 (NaN: no earlier transaction)
    amount_zscore_30d      = (amount - amount_mean_30d) / amount_std_30d   (NaN unless std > 0)
    is_new_merchant        = merchant_id not in known_merchant_ids

and the model's input row (the columns of ``rtml.training.dataset.feature_spec()``, with the dtypes of
``rtml.training.dataset.prepare``: numeric and bool → float, categorical → str or None).

The request carries no ``merchant_category`` / ``country`` by default (the issue's transaction has id,
customer, merchant, amount, currency, timestamp, channel): they are optional request fields, and a
missing one is passed as ``None``, which the model's encoder treats as missing (as in training).

No BentoML here: the scoring service and the tests import this module.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

REQUEST_FEATURES = ("seconds_since_prev_txn", "amount_zscore_30d", "is_new_merchant")

EXACT_AT = "request_features_at"
"""Key of a customer state merged by the speed layer (``OnlineStore.read_many(at=...)``): the request
time its values are exact for, the request features included (the z-score divided in numeric from the
numeric mean and standard deviation, as dbt does: bit-identical, where dividing the doubles is not).
For that time ``compute`` returns them as they are."""


def seconds_since_prev_txn(event_ts: datetime, last_txn_ts: datetime | None) -> float:
    """``extract(epoch from event_ts - prev_event_ts)``; NaN without an earlier transaction."""
    if last_txn_ts is None:
        return math.nan
    return (event_ts - last_txn_ts).total_seconds()


def amount_zscore_30d(amount: float, amount_mean_30d: float | None, amount_std_30d: float | None) -> float:
    """``case when amount_std_30d > 0 then (amount - amount_mean_30d) / amount_std_30d end``."""
    if amount_std_30d is None or amount_mean_30d is None:
        return math.nan
    std, mean = float(amount_std_30d), float(amount_mean_30d)
    if math.isnan(std) or math.isnan(mean) or not std > 0:
        return math.nan
    return (float(amount) - mean) / std


def is_new_merchant(merchant_id: str, known_merchant_ids: Iterable[str] | None) -> bool:
    """``not exists (an earlier transaction of the customer at this merchant)``."""
    return merchant_id not in (known_merchant_ids or ())


def compute(
    *, amount: float, event_ts: datetime, merchant_id: str, customer_state: Mapping[str, Any]
) -> dict[str, float | bool]:
    """The request features from the customer's stored state (``amount_mean_30d``, ``amount_std_30d``,
    ``last_txn_ts``, ``known_merchant_ids``; absent keys mean "no history"), or the speed layer's exact
    ones when the state was merged for this very time (``EXACT_AT``)."""
    if customer_state.get(EXACT_AT) == event_ts:
        return {name: customer_state[name] for name in REQUEST_FEATURES}
    return {
        "seconds_since_prev_txn": seconds_since_prev_txn(event_ts, customer_state.get("last_txn_ts")),
        "amount_zscore_30d": amount_zscore_30d(
            amount, customer_state.get("amount_mean_30d"), customer_state.get("amount_std_30d")
        ),
        "is_new_merchant": is_new_merchant(merchant_id, customer_state.get("known_merchant_ids")),
    }


def model_row(
    transaction: Mapping[str, Any],
    customer: Mapping[str, Any],
    merchant: Mapping[str, Any],
    numeric: Iterable[str],
    categorical: Iterable[str],
) -> dict[str, Any]:
    """One model input row. ``transaction``: ``amount``, ``timestamp`` (aware datetime), ``merchant_id``
    and the categorical request fields (absent → None); ``customer`` / ``merchant``: the online store's
    typed values (defaults for unknown entities)."""
    derived = compute(
        amount=float(transaction["amount"]),
        event_ts=transaction["timestamp"],
        merchant_id=str(transaction["merchant_id"]),
        customer_state=customer,
    )
    row: dict[str, Any] = {}
    for name in categorical:
        value = transaction.get(name)
        row[name] = None if value is None else str(value)
    for name in numeric:
        if name in derived:
            value = derived[name]
        elif name in transaction:
            value = transaction[name]
        elif name in customer:
            value = customer[name]
        else:
            value = merchant.get(name)
        row[name] = _as_float(value)
    return row


def _as_float(value: Any) -> float:
    if value is None:
        return math.nan
    return float(value)
