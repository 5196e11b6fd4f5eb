"""Greedy micro-batching of concurrent ``/score`` requests on the worker's event loop.

A request's own work (one Redis round trip, one model call) costs about the same for 1 row as for 50,
so under load requests are scored together: the first request starts a batch at once; requests that
arrive while a batch is being scored wait, and the next batch takes all of them (up to ``max_rows``).
No request ever waits for a timer: at low load every batch holds one request and adds no latency, at
high load batches grow by themselves.

Why not BentoML's adaptive batching (``@bentoml.api(batchable=True)``): it batches the *inputs* of a
batchable API, whose HTTP body must then be a list, which would change ``/score``'s contract (one
transaction in, one score out), and its dispatcher (``CorkDispatcher``) polls its queue in 1 ms ticks,
which adds a millisecond or more to every request at low load.

Work that need not delay the answers (metrics, the prediction log) goes into ``after``: it runs once the
batch's requests have been answered (their responses are written first).

Bounded: past ``max_waiting_rows`` rows waiting, ``submit`` raises ``QueueFull`` at once (the service
answers 503 with ``Retry-After``) instead of letting the wait grow without limit. A request abandoned
while it waits — its caller cancelled (BentoML's traffic timeout) or its client disconnected (the
``gone`` event the HTTP middleware sets) — is dropped from the queue unscored (``on_abandoned``).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


# Loop turns between batches: requests already read from their sockets join the next batch, and the
# disconnect of a waiting request (connection lost → the middleware's watcher task → ``gone``) is seen
# before its batch is popped: that chain takes three turns. A turn without work costs microseconds.
TURNS_BETWEEN_BATCHES = 3


class QueueFull(Exception):
    """More rows are waiting for a batch than the batcher takes: retry later."""


@dataclass
class _Job(Generic[T, R]):
    items: Sequence[T]
    future: asyncio.Future[list[R]]
    gone: asyncio.Event | None = None

    def abandoned(self) -> bool:
        return self.future.done() or (self.gone is not None and self.gone.is_set())


class MicroBatcher(Generic[T, R]):
    """``await batcher.submit(items)`` → ``process``'s results for ``items``, in order.

    ``process(items) -> results`` (same length) runs on the event loop, one batch at a time; an
    exception it raises is raised in every request of that batch. A submission larger than
    ``max_rows`` is processed as a batch of its own.

    ``after(items, results, seconds)`` (optional) runs on the loop after the batch's waiting requests
    have resumed, i.e. after their responses went out; ``seconds``: how long ``process`` took.

    ``max_waiting_rows`` (optional): a submission that would make more rows wait raises ``QueueFull``
    (a submission to an empty queue is always taken). ``on_abandoned(rows)`` (optional) is told the
    rows of each abandoned request dropped unscored."""

    def __init__(
        self,
        process: Callable[[list[T]], list[R]],
        max_rows: int,
        after: Callable[[list[T], list[R], float], None] | None = None,
        *,
        max_waiting_rows: int | None = None,
        on_abandoned: Callable[[int], None] | None = None,
    ) -> None:
        self.process = process
        self.after = after
        self.max_rows = max(1, max_rows)
        self.max_waiting_rows = max_waiting_rows
        self.on_abandoned = on_abandoned
        self._queue: collections.deque[_Job[T, R]] = collections.deque()
        self._draining = False
        self._task: asyncio.Task[None] | None = None
        self.waiting_rows = 0
        self.batches = 0
        self.rows = 0
        self.abandoned_rows = 0

    async def submit(self, items: Sequence[T], gone: asyncio.Event | None = None) -> list[R]:
        """``gone``: set when the caller's client has disconnected (the request is then not scored)."""
        limit = self.max_waiting_rows
        if limit is not None and self.waiting_rows and self.waiting_rows + len(items) > limit:
            raise QueueFull(f"{self.waiting_rows} rows are waiting to be scored (limit {limit})")
        loop = asyncio.get_running_loop()
        job: _Job[T, R] = _Job(items, loop.create_future(), gone)
        self._queue.append(job)
        self.waiting_rows += len(items)
        if not self._draining:
            self._draining = True
            self._task = loop.create_task(self._drain())  # referenced: the loop keeps tasks weakly
        return await job.future

    async def _drain(self) -> None:
        try:
            while self._queue:
                for _ in range(TURNS_BETWEEN_BATCHES):
                    await asyncio.sleep(0)
                jobs: list[_Job[T, R]] = []
                size = 0
                while self._queue and (not jobs or size + len(self._queue[0].items) <= self.max_rows):
                    job = self._queue.popleft()
                    self.waiting_rows -= len(job.items)
                    if job.abandoned():
                        self._abandon(job)
                    else:
                        jobs.append(job)
                        size += len(job.items)
                if jobs:
                    self._run(jobs, size)
        finally:
            self._draining = False

    def _abandon(self, job: _Job[T, R]) -> None:
        job.future.cancel()  # no-op when already cancelled; the handler of a gone client ends at once
        self.abandoned_rows += len(job.items)
        if self.on_abandoned is not None:
            self.on_abandoned(len(job.items))

    def _run(self, jobs: list[_Job[T, R]], size: int) -> None:
        items = [item for job in jobs for item in job.items]
        started = time.perf_counter()
        try:
            results = self.process(items)
            seconds = time.perf_counter() - started
        except Exception as exc:
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        self.batches += 1
        self.rows += size
        start = 0
        for job in jobs:
            end = start + len(job.items)
            if not job.future.done():  # a client that went away cancelled its future
                job.future.set_result(results[start:end])
            start = end
        if self.after is not None:
            # queued behind the wake-ups set_result just scheduled: the requests answer first
            asyncio.get_running_loop().call_soon(self.after, items, results, seconds)
