"""The prediction log's writer in a process of its own, beside each scoring worker.

``PredictionWriter`` ran as threads in the scoring worker: COPY encoding, psycopg's protocol and the
spill took the GIL from the event loop. Measured side by side (docs/benchmarks.md, "Serving", round
two), the writer thread cost the worker a tenth of its maximum throughput, far more than its own CPU,
and the rows' construction on the event loop a fortieth. Here the worker only queues each row
(``put``: a deque append) and a sender thread pickles what has queued, about 1 µs a row, into the
child's stdin; the child (``python -m rtml.monitoring.prediction_log_process``) runs a real
``PredictionWriter``, with its queue, spill and counts, on the machine's other core.

``PredictionLogProcess`` has ``PredictionWriter``'s interface (``put``, ``status``, ``close``, the
counts), so the service cannot tell them apart. What the child does comes back on its stdout: each
count (``on_count``: the worker's metrics) and spill size (``on_spill_bytes``) as it happens, and its
status (what it has received, what waits) whenever it changes.

Nothing is lost silently:

* the worker stops (``close``): the queue goes to the child, its stdin closes, and the child writes or
  spills every row before it exits, as ``PredictionWriter.close`` does;
* the worker is killed: the child sees its stdin end and does the same;
* the child is killed: the worker starts another, which drains the dead one's spill; the rows the dead
  one had received but neither written nor spilled are counted ``dropped`` (its last report says which);
  the frame being sent when it died goes to the new one.

The child ignores SIGINT and SIGTERM: a Ctrl-C or a stop sent to the whole process group would
otherwise end it before the worker's ``close`` hands it the last rows. It ends when its stdin does.
"""

from __future__ import annotations

import collections
import contextlib
import logging
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

from rtml.doorbell import Doorbell
from rtml.monitoring.predictions import KINDS, TABLES, LogQueue, LogRow, PredictionWriter

log = logging.getLogger(__name__)

_FRAME = struct.Struct("!I")
SETTLED = ("written", "spilled", "dropped", "rejected")
"""The outcomes that end a row's stay in the child's memory (``drained`` rows were spilled before)."""
RESTART_AFTER_S = 1.0
"""The least time between two starts of the child: one that dies at once is not restarted in a loop."""


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


