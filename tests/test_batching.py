"""``rtml.serving.batching``: the scorer's greedy micro-batcher, on a real asyncio loop (no BentoML)."""

from __future__ import annotations

import asyncio
import time

import pytest

from rtml.serving.batching import MicroBatcher, QueueFull


class Recorder:
    """A ``process`` that squares its items and records each batch (optionally slow, like a Redis read)."""

    def __init__(self, seconds: float = 0.0, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.seconds = seconds
        self.fail_on = fail_on

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        if self.fail_on in items:
            raise ValueError(f"cannot score {self.fail_on}")
        time.sleep(self.seconds)  # blocks the loop, as the scorer's synchronous batch does
        return [i * i for i in items]


def test_a_lone_request_is_scored_at_once_and_concurrent_ones_share_the_next_batch() -> None:
    process = Recorder(seconds=0.01)
    batcher = MicroBatcher(process, max_rows=100)

    async def scenario() -> list[list[int]]:
        first = asyncio.ensure_future(batcher.submit([1]))
        await asyncio.sleep(0.001)  # meanwhile the first batch runs, alone (blocking the loop 10 ms)
        rest = [asyncio.ensure_future(batcher.submit([i])) for i in range(2, 7)]
        return [await first, *[await r for r in rest]]

    started = time.perf_counter()
    results = asyncio.run(scenario())
    assert results == [[1], [4], [9], [16], [25], [36]]  # each caller gets its own rows, in order
    assert process.batches == [[1], [2, 3, 4, 5, 6]]
    assert (batcher.batches, batcher.rows) == (2, 6)
    assert time.perf_counter() - started < 1.0  # no timer anywhere


def test_batches_respect_max_rows_and_an_oversized_submission_goes_alone() -> None:
    process = Recorder()
    batcher = MicroBatcher(process, max_rows=3)

    async def scenario() -> list[list[int]]:
        submissions = [[1, 2], [3], [4, 5, 6, 7], [8]]
        return list(await asyncio.gather(*(batcher.submit(items) for items in submissions)))

    assert asyncio.run(scenario()) == [[1, 4], [9], [16, 25, 36, 49], [64]]
    assert process.batches == [[1, 2, 3], [4, 5, 6, 7], [8]]


def test_an_error_fails_only_its_own_batch() -> None:
    process = Recorder(fail_on=3)
    batcher = MicroBatcher(process, max_rows=2)

    async def scenario() -> list[object]:
        jobs = [batcher.submit([i]) for i in (1, 2, 3, 4, 5)]
        return list(await asyncio.gather(*jobs, return_exceptions=True))

    results = asyncio.run(scenario())
    assert process.batches == [[1, 2], [3, 4], [5]]
    assert results[:2] == [[1], [4]] and results[4] == [25]
    for failed in results[2:4]:
        assert isinstance(failed, ValueError) and "cannot score 3" in str(failed)


def test_after_runs_once_the_callers_have_their_results() -> None:
    events: list[str] = []
    recorded: list[tuple[list[int], list[int], float]] = []

    def after(items: list[int], results: list[int], seconds: float) -> None:
        events.append("after")
        recorded.append((items, results, seconds))

    batcher = MicroBatcher(Recorder(seconds=0.005), max_rows=10, after=after)

    async def caller(i: int) -> None:
        await batcher.submit([i])
        events.append(f"answered {i}")  # where the service writes its response

    async def scenario() -> None:
        await asyncio.gather(caller(1), caller(2))
        await asyncio.sleep(0)

    asyncio.run(scenario())
    assert events == ["answered 1", "answered 2", "after"]
    ((items, results, seconds),) = recorded
    assert (items, results) == ([1, 2], [1, 4])
    assert 0.005 <= seconds < 1.0  # how long process took


def test_a_caller_that_went_away_does_not_disturb_the_others() -> None:
    batcher = MicroBatcher(Recorder(seconds=0.005), max_rows=10)

    async def scenario() -> list[int]:
        gone = asyncio.ensure_future(batcher.submit([1]))
        stays = asyncio.ensure_future(batcher.submit([2]))
        await asyncio.sleep(0)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        return await stays

    assert asyncio.run(scenario()) == [4]


def test_past_max_waiting_rows_a_submission_is_refused_at_once() -> None:
    process = Recorder()
    batcher = MicroBatcher(process, max_rows=4, max_waiting_rows=5)

    async def scenario() -> list[object]:
        # all submitted before the batcher's first turn: 3 rows wait, then 2 more (5), then 1 too many
        jobs = [batcher.submit([1, 2, 3]), batcher.submit([4, 5]), batcher.submit([6])]
        results = list(await asyncio.gather(*jobs, return_exceptions=True))
        # an empty queue takes any submission, even one above the limit
        results.append(await batcher.submit([7, 8, 9, 10, 11, 12]))
        return results

    results = asyncio.run(scenario())
    assert results[:2] == [[1, 4, 9], [16, 25]]
    assert isinstance(results[2], QueueFull) and "5 rows are waiting" in str(results[2])
    assert results[3] == [49, 64, 81, 100, 121, 144]
    assert process.batches == [[1, 2, 3], [4, 5], [7, 8, 9, 10, 11, 12]]  # 6 was never queued
    assert batcher.waiting_rows == 0


def test_a_request_whose_client_left_while_it_waited_is_not_scored() -> None:
    """The client of [2] disconnects while [1] is being scored (the middleware sets its ``gone``); the
    client of [3] cancels (a timeout): neither is scored, both are counted, [4] is scored."""
    gone = asyncio.Event()
    abandoned: list[int] = []
    futures: dict[int, asyncio.Future[list[int]]] = {}

    def process(items: list[int]) -> list[int]:
        if items == [1]:  # while the first batch runs (blocking the loop), two callers give up
            gone.set()
            futures[3].cancel()
        return [i * i for i in items]

    batcher = MicroBatcher(process, max_rows=1, on_abandoned=abandoned.append)

    async def scenario() -> list[object]:
        futures[1] = asyncio.ensure_future(batcher.submit([1]))
        futures[2] = asyncio.ensure_future(batcher.submit([2, 2], gone))
        futures[3] = asyncio.ensure_future(batcher.submit([3]))
        futures[4] = asyncio.ensure_future(batcher.submit([4]))
        return list(await asyncio.gather(*futures.values(), return_exceptions=True))

    results = asyncio.run(scenario())
    assert results[0] == [1] and results[3] == [16]
    assert isinstance(results[1], asyncio.CancelledError) and isinstance(results[2], asyncio.CancelledError)
    assert abandoned == [2, 1] and batcher.abandoned_rows == 3
    assert batcher.rows == 2  # only [1] and [4] were scored
