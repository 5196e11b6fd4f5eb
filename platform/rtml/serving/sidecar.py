"""The scoring worker's sidecar: a process of its own beside each worker, for everything that leaves after
the answer: the prediction log (``monitoring.predictions`` and its sibling tables) and the transaction
stream (``RTML_STREAM_KEY``).

Both were threads in the worker: COPY encoding, psycopg's and redis-py's protocols and the spill took the
GIL from the event loop. Measured side by side (docs/benchmarks.md, "Serving", round two), the log's
writer thread cost the worker a tenth of its maximum throughput and the stream publisher's another
tenth, far more than their own CPU. Here the worker only queues each row or event (a deque append) and a
sender thread pickles what has queued, about 1 µs an item, into the child's stdin; the child
(``python -m rtml.serving.sidecar``) runs a real ``PredictionWriter`` (queue, spill, counts) and a real
``EventPublisher`` (batches, back-off) on the machine's other core.

``Sidecar`` has ``PredictionWriter``'s interface (``put``, ``status``, ``close``, the counts), so the
service cannot tell them apart, and ``publish``/``stream_status`` for the stream. What the child does
comes back on its stdout: each count (``on_count``, ``on_stream_count``: the worker's metrics) and spill
size (``on_spill_bytes``) as it happens, and its status whenever it changes.

Nothing is lost silently:

* the worker stops (``close``): the queues go to the child, its stdin closes, and the child writes or
  spills every row and publishes what Redis takes before it exits, as ``PredictionWriter.close`` and
  ``EventPublisher.close`` do;
* the worker is killed: the child sees its stdin end and does the same;
* the child is killed: the worker starts another, which drains the dead one's spill; the rows and events
  the dead one had received but neither written, spilled nor published are counted ``dropped`` (its last
  report says which); the frame being sent when it died goes to the new one.

The stream's publisher is not gated by the online read's circuit breaker here, as it was as a thread:
in its own process a failing attempt costs the worker nothing, and its own back-off (up to 1 s) paces it.
Nor can Redis take the log down: a Redis Cluster client that finds no node when the child starts leaves
the child running, its events dropped (counted) until a node answers (``_Stream``).

The child ignores SIGINT and SIGTERM: a Ctrl-C or a stop sent to the whole process group would
otherwise end it before the worker's ``close`` hands it the last rows. It ends when its stdin does.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import operator
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import redis

from rtml.doorbell import Doorbell
from rtml.monitoring.predictions import KINDS, TABLES, LogQueue, LogRow, PredictionWriter
from rtml.streaming.events import TransactionEvent

log = logging.getLogger(__name__)

_FRAME = struct.Struct("!I")
SETTLED = ("written", "spilled", "dropped", "rejected")
"""The outcomes that end a row's stay in the child's memory (``drained`` rows were spilled before)."""
RESTART_AFTER_S = 1.0
"""The least time between two starts of the child: one that dies at once is not restarted in a loop."""
FRAME_ITEMS = 5000
"""The most rows, and the most events, in one frame to the child."""


# Rows and events cross the pipe as tuples of their fields, grouped by type: pickling a dataclass goes
# through copyreg in Python for every object, a tuple does not (about 4 times cheaper for an event).
def _fields_of(cls: type) -> Callable[[Any], tuple[Any, ...]]:
    return operator.attrgetter(*(field.name for field in dataclasses.fields(cls)))


ROW_TYPES = tuple(TABLES)
_row_fields = {cls: _fields_of(cls) for cls in ROW_TYPES}
_event_fields = _fields_of(TransactionEvent)


def _pack(rows: list[LogRow], events: list[TransactionEvent]) -> tuple[Any, ...]:
    """The frame of ``rows`` and ``events``: the rows' tuples by type (``ROW_TYPES``' order), then the
    events'."""
    by_type: dict[type, list[LogRow]] = {cls: [] for cls in ROW_TYPES}
    for row in rows:
        by_type[type(row)].append(row)
    return (
        *(list(map(_row_fields[cls], by_type[cls])) for cls in ROW_TYPES),
        list(map(_event_fields, events)),
    )


