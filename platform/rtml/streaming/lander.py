"""The lander: the stream's events into ``raw.transactions``, in micro-batches, through the validated loader.

A consumer of its own group (``stream_lander_group``): it sees every event whatever the stream workers
do. Each micro-batch (``stream_lander_batch_events`` events or ``stream_lander_batch_ms``) is one load of
``rtml.ingest.loader.load_transactions`` with its own source, ``stream:<first id>..<last id>:<digest of
the ids>``: validation, quarantine, the load's receipt in ``raw.loads``, all in one transaction. The
entries are acknowledged only after that transaction committed, so a failure or crash before the
commit leaves them pending: taken first at the same consumer's next attempt or restart (its own pending
entries first), or claimed by another after ``stream_claim_idle_ms``.

Each event read ends in exactly one of (the counting invariant, checked for every batch):

* ``loaded`` into ``raw.transactions``;
* ``quarantined`` in ``raw.transactions_quarantine``: by the loader's rules (a non-positive amount, an
  unknown currency, ...) or here, an entry that is not a transaction event of a known schema version
  (rule ``event_malformed``, its fields in ``raw_record``);
* ``duplicate``: its ``transaction_id`` is in ``raw.transactions`` already (a replay, a publisher's
  retry, a crash between commit and acknowledgement) or earlier in the same batch. Skipped and counted,
  not quarantined: delivery is at least once by design, so a repeat is expected, not bad data
  someone must look at. The quarantine would otherwise fill with copies after every replay (and a
  replayed day would break the quarantine-share check). Only a repeat that two landers load at the very
  same moment still reaches the loader, whose primary key quarantines it (``transaction_id_duplicate``):
  loaded once either way.

The existing ids are looked up in the load's own transaction. A batch delivered again with exactly the
same entries has the same source, so its ids already loaded *by that source* are not skipped: the
loader replaces the source with the same rows (as it does for any source loaded again), rather than
deleting the earlier load's rows and loading nothing.

Metrics (a registry per lander; ``rtml stream land`` serves it over HTTP on
``stream_lander_metrics_port``): events by outcome (``loaded``, ``quarantined`` by the loader's rules,
``duplicate``, ``malformed``: quarantined as ``event_malformed``), batches committed or failed (rolled
back, not acknowledged) and the time per committed batch, the lander group's lag (entries not
acknowledged and the age of the oldest, ``stream.group_lag`` as the stream workers measure theirs) and
the freshness of each committed event (event time to the load's commit). Nothing here imports Dagster.

The lander's connections carry ``application_name`` = ``LANDER_APPLICATION_NAME``: the late-rows sensor
reads ``raw.loads`` receipts up to the start of the oldest lander transaction still open (its receipt
is not visible yet and carries that start as ``loaded_at``), so none is passed over.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import psycopg
import pyarrow as pa
import redis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from rtml.config import Settings
from rtml.ingest.errors import TransientDatabaseError
from rtml.ingest.loader import LoadResult, load_transactions
from rtml.ingest.tables import TRANSACTIONS_TABLE, ensure_tables
from rtml.ingest.validation import TRANSACTIONS_QUARANTINE
from rtml.sources.schema import TRANSACTIONS
from rtml.streaming import stream
from rtml.streaming.events import SECOND_US, EventSchemaError, TransactionEvent

log = logging.getLogger(__name__)

MALFORMED_RULE = "event_malformed"
OUTCOMES = ("loaded", "quarantined", "duplicate", "malformed")
LAG_INTERVAL_S = 1.0
"""How often the lander records its heartbeat and measures its group's lag."""
LANDER_APPLICATION_NAME = "rtml-stream-lander"
"""``application_name`` of the lander's database sessions (``rtml.defs.features.sensors`` looks for their
open transactions)."""


