"""One customer's stream state: the events at or after the batch watermark, applied idempotently.

The batch layer owns every event before the watermark W (``features.customer_stream_snapshot`` is built
from exactly those); the stream owns the events at or after it. Applying an event therefore has three
outcomes:

- ``applied``: a new ``transaction_id`` at or after W, kept;
- ``duplicate``: that ``transaction_id`` is already kept (a client retry, a replay, a second worker):
  counted once, the first arrival wins (as the loader keeps the first load of an id);
- ``late``: its event time is before W: the batch layer counts it (after the lander writes it to
  ``raw.transactions``, at the next refresh), so the stream never does (never double counted).

When the batch layer moves the watermark (a refresh built a new snapshot), :meth:`advance` drops the
events that the new snapshot now holds. Events are kept in arrival order of first appearance; nothing
here depends on arrival order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from rtml.streaming.events import TransactionEvent


class Outcome(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    LATE = "late"


@dataclass(frozen=True, slots=True)
class StreamedEvent:
    """What the features need of one event: time, merchant, amount as stg_transactions keeps it (in
    cents)."""

    event_ts_us: int
    merchant_id: str
    cents: int


@dataclass
class CustomerStreamState:
    customer_id: str
    watermark_us: int
    """W: events before it belong to the batch layer."""
    events: dict[str, StreamedEvent] = field(default_factory=dict)
    """transaction_id → event, every kept event at or after the watermark."""

    def apply(self, event: TransactionEvent) -> Outcome:
        if event.customer_id != self.customer_id:
            raise ValueError(f"event of customer {event.customer_id!r} applied to {self.customer_id!r}")
        if event.event_ts_us < self.watermark_us:
            return Outcome.LATE
        if event.transaction_id in self.events:
            return Outcome.DUPLICATE
        self.events[event.transaction_id] = StreamedEvent(
            event.event_ts_us, event.merchant_id, event.amount_cents
        )
        return Outcome.APPLIED

    def advance(self, watermark_us: int) -> int:
        """Move the watermark forward (a new batch snapshot); returns how many events were dropped."""
        if watermark_us <= self.watermark_us:
            return 0
        self.watermark_us = watermark_us
        dropped = [tid for tid, e in self.events.items() if e.event_ts_us < watermark_us]
        for tid in dropped:
            del self.events[tid]
        return len(dropped)
