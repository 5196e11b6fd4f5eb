"""The transaction event of the speed layer: what is published to the stream and applied to the state.

One event per authorised transaction, idempotent by ``transaction_id`` (a retry, a replay or a duplicate
counts once). It carries the whole transaction record (``rtml.sources.schema.TRANSACTIONS``), so the
same event can also be landed in ``raw.transactions``. On the wire (a Redis Stream entry) it is flat
text fields: ``v`` the schema version, times as integer microseconds since the Unix epoch (UTC), the
amount as the shortest text that reads back to the same double. A reader refuses a version it does not
know rather than guessing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from rtml.streaming.numeric import amount_cents, amount_numeric

SCHEMA_VERSION = 1
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SECOND_US = 1_000_000
HOUR_US = 3_600 * SECOND_US
DAY_US = 24 * HOUR_US


class EventSchemaError(ValueError):
    """An entry that is not a transaction event of a known schema version."""


def to_us(ts: datetime) -> int:
    """Microseconds since the Unix epoch of an aware datetime."""
    if ts.tzinfo is None:
        raise ValueError(f"naive datetime {ts!r}: event times are aware (UTC)")
    return (ts - EPOCH) // timedelta(microseconds=1)


def from_us(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


@dataclass(frozen=True, slots=True)
class TransactionEvent:
    transaction_id: str
    customer_id: str
    merchant_id: str
    amount: float
    """As received (the record schema's float64); features use ``amount_cents`` (stg_transactions)."""
    event_ts_us: int
    """Event time, microseconds since the Unix epoch (timestamptz's resolution)."""
    merchant_category: str = ""
    currency: str = ""
    channel: str = ""
    country: str = ""

    @property
    def event_ts(self) -> datetime:
        return from_us(self.event_ts_us)

    @property
    def amount_numeric(self) -> Decimal:
        """``round(amount::numeric, 2)``: the amount as ``stg_transactions`` keeps it."""
        return amount_numeric(self.amount)

    @property
    def amount_cents(self) -> int:
        """``amount_numeric`` in cents."""
        return amount_cents(self.amount)

    def to_fields(self) -> dict[str, str]:
        """The stream entry's fields."""
        return {
            "v": str(SCHEMA_VERSION),
            "transaction_id": self.transaction_id,
            "customer_id": self.customer_id,
            "merchant_id": self.merchant_id,
            "amount": repr(float(self.amount)),
            "event_ts": str(self.event_ts_us),
            "merchant_category": self.merchant_category,
            "currency": self.currency,
            "channel": self.channel,
            "country": self.country,
        }

    @classmethod
    def from_fields(cls, fields: Mapping[str, str] | Mapping[bytes, bytes]) -> TransactionEvent:
        """Parse a stream entry (text or bytes fields, as redis-py returns them)."""
        text = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in fields.items()
        }
        version = text.get("v")
        if version != str(SCHEMA_VERSION):
            raise EventSchemaError(f"event schema version {version!r}; this reader knows {SCHEMA_VERSION}")
        try:
            return cls(
                transaction_id=text["transaction_id"],
                customer_id=text["customer_id"],
                merchant_id=text["merchant_id"],
                amount=float(text["amount"]),
                event_ts_us=int(text["event_ts"]),
                merchant_category=text.get("merchant_category", ""),
                currency=text.get("currency", ""),
                channel=text.get("channel", ""),
                country=text.get("country", ""),
            )
        except (KeyError, ValueError) as exc:
            raise EventSchemaError(f"malformed transaction event {text!r}: {exc}") from exc
