"""Small, fast synthetic raw data for the feature tests and the feature benchmark.

Production data comes from ``rtml.sources.simulator`` through the ingestion assets; this module only
writes rows straight into ``raw.transactions`` / ``raw.labels`` (vectorised numpy + ``COPY``) so the dbt
models can be exercised at any volume in seconds, with ties, bursts and late labels on purpose.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import psycopg

from rtml.config import Settings, SimulatorSettings
from rtml.ingest.tables import ensure_tables

CATEGORIES = ["grocery", "fuel", "travel", "electronics", "restaurants", "fashion", "gaming", "cash"]
CHANNELS = ["pos", "online", "atm"]


def make_transactions(
    n: int,
    *,
    start: datetime = datetime(2026, 11, 1, tzinfo=UTC),
    days: float = 7.0,
    customers: int = 2_000,
    merchants: int = 300,
    seed: int = 7,
    id_prefix: str = "t",
) -> pd.DataFrame:
    """``n`` transactions over ``days`` from ``start``; about 3 % share a timestamp with another
    transaction of the same customer (ties must be excluded from each other's features)."""
    rng = np.random.default_rng(seed)
    offsets = np.sort(rng.integers(0, int(days * 86_400 * 1_000_000), size=n))  # microseconds
    activity = rng.lognormal(0.0, 1.0, size=customers)  # some card holders are far busier than others
    customer = rng.choice(customers, size=n, p=activity / activity.sum())
    tie = rng.random(n) < 0.03
    idx = np.nonzero(tie[1:])[0] + 1
    offsets[idx] = offsets[idx - 1]  # same instant as the previous row ...
    customer[idx] = customer[idx - 1]  # ... of the same customer
    merchant = np.where(rng.random(n) < 0.6, customer % merchants, rng.integers(0, merchants, size=n))
    amount = np.round(np.exp(rng.normal(3.5, 1.0, size=n)), 2).clip(0.01, 50_000)
    ts = pd.Timestamp(start) + pd.to_timedelta(offsets, unit="us")
    return pd.DataFrame(
        {
            "transaction_id": [f"{id_prefix}{i:09d}" for i in range(n)],
            "event_ts": ts,
            "customer_id": [f"c{c:06d}" for c in customer],
            "merchant_id": [f"m{m:05d}" for m in merchant],
            "merchant_category": np.array(CATEGORIES)[merchant % len(CATEGORIES)],
            "amount": amount,
            "currency": "EUR",
            "channel": np.array(CHANNELS)[rng.integers(0, 3, size=n)],
            "country": "DE",
            "source": ts.strftime("%Y-%m-%d-%H:00"),
        }
    )


def make_labels(transactions: pd.DataFrame, *, fraud_share: float = 0.02, seed: int = 7) -> pd.DataFrame:
    """Labels for a share of the transactions: fraud chargebacks 1-20 days late, and confirmed
    legitimate ones 0-3 days late (some transactions are confirmed first and charged back later)."""
    rng = np.random.default_rng(seed + 1)
    n = len(transactions)
    fraud = rng.random(n) < fraud_share
    confirmed = (~fraud) & (rng.random(n) < 0.2)
    revised = fraud & (rng.random(n) < 0.3)  # these were "confirmed" legit before the chargeback
    lag_fraud = pd.to_timedelta(rng.integers(3_600, 20 * 86_400, size=n), unit="s")
    lag_ok = pd.to_timedelta(rng.integers(600, 3 * 86_400, size=n), unit="s")
    ts = pd.to_datetime(transactions["event_ts"], utc=True)
    frames = [
        pd.DataFrame(
            {
                "transaction_id": transactions["transaction_id"][fraud],
                "is_fraud": True,
                "label_ts": (ts + lag_fraud)[fraud],
                "label_source": "chargeback",
            }
        ),
        pd.DataFrame(
            {
                "transaction_id": transactions["transaction_id"][confirmed | revised],
                "is_fraud": False,
                "label_ts": (ts + lag_ok)[confirmed | revised],
                "label_source": "confirmed",
            }
        ),
    ]
    labels = pd.concat(frames, ignore_index=True)
    labels["source"] = "labels/" + labels["label_ts"].dt.strftime("%Y-%m-%d/") + labels["label_source"]
    return labels.sort_values("label_ts", ignore_index=True)


def copy_frame(conn: psycopg.Connection, table: str, frame: pd.DataFrame) -> None:
    """COPY a frame (CSV, in chunks) into ``table``; columns by name."""
    columns = ", ".join(frame.columns)
    with conn.cursor() as cur, cur.copy(f"copy {table} ({columns}) from stdin (format csv)") as copy:
        for begin in range(0, len(frame), 200_000):
            buf = io.StringIO()
            frame.iloc[begin : begin + 200_000].to_csv(buf, header=False, index=False)
            copy.write(buf.getvalue())


def load_sample(
    database_url: str, transactions: pd.DataFrame, labels: pd.DataFrame | None = None, *, replace: bool = True
) -> None:
    """Write the frames into the raw tables (emptied first with ``replace``)."""
    with psycopg.connect(database_url) as conn:
        ensure_tables(conn)
        if replace:
            conn.execute("truncate raw.transactions, raw.labels")
        copy_frame(conn, "raw.transactions", transactions)
        if labels is not None:
            copy_frame(conn, "raw.labels", labels)
        conn.commit()


def create_database(database_url: str, name: str, *, recreate: bool = True) -> str:
    """A separate database ``name`` on the same server (isolated dbt runs); returns its URL."""
    from rtml.config import database_url_for

    with psycopg.connect(database_url, autocommit=True) as conn:
        if recreate:
            conn.execute(f'drop database if exists "{name}" with (force)')
        exists = conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(f'create database "{name}"')
    return database_url_for(database_url, name)


def simulated_frames(
    start: datetime, days: int, *, per_day: int = 3_000, customers: int = 300, merchants: int = 60
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Clean rows of the platform's seeded simulator (``rtml.sources.simulator``) for ``days`` days,
    with the labels known by the end of the window, shaped for the raw tables."""
    from rtml.sources.scenarios import timeline_path
    from rtml.sources.simulator import Simulator

    settings = Settings(
        simulator=SimulatorSettings(
            start=start,
            transactions_per_day=per_day,
            customers=customers,
            merchants=merchants,
            dirty_share=0.0,
        )
    )
    simulator = Simulator(settings.simulator, settings.ingest, timeline_path(settings.services))
    end = start + timedelta(days=days)
    transactions = simulator.transactions(start, end).to_pandas()
    transactions["source"] = transactions["event_ts"].dt.strftime("%Y-%m-%d-%H:00")
    labels = simulator.labels(start, end).to_pandas()
    labels["source"] = "labels/" + labels["label_ts"].dt.strftime("%Y-%m-%d")
    return transactions, labels


def load_simulated(
    database_url: str,
    settings: Settings,
    start: datetime,
    end: datetime,
    *,
    labels_until: datetime,
    hours_per_chunk: int = 24,
    now: datetime | None = None,
) -> None:
    """The seeded simulator's transactions of [start, end) and the labels known by ``labels_until``,
    loaded through the ingest loader (validation, quarantine, COPY) into ``database_url``'s raw tables
    (created if missing): the small worlds of the tests that need the platform's own load path.

    ``now``: the load time validation checks against; default ``labels_until`` (the world is loaded as
    it was known then), so the result never depends on the day this runs."""
    from rtml.ingest.loader import load_labels, load_transactions
    from rtml.sources.scenarios import timeline_path
    from rtml.sources.simulator import Simulator

    with psycopg.connect(database_url) as conn:
        ensure_tables(conn)
    simulator = Simulator(settings.simulator, settings.ingest, timeline_path(settings.services))
    chunks = simulator.iter_transactions(start, end, hours_per_chunk=hours_per_chunk)
    now = now or max(end, labels_until)
    load_transactions(database_url, chunks, "sim", settings.ingest, now=now)
    load_labels(database_url, [simulator.labels(start, labels_until)], "sim-labels", settings.ingest, now=now)