class LanderMetrics:
    """The lander's Prometheus metrics, in a registry of their own (several landers in one test process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.events = Counter(
            "rtml_stream_lander_events_total",
            "Stream entries the lander landed, by outcome: loaded into raw.transactions, quarantined by the "
            "loader's rules, duplicate (transaction id loaded already: skipped), malformed (not a "
            "transaction event: quarantined as event_malformed).",
            ["outcome"],
            registry=self.registry,
        )
        self.trimmed = Counter(
            "rtml_stream_lander_trimmed_total",
            "Pending entries that retention trimmed before the lander landed them (lost).",
            registry=self.registry,
        )
        self.batches = Counter(
            "rtml_stream_lander_batches_total",
            "Micro-batches by result: committed (loaded and acknowledged), failed (rolled back, or "
            "committed and not acknowledged: landed again on the next attempt).",
            ["result"],
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "rtml_stream_lander_batch_seconds",
            "Time to land one committed micro-batch: parse, look up ids, load, commit and acknowledge.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.lag_events = Gauge(
            "rtml_stream_lander_lag_events",
            "Entries of the stream the lander group has not acknowledged yet (never delivered + pending).",
            registry=self.registry,
        )
        self.lag_seconds = Gauge(
            "rtml_stream_lander_lag_seconds",
            "Age of the oldest entry the lander group has not acknowledged (its arrival in the stream); "
            "0 when the group is caught up.",
            registry=self.registry,
        )
        self.freshness = Histogram(
            "rtml_stream_lander_freshness_seconds",
            "Event time to the load's commit, per event committed (loaded or quarantined by the loader).",
            buckets=(0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14_400, 86_400),
            registry=self.registry,
        )
        for outcome in OUTCOMES:  # every series from the start: rate() sees the first increase
            self.events.labels(outcome)
        for result in ("committed", "failed"):
            self.batches.labels(result)


@dataclass
class LandCounts:
    """Events per outcome; ``read == loaded + quarantined + duplicates`` always."""

    read: int = 0
    loaded: int = 0
    quarantined: int = 0
    duplicates: int = 0
    malformed: int = 0
    """Of ``quarantined``: entries that are not transaction events (rule ``event_malformed``)."""
    trimmed: int = 0
    """Pending entries that retention trimmed before they were landed (lost; not among ``read``)."""
    batches: int = 0
    sources: list[str] = field(default_factory=list)

    def add(self, other: LandCounts) -> None:
        for name in ("read", "loaded", "quarantined", "duplicates", "malformed", "trimmed", "batches"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.sources.extend(other.sources)

    def __str__(self) -> str:
        return (
            f"{self.read} events read: {self.loaded} loaded, {self.quarantined} quarantined "
            f"({self.malformed} malformed), "
            f"{self.duplicates} duplicates (skipped); {self.trimmed} trimmed before landing; "
            f"{self.batches} batches"
        )


class CountingInvariantBroken(RuntimeError):
    """A batch's events did not all end loaded, quarantined or duplicate: not acknowledged."""


