"""Transactions from a file or the simulator as stream events (``rtml stream publish``).

Rows go through ingestion's validation first (``rtml.ingest.validation``): only rows that ingestion
would load become events, as only transactions the scoring API accepts are published by the scorer;
the others are counted by rule and not published.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from rtml.config import Settings
from rtml.ingest.validation import validate_transactions
from rtml.sources.scenarios import timeline_path
from rtml.sources.schema import TRANSACTIONS
from rtml.sources.simulator import Simulator
from rtml.streaming.events import TransactionEvent, to_us

_HOUR = timedelta(hours=1)


def events_from_table(table: pa.Table) -> list[TransactionEvent]:
    """A table of the record schema (``rtml.sources.schema.TRANSACTIONS``) as events, in row order."""
    columns = table.select(TRANSACTIONS.names).to_pydict()
    event_us = table["event_ts"].cast(pa.int64()).to_pylist()
    return [
        TransactionEvent(
            transaction_id=columns["transaction_id"][i],
            customer_id=columns["customer_id"][i],
            merchant_id=columns["merchant_id"][i],
            amount=columns["amount"][i],
            event_ts_us=event_us[i],
            merchant_category=columns["merchant_category"][i],
            currency=columns["currency"][i],
            channel=columns["channel"][i],
            country=columns["country"][i],
        )
        for i in range(table.num_rows)
    ]


def event_from_record(record: Mapping[str, Any]) -> TransactionEvent:
    """One row of the record schema (``Table.to_pylist``: ``event_ts`` an aware datetime) as an event."""
    return TransactionEvent(
        transaction_id=record["transaction_id"],
        customer_id=record["customer_id"],
        merchant_id=record["merchant_id"],
        amount=record["amount"],
        event_ts_us=to_us(record["event_ts"]),
        merchant_category=record["merchant_category"],
        currency=record["currency"],
        channel=record["channel"],
        country=record["country"],
    )


def file_tables(path: Path, chunk_rows: int) -> Iterator[pa.Table]:
    """A landing-format CSV (header, all values read as text) or Parquet file, ``chunk_rows`` at a time."""
    if path.suffix.lower() == ".parquet":
        for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows):
            yield pa.Table.from_batches([batch])
        return
    reader = pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(block_size=8 << 20),
        convert_options=pacsv.ConvertOptions(
            column_types={name: pa.string() for name in TRANSACTIONS.names}, strings_can_be_null=False
        ),
    )
    for batch in reader:
        yield pa.Table.from_batches([batch])


def simulator_tables(settings: Settings, start: datetime, end: datetime) -> Iterator[pa.Table]:
    """The simulator's transactions of [start, end), hour by hour."""
    simulator = Simulator(settings.simulator, settings.ingest, timeline_path(settings.services))
    hour = start
    while hour < end:
        step = min(end, hour.replace(minute=0, second=0, microsecond=0) + _HOUR)
        yield simulator.transactions(hour, step)
        hour = step


def valid_events(
    tables: Iterator[pa.Table], settings: Settings, invalid: Counter[str], now: datetime | None = None
) -> Iterator[list[TransactionEvent]]:
    """Each table's rows that pass validation, as events; the others counted in ``invalid`` by rule."""
    now = now or datetime.now(UTC)
    for table in tables:
        validated = validate_transactions(table, settings.ingest, now=now)
        if validated.quarantined.num_rows:
            invalid.update(validated.quarantined["rule"].to_pylist())
        yield events_from_table(validated.good)
