"""DDL of the raw layer: what the loader writes and dbt's staging models read.

Types, and why:
- ``amount double precision``: the record schema is float64, so the value round-trips exactly, and
  PostgreSQL parses float8 noticeably faster than ``numeric`` during COPY (see docs/benchmarks.md).
  Money arithmetic that needs exact cents belongs to a ``numeric`` cast in dbt, not to raw storage.
- ``currency text``: ``char(3)`` would pad and compare with blank-trimming semantics; validation already
  restricts the value to the allowed ISO codes.
- ``source``: the partition key or landing file name that loaded the row; loading a source replaces
  exactly its rows. The big tables have no index on ``source`` (a third btree roughly halved COPY speed):
  instead ``raw.loads`` records, per (kind, source), the time range (``min_ts``/``max_ts``: ``event_ts``
  for transactions, ``label_ts`` for labels) of the rows loaded, and a reload deletes
  ``WHERE source = %s AND event_ts BETWEEN min_ts AND max_ts`` through the time index. ``raw.loads`` is
  written in the load's own transaction, so it is exact: every row of a source lies in its logged range
  (a source that loaded no row has null bounds and deletes nothing). Rows written by anything other than
  the loader are not covered, and tables created before ``raw.loads`` existed need recreating.
- ``raw.loads`` is also the audit trail of loads: one row per (kind, source) with rows read / loaded /
  quarantined and ``loaded_at`` of the latest load (a reload overwrites it).
- Time indexes are BRIN: rows arrive in time order per source, so BRIN costs almost nothing during COPY
  and still serves dbt's time-window reads (and the delete above) as bitmap scans.
- ``transaction_id`` uses ``COLLATE "C"``: the primary key btree then compares with memcmp instead of the
  locale's strcoll (measured 20-25 % faster COPY with PK + BRIN). Ordering is bytewise; equality is the
  same as under any deterministic collation.
- ``raw.labels`` keys on (transaction_id, source): a label is unique within one delivery, but a later
  delivery may correct it; dbt takes the newest label known at the cut-off (by ``label_ts``).
- Quarantine tables keep the original values as text (nothing coerced), the rule that failed, a human
  message, and ``source_row`` (0-based row position within the source; for a CSV file with a header
  that is line number - 2). ``raw_record`` holds the original line of rows that could not even be split
  into fields (``row_truncated``, ``row_too_many_fields``). PostgreSQL text cannot hold NUL: a NUL in a
  quarantined value is written as the four characters ``\\x00`` (the only change ever made to a value).
"""

from __future__ import annotations

import psycopg

from rtml import ddl
from rtml.sources.schema import LABELS, TRANSACTIONS

TRANSACTIONS_TABLE = "raw.transactions"
TRANSACTIONS_QUARANTINE_TABLE = "raw.transactions_quarantine"
LABELS_TABLE = "raw.labels"
LABELS_QUARANTINE_TABLE = "raw.labels_quarantine"
LOADS_TABLE = "raw.loads"

_QUARANTINE_TAIL = """
    source_row bigint,
    rule text not null,
    error text not null,
    raw_record text,
    source text not null,
    quarantined_at timestamptz not null default now()
"""

DDL = f"""
CREATE SCHEMA IF NOT EXISTS raw;

CREATE TABLE IF NOT EXISTS {TRANSACTIONS_TABLE} (
    transaction_id text COLLATE "C" primary key,
    event_ts timestamptz not null,
    customer_id text not null,
    merchant_id text not null,
    merchant_category text not null,
    amount double precision not null,
    currency text not null,
    channel text not null,
    country text not null,
    source text not null,
    loaded_at timestamptz not null default now()
);
CREATE INDEX IF NOT EXISTS transactions_event_ts_brin ON {TRANSACTIONS_TABLE} USING brin (event_ts);

CREATE TABLE IF NOT EXISTS {TRANSACTIONS_QUARANTINE_TABLE} (
    {", ".join(f"{name} text" for name in TRANSACTIONS.names)},
    {_QUARANTINE_TAIL}
);
CREATE INDEX IF NOT EXISTS transactions_quarantine_source_idx ON {TRANSACTIONS_QUARANTINE_TABLE} (source);

CREATE TABLE IF NOT EXISTS {LABELS_TABLE} (
    transaction_id text COLLATE "C" not null,
    is_fraud boolean not null,
    label_ts timestamptz not null,
    label_source text not null,
    source text not null,
    loaded_at timestamptz not null default now(),
    primary key (transaction_id, source)
);
CREATE INDEX IF NOT EXISTS labels_label_ts_brin ON {LABELS_TABLE} USING brin (label_ts);

CREATE TABLE IF NOT EXISTS {LABELS_QUARANTINE_TABLE} (
    {", ".join(f"{name} text" for name in LABELS.names)},
    {_QUARANTINE_TAIL}
);
CREATE INDEX IF NOT EXISTS labels_quarantine_source_idx ON {LABELS_QUARANTINE_TABLE} (source);

CREATE TABLE IF NOT EXISTS {LOADS_TABLE} (
    kind text not null check (kind in ('transactions', 'labels')),
    source text not null,
    min_ts timestamptz,
    max_ts timestamptz,
    rows_read bigint not null,
    rows_loaded bigint not null,
    rows_quarantined bigint not null,
    loaded_at timestamptz not null default now(),
    primary key (kind, source)
);
-- the late-rows sensor reads the lander's receipts since its cursor (one a second in a stream-fed deployment)
CREATE INDEX IF NOT EXISTS loads_loaded_at_idx ON {LOADS_TABLE} (loaded_at);
"""


def ensure_tables(conn: psycopg.Connection) -> None:
    """Create the raw schema, tables and indexes if missing. Idempotent; commits its own transaction."""
    ddl.create_if_missing(conn, DDL, lock="rtml.raw")
