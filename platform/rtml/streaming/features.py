"""Customer features at request time: the batch snapshot at the watermark W merged with the stream.

``customer_features`` in dbt (``dbt_project/models/features/customer_features.sql``) is the ONE
definition; this module mirrors it for a transaction at any time t in [W, W + horizon], and the parity
test (tests/test_streaming_features.py) is what keeps the two equal: every column, exactly, against
dbt's rows. For each window w (rows of the customer in [t - w, t), strictly earlier, ties excluded):

    value(t) = snapshot value over [W - w, W)
             - edge events in [W - w, min(t - w, W))      (batch-era rows that left the window)
             + stream events in [max(W, t - w), t)

Counts and numeric sums are exact (integer cents); mean and standard deviation are PostgreSQL's numeric
``avg`` / ``stddev_samp`` from the exact count, sum and sum of squares (``rtml.streaming.numeric``),
then cast to double as dbt does. Distinct merchants come from each merchant's newest time in the
snapshot's 24 hours plus the stream's; the previous transaction and the known merchants from the
snapshot's all-time state plus the stream's earlier events.

Past ``valid_until`` (W + horizon) the snapshot no longer holds the events leaving the windows: the
features cannot be exact and :class:`BeyondHorizon` is raised (the caller falls back to the batch
values, as before the speed layer, and counts it).
"""

from __future__ import annotations

from bisect import bisect_left
from operator import itemgetter
from typing import Any

from rtml.streaming import numeric
from rtml.streaming.events import HOUR_US
from rtml.streaming.numeric import Num
from rtml.streaming.snapshot import WINDOWS_US, BatchSnapshot
from rtml.streaming.state import CustomerStreamState, StreamedEvent

FEATURE_COLUMNS = (
    "txn_count_1h",
    "amount_sum_1h",
    "txn_count_24h",
    "amount_sum_24h",
    "txn_count_7d",
    "amount_sum_7d",
    "txn_count_30d",
    "amount_mean_30d",
    "amount_std_30d",
    "amount_zscore_30d",
    "distinct_merchants_24h",
    "seconds_since_prev_txn",
    "night_share_7d",
    "is_new_merchant",
)
"""The feature columns of ``customer_features``, as this module returns them."""

_DAY_US = 24 * HOUR_US
_event_time = itemgetter(0)


class NotExact(ValueError):
    """The snapshot and the state cannot give dbt's exact values at this time."""


class BeyondHorizon(NotExact):
    """t is after the snapshot's ``valid_until``: the next batch refresh (a newer watermark) is due."""


def _is_night(ts_us: int) -> bool:
    """``extract(hour from event_ts at time zone 'UTC') < 6``."""
    return (ts_us // HOUR_US) % 24 < 6


def customer_features_at(
    snapshot: BatchSnapshot,
    state: CustomerStreamState | None,
    *,
    event_ts_us: int,
    merchant_id: str,
    amount: float,
) -> dict[str, Any]:
    """``customer_features``' row for a transaction of the snapshot's customer at ``event_ts_us`` at
    ``merchant_id`` for ``amount``: ints, ``Decimal`` sums (numeric(14,2)), floats or ``None`` (SQL
    NULL), a bool."""
    t, w0 = event_ts_us, snapshot.as_of_us
    if t < w0:
        raise NotExact(f"t={t} is before the snapshot's watermark {w0}")
    if t > snapshot.valid_until_us:
        raise BeyondHorizon(f"t={t} is past the snapshot's horizon {snapshot.valid_until_us}")
    stream: list[StreamedEvent] = []
    if state is not None:
        if state.customer_id != snapshot.customer_id:
            raise ValueError(
                f"state of {state.customer_id!r} merged with snapshot of {snapshot.customer_id!r}"
            )
        if state.watermark_us > w0:
            raise NotExact("the stream state dropped events the snapshot does not hold (newer watermark)")
        # events in [state watermark, W) are in the snapshot already
        stream = [e for e in state.events.values() if w0 <= e.event_ts_us < t]

    out: dict[str, Any] = {}
    night_7d = sumsq_30d = count_30d = 0
    sum_30d = Num(0, 2)
    edges = snapshot.edge_events  # in time order: each window's leaving events are one slice
    for name, width in WINDOWS_US.items():
        lo = t - width
        start = bisect_left(edges, w0 - width, key=_event_time)
        leaving = edges[start : max(start, bisect_left(edges, min(lo, w0), key=_event_time))]
        entered = [e for e in stream if e.event_ts_us >= lo]
        count = snapshot.txn_count[name] - len(leaving) + len(entered)
        cents = snapshot.amount_cents[name] - sum(c for _, c in leaving) + sum(e.cents for e in entered)
        out[f"txn_count_{name}"] = count
        out[f"amount_sum_{name}"] = Num(cents, 2).to_decimal()
        if name == "7d":
            night_7d = snapshot.night_count_7d - sum(_is_night(ts) for ts, _ in leaving)
            night_7d += sum(_is_night(e.event_ts_us) for e in entered)
        if name == "30d":
            count_30d, sum_30d = count, Num(cents, 2)
            sumsq_30d = snapshot.amount_sumsq_30d - sum(c * c for _, c in leaving)
            sumsq_30d += sum(e.cents * e.cents for e in entered)

    mean = numeric.avg(count_30d, sum_30d)
    std = numeric.stddev_samp(count_30d, sum_30d, Num(sumsq_30d, 4))
    out["amount_mean_30d"] = numeric.to_double(mean)
    out["amount_std_30d"] = numeric.to_double(std)
    zscore = None
    if mean is not None and std is not None and std.unscaled > 0:
        deviation = numeric.subtract(Num(numeric.amount_cents(amount), 2), mean)
        zscore = numeric.to_double(numeric.divide(deviation, std))
    out["amount_zscore_30d"] = zscore

    day_lo = t - _DAY_US
    merchants = {m for m, last in snapshot.merchant_last_24h.items() if last >= day_lo}
    merchants.update(e.merchant_id for e in stream if e.event_ts_us >= day_lo)
    out["distinct_merchants_24h"] = len(merchants)

    previous = [e.event_ts_us for e in stream]
    if snapshot.last_txn_us is not None:
        previous.append(snapshot.last_txn_us)
    # extract(epoch from t - prev): exact microseconds, then the nearest double
    out["seconds_since_prev_txn"] = (t - max(previous)) / 1_000_000 if previous else None

    out["night_share_7d"] = numeric.to_double(numeric.avg(out["txn_count_7d"], Num(night_7d, 0)))
    out["is_new_merchant"] = merchant_id not in snapshot.known_merchant_ids and all(
        e.merchant_id != merchant_id for e in stream
    )
    return {name: out[name] for name in FEATURE_COLUMNS}
