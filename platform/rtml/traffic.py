"""`rtml traffic`: the simulator's transactions of the current time, sent to ``POST /score`` as they happen.

The rows are those of ``Simulator.transactions`` for the current UTC hour (the same rows, with the same
ids, that the hourly ingestion loads afterwards), each sent when the clock reaches its ``event_ts``; rows
before the start are the past and are not sent. So the prediction log fills with transactions whose labels
arrive later through ``labels_raw``, and live AUC, served-score drift and the API dashboard fill by
themselves. A drift scenario switched with ``rtml scenario`` applies from the next row on: before each row
the timeline file is checked (a stat) and the rest of the hour regenerated when it changed.

Which rows: ``rate_multiplier`` keeps that share of the stream, chosen by a hash of the transaction id (the
same subset every time, and a larger share contains a smaller one); ``rate`` (requests/s) sets the share
from the hour's volume instead (at most the whole stream). The simulator's dirty rows are sent as they
are: the API answers 400 to those its input rules break (non-positive amount, unknown currency, empty
ids), counted as *rejected*, not as errors; it scores an amount over ``max_amount`` (ingestion quarantines
it). Only a row repeating an earlier id (the ``duplicate_transaction_id`` kind) is skipped: it would be a
second prediction of a transaction that was already scored.

With ``publisher`` (``rtml traffic --publish``) the rows are not sent to the scorer but appended to the
transaction stream as events (``rtml.streaming.publisher``, a background thread): the rows ingestion
would quarantine are left out, as the scorer would refuse them (a stream benchmark without the scorer).

The scorer down or not started yet: connection errors and 503s are counted, sending pauses with an
exponential back-off (0.5 s to 10 s), and the rows due meanwhile are counted as *missed*; then it goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import numpy as np

from rtml.config import Settings
from rtml.ingest.validation import validate_transactions
from rtml.sources.scenarios import timeline_path
from rtml.sources.simulator import Simulator
from rtml.streaming.publisher import EventPublisher
from rtml.streaming.replay import event_from_record

HOUR = timedelta(hours=1)
_MAX_BACKOFF_S = 10.0


def keep_share(transaction_ids: list[str], share: float) -> np.ndarray:
    """Which ids fall in the deterministic ``share`` of the stream: a 64-bit hash of the id below share."""
    if share >= 1:
        return np.ones(len(transaction_ids), dtype=bool)
    cut = int(share * 2**64)
    return np.array(
        [int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest()) < cut for i in transaction_ids],
        dtype=bool,
    )


def _quantile(values: list[float], q: float) -> float:
    return float(np.quantile(values, q)) if values else float("nan")


@dataclass
class TrafficStats:
    """Outcomes of the requests sent (``ok`` 2xx, ``rejected`` 4xx, ``server_errors`` 5xx,
    ``connection_errors`` no answer) and rows not sent because the scorer was backing off (``missed``)."""

    sent: int = 0
    ok: int = 0
    rejected: int = 0
    server_errors: int = 0
    connection_errors: int = 0
    missed: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    window_latencies_ms: list[float] = field(default_factory=list)
    # transaction id -> HTTP status (0: no answer); kept when the caller asks (tests)
    outcomes: dict[str, int] | None = None

    def record(self, transaction_id: str, status: int, latency_ms: float | None) -> None:
        if status == 0:
            self.connection_errors += 1
        elif status < 300:
            self.ok += 1
        elif status < 500:
            self.rejected += 1
        else:
            self.server_errors += 1
        if latency_ms is not None:
            self.latencies_ms.append(latency_ms)
            self.window_latencies_ms.append(latency_ms)
            if len(self.latencies_ms) > 200_000:  # bounded: a long run keeps the recent ones
                del self.latencies_ms[:100_000]
        if self.outcomes is not None:
            self.outcomes[transaction_id] = status

    def line(self, rate: float, latencies: list[float]) -> str:
        return (
            f"{rate:6.1f} req/s | sent {self.sent} ok {self.ok} rejected(4xx) {self.rejected} | errors: "
            f"5xx {self.server_errors} connection {self.connection_errors} missed {self.missed} | "
            f"p50 {_quantile(latencies, 0.5):.1f} ms p99 {_quantile(latencies, 0.99):.1f} ms"
        )


def _request(row: dict[str, Any]) -> dict[str, Any]:
    """A simulator row as the body of ``POST /score``."""
    return {
        "transaction": {
            "transaction_id": row["transaction_id"],
            "customer_id": row["customer_id"],
            "merchant_id": row["merchant_id"],
            "amount": row["amount"],
            "currency": row["currency"],
            "timestamp": row["event_ts"].isoformat(),
            "channel": row["channel"],
            "merchant_category": row["merchant_category"],
            "country": row["country"],
        }
    }


class Traffic:
    """One replay: ``await run()`` until ``stop`` is set or ``duration`` has passed."""

    def __init__(
        self,
        settings: Settings,
        url: str,
        *,
        rate_multiplier: float | None = None,
        rate: float | None = None,
        duration: float | None = None,
        concurrency: int = 8,
        progress_seconds: float = 5.0,
        clock: Callable[[], datetime] | None = None,
        echo: Callable[[str], None] = print,
        record_outcomes: bool = False,
        publisher: EventPublisher | None = None,
    ):
        if rate_multiplier is not None and rate is not None:
            raise ValueError("give a rate multiplier or a rate, not both")
        if rate is None and rate_multiplier is None:
            rate_multiplier, rate = settings.traffic.rate_multiplier, settings.traffic.rate
            rate_multiplier = None if rate is not None else rate_multiplier
        if (rate_multiplier is not None and not 0 < rate_multiplier <= 1) or (rate is not None and rate <= 0):
            raise ValueError("the rate multiplier must be in (0, 1] and the rate positive")
        self.settings, self.url = settings, url.rstrip("/")
        self.rate_multiplier, self.rate, self.duration = rate_multiplier, rate, duration
        self.concurrency, self.progress_seconds = concurrency, progress_seconds
        self.clock = clock or (lambda: datetime.now(UTC))
        self.echo = echo
        self.stats = TrafficStats(outcomes={} if record_outcomes else None)
        self.stop = asyncio.Event()
        self.simulator = Simulator(settings.simulator, settings.ingest, timeline_path(settings.services))
        self.publisher = publisher
        self.started: datetime | None = None
        self.cursor: datetime | None = None  # event time of the last row dispatched (or the start)
        self._down_until = 0.0
        self._backoff = 0.0
        self._share = 1.0
        self.shares: dict[datetime, float] = {}  # hour -> share of its stream sent (a rate: per hour)

    # --- the rows -------------------------------------------------------------------------------------
    def _plan(self, hour: datetime, after: datetime) -> list[dict[str, Any]]:
        """The rows of ``hour`` with event time after ``after`` to send, in event-time order."""
        table = self.simulator.transactions(hour, hour + HOUR)
        if self.publisher is not None:  # only what the scorer would accept (and so publish)
            table = validate_transactions(table, self.settings.ingest, now=hour + HOUR).good
        ids = table.column("transaction_id").to_pylist()
        _, first = np.unique(np.array(ids, dtype=object), return_index=True)
        unique = np.zeros(len(ids), dtype=bool)
        unique[first] = True  # a repeated id (duplicate_transaction_id) would be scored twice
        if self.rate is not None:
            per_s = max(table.num_rows, 1) / HOUR.total_seconds()
            self._share = min(1.0, self.rate / per_s)
            if self.rate > per_s:
                self.echo(
                    f"the stream of {hour:%Y-%m-%d %H:00} has {per_s:.1f} transactions/s: sending all of them"
                )
        else:
            self._share = float(self.rate_multiplier or 1.0)
        self.shares[hour] = self._share
        keep = unique & keep_share(ids, self._share)
        rows = table.filter(keep).to_pylist()
        return [row for row in rows if row["event_ts"] > after]

    # --- sending --------------------------------------------------------------------------------------
    async def _send(self, client: httpx.AsyncClient, row: dict[str, Any], slots: asyncio.Semaphore) -> None:
        began = time.perf_counter()
        try:
            response = await client.post(f"{self.url}/score", json=_request(row))
        except httpx.HTTPError:
            self.stats.record(row["transaction_id"], 0, None)
            self._back_off(None)
            return
        finally:
            slots.release()
        latency = (time.perf_counter() - began) * 1000
        self.stats.record(row["transaction_id"], response.status_code, latency)
        if response.status_code == 503:  # no model yet, or a full queue: as the API asks, wait
            self._back_off(response.headers.get("retry-after"))
        elif response.status_code < 500:
            self._backoff = 0.0

    def _back_off(self, retry_after: str | None) -> None:
        self._backoff = min(_MAX_BACKOFF_S, max(0.5, self._backoff * 2))
        try:
            wait = min(_MAX_BACKOFF_S, float(retry_after)) if retry_after else self._backoff
        except ValueError:
            wait = self._backoff
        self._down_until = max(self._down_until, time.monotonic() + wait)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, waking up at once when stopped."""
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), seconds)

    async def run(self) -> TrafficStats:
        """Send until stopped or ``duration`` has passed; prints a progress line every few seconds and a
        summary at the end."""
        self.started = self.cursor = self.clock()
        began = time.monotonic()
        hour = self.started.replace(minute=0, second=0, microsecond=0)
        plan, position = self._plan(hour, self.cursor), 0
        slots = asyncio.Semaphore(self.concurrency)
        tasks: set[asyncio.Task[None]] = set()
        next_progress = began + self.progress_seconds
        window_start, window_sent = began, 0
        self.echo(
            f"traffic to {self._target()}: the simulator's transactions from {self.started:%Y-%m-%d %H:%M:%S}"
            f" UTC on, {self._describe_rate()}; scenarios now: {self._scenarios()}"
        )
        timeout = httpx.Timeout(10.0, connect=2.0)
        limits = httpx.Limits(max_connections=self.concurrency)
        async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
            while not self.stop.is_set():
                now_mono = time.monotonic()
                if self.duration is not None and now_mono - began >= self.duration:
                    break
                if self.simulator.reload_scenarios():  # a switch: from the next row on (a stat per row)
                    plan, position = self._plan(hour, self.cursor), 0
                    coming = self.simulator.scenarios_between(self.cursor, hour + HOUR)
                    self.echo(f"scenarios changed: for the rest of the hour {', '.join(coming) or 'none'}")
                if now_mono >= next_progress:
                    rate = window_sent / (now_mono - window_start)
                    self.echo(
                        f"[{self.clock():%H:%M:%S}] {self.stats.line(rate, self.stats.window_latencies_ms)}"
                    )
                    self.stats.window_latencies_ms = []
                    window_start, window_sent, next_progress = now_mono, 0, now_mono + self.progress_seconds
                if position >= len(plan):  # the hour is done: the next one when it begins
                    next_hour = hour + HOUR
                    wait = (next_hour - self.clock()).total_seconds()
                    if wait > 0:
                        await self._sleep(min(wait, 0.5))
                        continue
                    hour, plan, position = next_hour, self._plan(next_hour, self.cursor), 0
                    continue
                row = plan[position]
                wait = (row["event_ts"] - self.clock()).total_seconds()
                if wait > 0:
                    await self._sleep(min(wait, 0.5))
                    continue
                position += 1
                self.cursor = row["event_ts"]
                if time.monotonic() < self._down_until:
                    self.stats.missed += 1
                    continue
                if self.publisher is not None:
                    self.stats.sent += 1
                    window_sent += 1
                    queued = self.publisher.put(event_from_record(row))
                    self.stats.record(row["transaction_id"], 200 if queued else 0, None)
                    continue
                await slots.acquire()  # a full pool: the sender falls behind rather than piling up
                self.stats.sent += 1
                window_sent += 1
                task = asyncio.create_task(self._send(client, row, slots))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:  # in flight: a short wait for their answers, then cut them off
                _, pending = await asyncio.wait(tasks, timeout=2.0)
                for task in pending:
                    task.cancel()
        if self.publisher is not None:
            self.publisher.close()
            self.echo(f"stream publisher: {self.publisher.status()}")
        elapsed = time.monotonic() - began
        overall = self.stats.line(self.stats.sent / max(elapsed, 1e-9), self.stats.latencies_ms)
        self.echo(f"traffic stopped after {elapsed:.0f} s: {overall}")
        return self.stats

    def _target(self) -> str:
        return f"stream {self.publisher.key}" if self.publisher is not None else f"{self.url}/score"

    def _describe_rate(self) -> str:
        if self.rate is not None:
            return f"about {self.rate:g} requests/s (share {self._share:.3g} of the stream)"
        return f"{self._share:.3g} of the stream (by transaction id)"

    def _scenarios(self) -> str:
        return ", ".join(self.simulator.scenarios_at(self.clock())) or "none"


def run_until_signalled(traffic: Traffic) -> TrafficStats:
    """Run ``traffic`` in a new event loop; SIGINT and SIGTERM stop it promptly (then the summary)."""

    async def main() -> TrafficStats:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, traffic.stop.set)
        return await traffic.run()

    return asyncio.run(main())