def _unpack(frame: tuple[Any, ...]) -> tuple[list[LogRow], list[TransactionEvent]]:
    *row_tuples, event_tuples = frame
    rows = [cls(*fields) for cls, tuples in zip(ROW_TYPES, row_tuples, strict=True) for fields in tuples]
    return rows, [TransactionEvent(*fields) for fields in event_tuples]


@dataclasses.dataclass(frozen=True)
class StreamTarget:
    """Where and how the child publishes (``rtml.streaming.publisher.EventPublisher``'s arguments)."""

    redis_url: str
    key: str
    retention_s: float
    cluster: bool = False
    socket_timeout_s: float = 1.0
    queue_max: int = 100_000
    batch: int = 500


def _write_frame(stream: IO[bytes], payload: Any) -> None:
    data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_FRAME.pack(len(data)) + data)
    stream.flush()


def _read_frames(stream: IO[bytes]) -> Iterator[Any]:
    """The pickled frames of ``stream`` until it ends (a frame cut short by the end is not one)."""
    while True:
        head = stream.read(_FRAME.size)
        if len(head) < _FRAME.size:
            return
        (size,) = _FRAME.unpack(head)
        data = stream.read(size)
        if len(data) < size:
            return
        yield pickle.loads(data)  # our own process on the other end of a private pipe


def _take(queue: collections.deque[Any], into: list[Any]) -> None:
    while len(into) < FRAME_ITEMS:
        try:
            into.append(queue.popleft())
        except IndexError:
            return