class Lander:
    def __init__(
        self,
        client: redis.Redis,
        database_url: str,
        settings: Settings,
        *,
        consumer: str,
        echo: Callable[[str], None] | None = None,
        metrics: LanderMetrics | None = None,
    ) -> None:
        self.client, self.database_url, self.settings = client, database_url, settings
        self.key, self.group, self.consumer = settings.stream.key, settings.stream.lander_group, consumer
        self.echo = echo
        self.metrics = metrics or LanderMetrics()
        self.counts = LandCounts()
        self._claim_from = "0-0"
        self._recovered = False
        self._tables_ready = False
        self._beat_at = -1e9
        stream.ensure_group(client, self.key, self.group, start="0")

    # --- the loop ----------------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> LandCounts:
        """Land until ``stop`` is set; a database or Redis outage is waited out (nothing acknowledged)."""
        backoff = 0.5
        while not stop.is_set():
            try:
                self.land_once(block_ms=min(200, int(self.settings.stream.lander_batch_ms)), stop=stop)
                backoff = 0.5
            except (psycopg.OperationalError, TransientDatabaseError, *stream.REDIS_ERRORS) as exc:
                log.warning("lander: %s; retrying in %.1f s (nothing acknowledged)", exc, backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
            except redis.exceptions.ResponseError as exc:
                if not stream.stream_gone(exc):
                    raise
                # the stream was deleted (a Redis restarted without persistence, a flush): start over on
                # what it holds from now on, as the stream workers do
                log.warning("lander: %s; creating group %s again", exc, self.group)
                stream.ensure_group(self.client, self.key, self.group, start="0")
                self._recovered, self._claim_from = False, "0-0"
        return self.counts

    def land_once(self, block_ms: int = 200, stop: threading.Event | None = None) -> LandCounts:
        """Collect one micro-batch (this consumer's own pending entries first, then a dead consumer's,
        then new ones until the batch is full or ``stream_lander_batch_ms`` passed) and land it."""
        if time.monotonic() - self._beat_at >= LAG_INTERVAL_S:
            stream.heartbeat(self.client, self.key, self.group, self.consumer)  # `rtml stream status --alive`
            self._beat_at = time.monotonic()
            self.measure_lag()
        entries, trimmed = self._collect(block_ms, stop)
        try:
            batch = self.land(entries) if entries else LandCounts()
        except BaseException:
            self._recovered = False  # the next attempt takes these (now pending) entries first
            self.metrics.batches.labels("failed").inc()
            raise
        batch.trimmed += trimmed
        self.metrics.trimmed.inc(trimmed)
        self.counts.add(batch)
        if self.echo is not None and (batch.read or batch.trimmed):
            self.echo(f"landed {batch} ({', '.join(batch.sources)})")
        return batch

    def _collect(self, block_ms: int, stop: threading.Event | None) -> tuple[list[stream.Entry], int]:
        limit = self.settings.stream.lander_batch_events
        if not self._recovered:  # after a restart: what this consumer read and never acknowledged
            own = stream.read_own_pending(self.client, self.key, self.group, self.consumer, limit)
            if own:
                return own, 0
            self._recovered = True
        claimed = stream.claim_idle(
            self.client,
            self.key,
            self.group,
            self.consumer,
            self.settings.stream.claim_idle_ms,
            limit,
            self._claim_from,
        )
        self._claim_from = claimed.next_start
        if claimed.trimmed:
            log.error("lander: %d pending events were trimmed before landing (lost)", len(claimed.trimmed))
        if claimed.entries:
            return claimed.entries, len(claimed.trimmed)
        entries: list[stream.Entry] = []
        deadline: float | None = None
        while len(entries) < limit and not (stop is not None and stop.is_set()):
            wait = block_ms if deadline is None else int((deadline - time.monotonic()) * 1000)
            if deadline is not None and wait <= 0:
                break
            new = stream.read_new(
                self.client, self.key, self.group, self.consumer, limit - len(entries), max(1, wait)
            )
            if not new:
                if deadline is None:
                    break  # nothing arrived: the caller loops
                continue
            if deadline is None:
                deadline = time.monotonic() + self.settings.stream.lander_batch_ms / 1000
            entries.extend(new)
        return entries, len(claimed.trimmed)

    def measure_lag(self) -> tuple[int, float]:
        """The lander group's entries not acknowledged yet and the age (s) of the oldest; sets the gauges."""
        lag, age = stream.group_lag(self.client, self.key, self.group)
        self.metrics.lag_events.set(lag)
        self.metrics.lag_seconds.set(age)
        return lag, age

    # --- one micro-batch ---------------------------------------------------------------------------------
    def land(self, entries: Sequence[stream.Entry]) -> LandCounts:
        """Load ``entries`` as one source, then acknowledge them (only after the commit)."""
        started = time.perf_counter()
        source = source_name(entries)
        events: list[TransactionEvent] = []
        malformed: list[tuple[int, stream.Entry, str]] = []
        for position, entry in enumerate(entries):
            try:
                events.append(TransactionEvent.from_fields(entry.fields))
            except EventSchemaError as exc:
                malformed.append((position, entry, str(exc)))
        unique, repeats = first_of_each_id(events)
        with psycopg.connect(
            self.database_url, autocommit=True, application_name=LANDER_APPLICATION_NAME
        ) as conn:
            if not self._tables_ready:  # the id lookup needs raw.transactions before the loader creates it
                ensure_tables(conn)
                self._tables_ready = True
            with conn.transaction():
                loaded_before = existing_ids(conn, [e.transaction_id for e in unique], source)
                fresh = [e for e in unique if e.transaction_id not in loaded_before]
                result = load_transactions(
                    conn,
                    [events_table(fresh)],
                    source,
                    self.settings.ingest,
                    reader_rejects=[malformed_table(malformed)] if malformed else None,
                )
                counts = LandCounts(
                    read=len(entries),
                    loaded=result.rows_loaded,
                    quarantined=result.rows_quarantined,
                    duplicates=repeats + len(unique) - len(fresh),
                    malformed=len(malformed),
                    batches=1,
                    sources=[source],
                )
                if counts.loaded + counts.quarantined + counts.duplicates != counts.read:
                    raise CountingInvariantBroken(f"{source}: {counts} (rolled back, not acknowledged)")
        committed = time.time()
        stream.ack(self.client, self.key, self.group, [entry.id for entry in entries])
        self._observe(counts, fresh, committed, time.perf_counter() - started)
        return counts

    def _observe(
        self, counts: LandCounts, committed: Sequence[TransactionEvent], at: float, seconds: float
    ) -> None:
        metrics = self.metrics
        metrics.batches.labels("committed").inc()
        metrics.batch_seconds.observe(seconds)
        for event in committed:
            metrics.freshness.observe(max(0.0, at - event.event_ts_us / SECOND_US))
        # the outcomes last: a scrape that sees a batch's events counted sees the rest of its figures
        metrics.events.labels("loaded").inc(counts.loaded)
        metrics.events.labels("quarantined").inc(counts.quarantined - counts.malformed)
        metrics.events.labels("duplicate").inc(counts.duplicates)
        metrics.events.labels("malformed").inc(counts.malformed)


def landed_between(database_url: str, start: datetime, end: datetime) -> LoadResult:
    """What the lander loaded with event times in [start, end) (``transactions_feed=stream``: the hourly
    ingestion reports it instead of loading the simulator's rows). Quarantined events are not included:
    the quarantine keeps their times as the text they came with."""
    began = time.perf_counter()
    with psycopg.connect(database_url) as conn:
        ensure_tables(conn)
        row = conn.execute(
            f"SELECT count(*) FROM {TRANSACTIONS_TABLE} "
            "WHERE event_ts >= %s AND event_ts < %s AND source LIKE 'stream:%%'",
            (start, end),
        ).fetchone()
    landed = int(row[0]) if row else 0
    return LoadResult(landed, landed, 0, {}, time.perf_counter() - began)


def source_name(entries: Sequence[stream.Entry]) -> str:
    """``stream:<first id>..<last id>:<digest>``: the same entries always make the same source (a batch
    delivered again replaces its own load), different ones never do."""
    digest = hashlib.blake2b("\n".join(e.id for e in entries).encode(), digest_size=6).hexdigest()
    return f"stream:{entries[0].id}..{entries[-1].id}:{digest}"


def first_of_each_id(events: Sequence[TransactionEvent]) -> tuple[list[TransactionEvent], int]:
    """The first event of each ``transaction_id`` (the speed layer's state keeps the first arrival too),
    and how many repeats were left out."""
    seen: set[str] = set()
    unique = []
    for event in events:
        if event.transaction_id not in seen:
            seen.add(event.transaction_id)
            unique.append(event)
    return unique, len(events) - len(unique)


def existing_ids(conn: psycopg.Connection, ids: list[str], source: str) -> set[str]:
    """Which of ``ids`` ``raw.transactions`` holds from a source other than ``source`` (primary key
    lookups)."""
    if not ids:
        return set()
    rows = conn.execute(
        f"SELECT transaction_id FROM {TRANSACTIONS_TABLE} "
        "WHERE transaction_id = ANY(%s::text[]) AND source <> %s",
        (ids, source),
    ).fetchall()
    return {row[0] for row in rows}


def events_table(events: Sequence[TransactionEvent]) -> pa.Table:
    """Events as a table of the record schema (``rtml.sources.schema.TRANSACTIONS``)."""
    return pa.table(
        {
            "transaction_id": [e.transaction_id for e in events],
            "event_ts": pa.array([e.event_ts_us for e in events], pa.int64()).cast(
                pa.timestamp("us", tz="UTC")
            ),
            "customer_id": [e.customer_id for e in events],
            "merchant_id": [e.merchant_id for e in events],
            "merchant_category": [e.merchant_category for e in events],
            "amount": pa.array([e.amount for e in events], pa.float64()),
            "currency": [e.currency for e in events],
            "channel": [e.channel for e in events],
            "country": [e.country for e in events],
        },
        schema=TRANSACTIONS,
    )


def malformed_table(malformed: Sequence[tuple[int, stream.Entry, str]]) -> pa.Table:
    """Quarantine rows of entries that are not events: the fields they have, as text; all of them (and
    the entry id) in ``raw_record``; ``source_row`` the entry's position in the batch."""
    texts = [
        {k.decode(errors="replace"): v.decode(errors="replace") for k, v in entry.fields.items()}
        for _, entry, _ in malformed
    ]
    columns: dict[str, list[object]] = {name: [t.get(name) for t in texts] for name in TRANSACTIONS.names}
    columns["source_row"] = [position for position, _, _ in malformed]
    columns["rule"] = [MALFORMED_RULE] * len(malformed)
    columns["error"] = [f"entry {entry.id}: {error}" for _, entry, error in malformed]
    columns["raw_record"] = [
        json.dumps({"id": entry.id, "fields": text}, sort_keys=True)
        for (_, entry, _), text in zip(malformed, texts, strict=True)
    ]
    return pa.table(columns, schema=TRANSACTIONS_QUARANTINE)