class PredictionLogProcess(LogQueue):
    """``PredictionWriter(database_url, spill_dir=..., **options)`` in a child process; ``put`` never
    waits. ``on_count`` and ``on_spill_bytes`` are called on a thread of this process, ``on_restart``
    each time another child replaces one that exited."""

    def __init__(
        self,
        database_url: str,
        *,
        spill_dir: Path,
        on_count: Callable[[str, str, int], None] | None = None,
        on_spill_bytes: Callable[[int], None] | None = None,
        on_restart: Callable[[], None] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(int(options.get("queue_max", 100_000)), on_count, Doorbell())
        self.on_spill_bytes = on_spill_bytes
        self.on_restart = on_restart
        # the settings go through the pipe, not the command line: the URL may hold a password
        self._options = {"database_url": database_url, "spill_dir": str(spill_dir), **options}
        self._child: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._started_at = 0.0
        self.restarts = 0
        """Children started after the first (each after one had exited)."""
        self._unsent: list[LogRow] = []
        """Rows taken from the queue whose frame has not reached a child yet."""
        # per child: rows sent, by kind, and settled (its counts); its last status report
        self._sent: collections.Counter[str] = collections.Counter()
        self._settled: collections.Counter[str] = collections.Counter()
        self._sent_rows = 0  # the sum of _sent, for other threads (a Counter may grow while they read)
        self._child_status: dict[str, Any] = {}
        self._child_pending = 0
        self._child_received = 0
        self._sender = threading.Thread(target=self._run, name="prediction-log-sender", daemon=True)
        self._start_child()
        self._sender.start()

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
        down = "the prediction log's process is not running"
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
        """Stop taking rows, hand the rest to the child and wait while it writes or spills them."""
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
            log.error("prediction log: its process did not finish in time; killing it")
            child.kill()
            child.wait()
        if self._reader is not None:
            self._reader.join(5)
        self._count_lost()

    # --- counting -----------------------------------------------------------------------------------
    def _count_lost(self) -> None:
        """The rows the ended child had received or was sent and never settled: dropped, counted."""
        lost = {kind: self._sent[kind] - self._settled[kind] for kind in KINDS}
        if any(n > 0 for n in lost.values()):
            log.error("prediction log: its process ended with rows unwritten: %s", lost)
            self._count("dropped", lost)
        self._sent.clear()
        self._sent_rows = 0
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
            target=self._read, args=(self._child,), name="prediction-log-reader", daemon=True
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
                case ("spill_bytes", size):
                    if self.on_spill_bytes is not None:
                        self.on_spill_bytes(size)
                case ("status", received, pending, status):
                    self._child_received, self._child_pending, self._child_status = received, pending, status
        self._doorbell.wake()  # it exited (or is closing): the sender replaces it now, traffic or not

    def _ensure_child(self) -> bool:
        """A running child: the dead one's unsettled rows counted, another started (not more often than
        every ``RESTART_AFTER_S``). False while none runs."""
        child = self._child
        if not self._child_exited():
            return True
        if child is not None:
            log.error("prediction log: its process exited (%s); starting another", child.returncode)
            if self._reader is not None:
                self._reader.join(5)  # its last reports first
            self._count_lost()
            self._child = None
        if time.monotonic() - self._started_at < RESTART_AFTER_S:
            return False
        self.restarts += 1
        if self.on_restart is not None:
            self.on_restart()
        self._start_child()
        return True

    def _child_exited(self) -> bool:
        return self._child is None or self._child.poll() is not None

    def _send(self) -> None:
        """The queued rows to the running child (one started if none runs), as one frame, kept for the
        next child if this one died; while none runs they wait in the queue."""
        if not self._ensure_child():
            return
        while len(self._unsent) < 5000:
            try:
                self._unsent.append(self._queue.popleft())
            except IndexError:
                break
        if not self._unsent:
            return
        assert self._child is not None and self._child.stdin is not None
        try:
            _write_frame(self._child.stdin, self._unsent)
        except OSError:  # it died (a broken pipe): the next turn starts another and sends this again
            return
        self._sent.update(TABLES[type(row)].kind for row in self._unsent)
        self._sent_rows += len(self._unsent)
        self._unsent = []

    def _run(self) -> None:
        while not self._stop.is_set():
            # a child that died is replaced (and its unwritten rows counted) with or without rows to send:
            # the reader wakes this thread when the child's stdout ends
            self._send()
            if self._unsent or self._child_exited():
                self._stop.wait(0.1)  # no child takes them yet
            elif not self._queue:
                self._doorbell.wait(lambda: bool(self._queue) or self._stop.is_set() or self._child_exited())
        deadline = time.monotonic() + 10
        while (self._queue or self._unsent) and time.monotonic() < deadline:
            self._send()
            if self._unsent or self._child_exited():
                time.sleep(0.1)
        left = [*self._unsent, *self._queue]
        if left:
            self._count("dropped", collections.Counter(TABLES[type(row)].kind for row in left))


# --- the child process -------------------------------------------------------------------------------
def main() -> None:
    """The first frame of stdin: ``PredictionWriter``'s arguments; then frames of rows, into it, until
    stdin ends; reports on stdout."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s prediction-log[%(process)d] %(message)s"
    )
    reports = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    sys.stdout = sys.stderr  # nothing else may write into the reports
    rows_in = os.fdopen(os.dup(sys.stdin.fileno()), "rb")
    frames = _read_frames(rows_in)
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

    database_url = options.pop("database_url")
    writer = PredictionWriter(
        database_url,
        spill_dir=Path(options.pop("spill_dir")),
        on_count=lambda kind, outcome, rows: report(("count", kind, outcome, rows)),
        on_spill_bytes=lambda size: report(("spill_bytes", size)),
        **options,
    )
    received = 0
    done = threading.Event()

    def report_status() -> None:
        # every 50 ms while something changes, once a second when quiet (status() lists the spill folder)
        last, changed_at = None, time.monotonic()
        while True:
            now = (received, writer.pending, writer.status())
            if now != last:
                report(("status", *now))
                last, changed_at = now, time.monotonic()
            if done.wait(0.05 if time.monotonic() - changed_at < 1.0 else 1.0):
                return

    reporter = threading.Thread(target=report_status, name="prediction-log-status", daemon=True)
    reporter.start()
    for rows in frames:
        for row in rows:
            writer.put(row)
        received += len(rows)
    writer.close()
    done.set()
    reporter.join()
    report(("status", received, writer.pending, writer.status()))


if __name__ == "__main__":
    main()