class Sidecar(LogQueue):
    """The child process: ``PredictionWriter(database_url, spill_dir=..., **log_options)`` when
    ``database_url`` is given, ``EventPublisher`` on ``stream`` when given. ``put`` and ``publish`` never
    wait. ``on_count``, ``on_stream_count`` and ``on_spill_bytes`` are called on a thread of this process,
    ``on_restart`` each time another child replaces one that exited."""

    def __init__(
        self,
        database_url: str | None,
        *,
        spill_dir: Path | None = None,
        stream: StreamTarget | None = None,
        on_count: Callable[[str, str, int], None] | None = None,
        on_stream_count: Callable[[str, int], None] | None = None,
        on_spill_bytes: Callable[[int], None] | None = None,
        on_restart: Callable[[], None] | None = None,
        **log_options: Any,
    ) -> None:
        super().__init__(int(log_options.get("queue_max", 100_000)), on_count, Doorbell())
        self.logs = database_url is not None
        self.publishes = stream is not None
        self.stream = stream
        self.on_stream_count = on_stream_count
        self.on_spill_bytes = on_spill_bytes
        self.on_restart = on_restart
        # the settings go through the pipe, not the command line: the URLs may hold a password
        self._options = {
            "log": None
            if database_url is None
            else {"database_url": database_url, "spill_dir": str(spill_dir), **log_options},
            "stream": stream,
        }
        self._events: collections.deque[TransactionEvent] = collections.deque()
        self.stream_counts = {"published": 0, "dropped": 0}
        self._child: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._started_at = 0.0
        self.restarts = 0
        """Children started after the first (each after one had exited)."""
        # taken from the queues, their frame not yet in a child's pipe
        self._unsent: list[LogRow] = []
        self._unsent_events: list[TransactionEvent] = []
        # per child: rows sent, by kind, and settled (its counts); events sent and settled; its last reports
        self._sent: collections.Counter[str] = collections.Counter()
        self._settled: collections.Counter[str] = collections.Counter()
        self._sent_rows = 0  # the sum of _sent, for other threads (a Counter may grow while they read)
        self._sent_events = self._settled_events = 0
        self._child_status: dict[str, Any] = {}
        self._child_stream: dict[str, Any] = {}
        self._child_pending = 0
        self._child_received = 0
        self._sender = threading.Thread(target=self._run, name="sidecar-sender", daemon=True)
        self._start_child()
        self._sender.start()

    # --- the stream's side ---------------------------------------------------------------------------
    def publish(self, event: TransactionEvent) -> bool:
        """Queue one event for the stream: O(1), never waits. False (and ``dropped`` + 1) when the queue is
        full or the sidecar is closed."""
        assert self.stream is not None, "no stream to publish to"
        if len(self._events) >= self.stream.queue_max or self._stop.is_set():
            self._count_events("dropped", 1)
            return False
        self._events.append(event)
        self._doorbell.ring()
        return True

    def stream_status(self) -> dict[str, Any]:
        """``EventPublisher.status`` of the child, with this side's queue and counts."""
        assert self.stream is not None, "no stream to publish to"
        running, reported = not self._child_exited(), self._child_stream
        unsettled = self._sent_events - self._settled_events
        return {
            "stream": self.stream.key,
            "redis": reported.get("redis", "ok") if running else "unavailable",
            "last_error": reported.get("last_error") if running else "the sidecar process is not running",
            "pending": len(self._events) + len(self._unsent_events) + max(0, unsettled),
            **self.stream_counts,
        }

    # --- the log's side -------------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Rows not yet written or spilled: queued here, on their way, or in the child's memory."""
        in_pipe = max(0, self._sent_rows - self._child_received)
        return len(self._queue) + len(self._unsent) + in_pipe + self._child_pending

    def status(self) -> dict[str, Any]:
        """``PredictionWriter.status`` of the child, with this side's queue and counts; ``database`` is
        ``unavailable`` while no child runs."""
        child, reported = self._child, self._child_status
        running = child is not None and child.poll() is None
        down = "the sidecar process is not running"
        return {
            # before its first report, as optimistic as PredictionWriter is before it connects
            "database": reported.get("database", "ok") if running else "unavailable",
            "last_error": reported.get("last_error") if running else down,
            "pending": self.pending,
            "spill_dir": reported.get("spill_dir"),
            "spill_bytes": reported.get("spill_bytes", 0),
            "process": {
                "pid": child.pid if running and child is not None else None,
                "restarts": self.restarts,
                "received": self._child_received,
            },
            **self.counts["predictions"],
            **{kind: dict(self.counts[kind]) for kind in KINDS if kind != "predictions"},
        }

    def close(self, timeout: float = 30.0) -> None:
        """Stop taking rows and events, hand the rest to the child and wait while it writes, spills or
        publishes them."""
        self._stop.set()
        self._doorbell.wake()
        self._sender.join(timeout)
        child = self._child
        if child is None:
            return
        with contextlib.suppress(OSError):
            child.stdin.close()  # type: ignore[union-attr]
        try:
            child.wait(timeout + 5)  # its writer's own close waits up to `timeout` for PostgreSQL
        except subprocess.TimeoutExpired:
            log.error("sidecar: its process did not finish in time; killing it")
            child.kill()
            child.wait()
        if self._reader is not None:
            self._reader.join(5)
        self._count_lost()

    # --- counting -----------------------------------------------------------------------------------
    def _count_events(self, outcome: str, events: int) -> None:
        if events <= 0:
            return
        with self._counts_lock:
            self.stream_counts[outcome] += events
        if self.on_stream_count is not None:
            self.on_stream_count(outcome, events)

    def _count_lost(self) -> None:
        """The rows and events the ended child had received or was sent and never settled: dropped,
        counted."""
        lost = {kind: self._sent[kind] - self._settled[kind] for kind in KINDS}
        lost_events = self._sent_events - self._settled_events
        if any(n > 0 for n in lost.values()) or lost_events > 0:
            log.error(
                "sidecar: its process ended with rows unwritten: %s, events unpublished: %d",
                lost,
                lost_events,
            )
            self._count("dropped", lost)
            self._count_events("dropped", lost_events)
        self._sent.clear()
        self._sent_rows = self._sent_events = self._settled_events = 0
        self._settled.clear()
        self._child_pending = self._child_received = 0

    # --- the child ----------------------------------------------------------------------------------
    def _start_child(self) -> None:
        self._started_at = time.monotonic()
        self._child = subprocess.Popen(
            [sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        assert self._child.stdin is not None
        with contextlib.suppress(OSError):  # dead at once: the sender's next turn restarts it
            _write_frame(self._child.stdin, self._options)
        self._reader = threading.Thread(
            target=self._read, args=(self._child,), name="sidecar-reader", daemon=True
        )
        self._reader.start()

    def _read(self, child: subprocess.Popen[bytes]) -> None:
        """The child's reports, until its stdout ends."""
        assert child.stdout is not None
        for message in _read_frames(child.stdout):
            match message:
                case ("count", kind, outcome, rows):
                    if outcome in SETTLED:
                        self._settled[kind] += rows
                    self._count(outcome, {kind: rows})
                case ("stream", outcome, events):
                    self._count_events(outcome, events)  # counted before settling lowers `pending`
                    self._settled_events += events  # published or dropped: either ends its stay
                case ("spill_bytes", size):
                    if self.on_spill_bytes is not None:
                        self.on_spill_bytes(size)
                case ("status", received, pending, status, stream):
                    self._child_received, self._child_pending = received, pending
                    self._child_status, self._child_stream = status or {}, stream or {}
        self._doorbell.wake()  # it exited (or is closing): the sender replaces it now, traffic or not

    def _ensure_child(self) -> bool:
        """A running child: the dead one's unsettled rows counted, another started (not more often than
        every ``RESTART_AFTER_S``). False while none runs."""
        child = self._child
        if not self._child_exited():
            return True
        if child is not None:
            log.error("sidecar: its process exited (%s); starting another", child.returncode)
            if self._reader is not None:
                self._reader.join(5)  # its last reports first
            self._count_lost()
            self._child = None
        if time.monotonic() - self._started_at < RESTART_AFTER_S:
            return False
        self._start_child()
        # counted once the new child is in place: a reader of status() never sees the restart without it
        self.restarts += 1
        if self.on_restart is not None:
            self.on_restart()
        return True

    def _child_exited(self) -> bool:
        return self._child is None or self._child.poll() is not None

    def _has_work(self) -> bool:
        return bool(self._queue) or bool(self._events)

    def _send(self) -> None:
        """The queued rows and events to the running child (one started if none runs), as one frame, kept
        for the next child if this one died; while none runs they wait in the queues."""
        if not self._ensure_child():
            return
        _take(self._queue, self._unsent)
        _take(self._events, self._unsent_events)
        if not self._unsent and not self._unsent_events:
            return
        assert self._child is not None and self._child.stdin is not None
        try:
            _write_frame(self._child.stdin, _pack(self._unsent, self._unsent_events))
        except OSError:  # it died (a broken pipe): the next turn starts another and sends this again
            return
        self._sent.update(TABLES[type(row)].kind for row in self._unsent)
        self._sent_rows += len(self._unsent)
        self._sent_events += len(self._unsent_events)
        self._unsent, self._unsent_events = [], []

    def _run(self) -> None:
        while not self._stop.is_set():
            # a child that died is replaced (and its unwritten rows counted) with or without rows to send:
            # the reader wakes this thread when the child's stdout ends
            self._send()
            unsent = self._unsent or self._unsent_events
            if unsent or self._child_exited():
                self._stop.wait(0.1)  # no child takes them yet
            elif not self._has_work():
                self._doorbell.wait(lambda: self._has_work() or self._stop.is_set() or self._child_exited())
        deadline = time.monotonic() + 10
        while (self._has_work() or self._unsent or self._unsent_events) and time.monotonic() < deadline:
            self._send()
            if self._unsent or self._unsent_events or self._child_exited():
                time.sleep(0.1)
        left = [*self._unsent, *self._queue]
        if left:
            self._count("dropped", collections.Counter(TABLES[type(row)].kind for row in left))
        self._count_events("dropped", len(self._unsent_events) + len(self._events))
        self._events.clear()


# --- the child process -------------------------------------------------------------------------------
def _publisher(target: StreamTarget, on_count: Callable[[str, int], None]) -> Any:
    from rtml.redis_client import connect
    from rtml.streaming.publisher import EventPublisher, no_retries

    client = connect(
        target.redis_url,
        cluster=target.cluster,
        socket_timeout=target.socket_timeout_s,
        socket_connect_timeout=target.socket_timeout_s,
        retry=no_retries(),  # the publisher retries, with its own back-off
    )
    return EventPublisher(
        client,
        target.key,
        retention_s=target.retention_s,
        queue_max=target.queue_max,
        batch=target.batch,
        on_count=on_count,
    )


class _Stream:
    """The child's publisher, made once Redis answers: a Redis Cluster client needs a node at once, and a
    child that died of that would take the prediction log down with it (restarted every second, dying
    again). Until then each frame's events are dropped, counted, and the client is tried again at most
    once a second."""

    def __init__(self, target: StreamTarget, on_count: Callable[[str, int], None]) -> None:
        self.target, self.on_count = target, on_count
        self.publisher: Any = None
        self.error: str | None = None
        self._retry_at = 0.0
        self.put([])

    def put(self, events: list[TransactionEvent]) -> None:
        if self.publisher is None and time.monotonic() >= self._retry_at:
            try:
                self.publisher = _publisher(self.target, self.on_count)
                self.error = None
            except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException) as exc:
                if self.error is None:
                    log.error("sidecar: no stream client (%s); events are dropped until Redis answers", exc)
                self.error = f"{type(exc).__name__}: {exc}"
                self._retry_at = time.monotonic() + 1.0
        if self.publisher is None:
            if events:
                self.on_count("dropped", len(events))
            return
        for event in events:
            self.publisher.put(event)

    def status(self) -> dict[str, Any]:
        if self.publisher is not None:
            return dict(self.publisher.status())
        return {"stream": self.target.key, "redis": "unavailable", "last_error": self.error, "pending": 0}

    def close(self) -> None:
        if self.publisher is not None:
            self.publisher.close()


def main() -> None:
    """The first frame of stdin: the options (``log``: ``PredictionWriter``'s arguments, ``stream``: a
    ``StreamTarget``, either None); then frames of rows and events, until stdin ends; reports on stdout."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s scorer-sidecar[%(process)d] %(message)s"
    )
    reports = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    sys.stdout = sys.stderr  # nothing else may write into the reports
    items_in = os.fdopen(os.dup(sys.stdin.fileno()), "rb")
    frames = _read_frames(items_in)
    options = next(frames, None)
    if options is None:
        return  # the worker went away before sending anything
    lock = threading.Lock()
    parent_gone = threading.Event()

    def report(message: tuple[Any, ...]) -> None:
        if parent_gone.is_set():
            return
        with lock:
            try:
                _write_frame(reports, message)
            except OSError:  # the worker is gone: the rows still get written
                parent_gone.set()

    writer = None
    if options["log"] is not None:
        log_options = dict(options["log"])
        writer = PredictionWriter(
            log_options.pop("database_url"),
            spill_dir=Path(log_options.pop("spill_dir")),
            on_count=lambda kind, outcome, rows: report(("count", kind, outcome, rows)),
            on_spill_bytes=lambda size: report(("spill_bytes", size)),
            **log_options,
        )
    stream = None
    if options["stream"] is not None:
        stream = _Stream(options["stream"], lambda outcome, events: report(("stream", outcome, events)))
    received = 0
    done = threading.Event()

    def status() -> tuple[Any, ...]:
        return (
            received,
            0 if writer is None else writer.pending,
            None if writer is None else writer.status(),
            None if stream is None else stream.status(),
        )

    def report_status() -> None:
        # every 50 ms while something changes, once a second when quiet (status() lists the spill folder)
        last, changed_at = None, time.monotonic()
        while True:
            now = status()
            if now != last:
                report(("status", *now))
                last, changed_at = now, time.monotonic()
            if done.wait(0.05 if time.monotonic() - changed_at < 1.0 else 1.0):
                return

    reporter = threading.Thread(target=report_status, name="sidecar-status", daemon=True)
    reporter.start()
    for frame in frames:
        rows, events = _unpack(frame)
        if writer is not None:
            for row in rows:
                writer.put(row)
        if stream is not None:
            stream.put(events)
        received += len(rows)
    if stream is not None:
        stream.close()
    if writer is not None:
        writer.close()
    done.set()
    reporter.join()
    report(("status", *status()))


if __name__ == "__main__":
    main()
