"""The batch snapshot the speed layer starts from: one customer's row of dbt's
``features.customer_stream_snapshot`` (see its SQL and docs/streaming.md), as of the watermark
``as_of_ts``: exact window aggregates over ``[as_of_ts - w, as_of_ts)``, the edge events that leave
those windows before ``valid_until``, the merchants of the last 24 hours with their newest time, and
the all-time state (newest transaction, known merchants).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.rows import dict_row

from rtml.streaming.events import DAY_US, HOUR_US, to_us

RELATION = "features.customer_stream_snapshot"

WINDOWS_US: dict[str, int] = {"1h": HOUR_US, "24h": 24 * HOUR_US, "7d": 7 * DAY_US, "30d": 30 * DAY_US}
"""customer_features' windows [t - w, t). ``interval '7 days'`` is 7 x 24 h when the session time zone
has no daylight-saving change (UTC: the platform's servers); see docs/streaming.md."""


@dataclass(frozen=True)
class BatchSnapshot:
    customer_id: str
    as_of_us: int
    """The watermark W: the snapshot holds exactly the customer's events before it."""
    valid_until_us: int
    """W + horizon: the edge events cover every window's trailing edge up to here."""
    txn_count: Mapping[str, int] = field(default_factory=lambda: dict.fromkeys(WINDOWS_US, 0))
    amount_cents: Mapping[str, int] = field(default_factory=lambda: dict.fromkeys(WINDOWS_US, 0))
    """Each window's amount sum, in cents (numeric(14,2) as an integer)."""
    night_count_7d: int = 0
    amount_sumsq_30d: int = 0
    """The sum of the squared amounts over 30 days, in cents² (numeric scale 4 as an integer)."""
    edge_events: tuple[tuple[int, int], ...] = ()
    """(event time, amount in cents) of the events in [W - w, min(W, W - w + horizon)) for some window
    w, in time order (the merge finds each window's leaving events by bisection)."""
    merchant_last_24h: Mapping[str, int] = field(default_factory=dict)
    """Merchant → newest event time within [W - 24 h, W)."""
    last_txn_us: int | None = None
    known_merchant_ids: Collection[str] = frozenset()
    """Every merchant of the customer's transactions before W (a set, or ``PackedIds``)."""

    @classmethod
    def empty(cls, customer_id: str, as_of_us: int, valid_until_us: int) -> BatchSnapshot:
        """A customer without any event before the watermark."""
        return cls(customer_id, as_of_us, valid_until_us)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> BatchSnapshot:
        """A row of ``features.customer_stream_snapshot`` (column name → value, as psycopg reads it)."""
        return cls(
            customer_id=row["customer_id"],
            as_of_us=to_us(row["as_of_ts"]),
            valid_until_us=to_us(row["valid_until"]),
            txn_count={w: int(row[f"txn_count_{w}"]) for w in WINDOWS_US},
            amount_cents={w: _scaled(row[f"amount_sum_{w}"], 2) for w in WINDOWS_US},
            night_count_7d=int(row["night_count_7d"]),
            amount_sumsq_30d=_scaled(row["amount_sumsq_30d"], 4),
            edge_events=tuple(
                sorted(
                    (to_us(ts), _scaled(amount, 2))
                    for ts, amount in zip(row["edge_ts"], row["edge_amounts"], strict=True)
                )
            ),
            merchant_last_24h={
                m: to_us(ts)
                for m, ts in zip(row["merchant_ids_24h"], row["merchant_last_ts_24h"], strict=True)
            },
            last_txn_us=None if row["last_txn_ts"] is None else to_us(row["last_txn_ts"]),
            known_merchant_ids=frozenset(row["known_merchant_ids"] or ()),
        )


def _scaled(value: Decimal | int, scale: int) -> int:
    """``value * 10**scale`` as an integer; a value with more digits is refused (never rounded)."""
    scaled = Decimal(value).scaleb(scale)
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{value} has more than {scale} decimal places")
    return int(scaled)


def fetch_snapshots(database_url: str, customer_ids: Iterable[str] | None = None) -> Iterator[BatchSnapshot]:
    """The snapshot rows (of ``customer_ids``, or all) from PostgreSQL."""
    sql = f"select * from {RELATION}"
    params: tuple[Any, ...] = ()
    if customer_ids is not None:
        sql += " where customer_id = any(%s)"
        params = (list(customer_ids),)
    with psycopg.connect(database_url) as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql, params)
        for row in cur:
            yield BatchSnapshot.from_row(row)


def snapshot_watermark(database_url: str) -> tuple[datetime, datetime] | None:
    """(as_of_ts, valid_until) of the snapshot table; None when it is empty or dbt never built it."""
    with psycopg.connect(database_url) as conn:
        if conn.execute("select to_regclass(%s)", (RELATION,)).fetchone() == (None,):
            return None
        row = conn.execute(f"select as_of_ts, valid_until from {RELATION} limit 1").fetchone()
    return None if row is None else (row[0], row[1])
