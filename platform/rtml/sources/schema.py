"""The documented record schemas of the two source streams (see docs/data.md).

Every source (simulator, landing files) yields pyarrow tables with exactly these columns; ingestion
validates against them and the raw tables in PostgreSQL mirror them.
"""

from __future__ import annotations

import pyarrow as pa

TRANSACTIONS = pa.schema(
    [
        pa.field("transaction_id", pa.string(), nullable=False),
        pa.field("event_ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("customer_id", pa.string(), nullable=False),
        pa.field("merchant_id", pa.string(), nullable=False),
        pa.field("merchant_category", pa.string(), nullable=False),
        pa.field("amount", pa.float64(), nullable=False),
        pa.field("currency", pa.string(), nullable=False),
        pa.field("channel", pa.string(), nullable=False),  # pos | online | atm
        pa.field("country", pa.string(), nullable=False),  # ISO 3166 alpha-2 where the card was used
    ]
)

LABELS = pa.schema(
    [
        pa.field("transaction_id", pa.string(), nullable=False),
        pa.field("is_fraud", pa.bool_(), nullable=False),
        pa.field("label_ts", pa.timestamp("us", tz="UTC"), nullable=False),  # when the label became known
        pa.field("label_source", pa.string(), nullable=False),  # chargeback | confirmed
    ]
)

CHANNELS = ("pos", "online", "atm")

# Rules on text values that every reader of the raw tables relies on. They are the scoring API's rules
# (rtml/serving/schemas.py), so training data never holds a value the API could not receive; ingestion
# quarantines rows that break them (rtml.ingest.validation).
ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
"""transaction_id, customer_id, merchant_id: no spaces or control bytes (the online store's reader frames
records by id), at most 64 characters."""
CATEGORY_PATTERN = r"^[A-Za-z0-9 _.,&'()/-]{1,64}$"
"""merchant_category: printable ASCII words and punctuation, at most 64 characters."""
LABEL_SOURCES = ("chargeback", "confirmed")
