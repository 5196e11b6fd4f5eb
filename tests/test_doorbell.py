"""The doorbell between the request path and a background thread (rtml.doorbell)."""

from __future__ import annotations

import collections
import threading
import time

from rtml.doorbell import Doorbell


class Consumer:
    """A background thread that takes items off a deque, as the scorer's threads do."""

    def __init__(self, doorbell: Doorbell) -> None:
        self.doorbell = doorbell
        self.queue: collections.deque[float] = collections.deque()
        self.latencies: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def put(self) -> None:
        self.queue.append(time.monotonic())
        self.doorbell.ring()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                put_at = self.queue.popleft()
            except IndexError:
                self.doorbell.wait(lambda: bool(self.queue) or self.stop.is_set())
                continue
            self.latencies.append(time.monotonic() - put_at)

    def close(self) -> float:
        began = time.monotonic()
        self.stop.set()
        self.doorbell.wake()
        self.thread.join(5)
        return time.monotonic() - began


def test_an_asleep_consumer_is_woken_by_the_ring_not_by_its_timeout() -> None:
    consumer = Consumer(Doorbell(poll_s=0.02, sleep_after_s=0.1, sleep_s=30.0))
    for _ in range(3):  # traffic: polled every 20 ms
        consumer.put()
        time.sleep(0.01)
    time.sleep(0.4)  # quiet for longer than sleep_after_s: asleep, for up to 30 s
    for _ in range(5):
        consumer.put()
        time.sleep(0.3)
    assert len(consumer.latencies) == 8
    assert max(consumer.latencies) < 1.0  # far below the 30 s sleep: each ring woke it
    assert consumer.close() < 1.0  # a stop wakes it too


def test_while_work_keeps_arriving_a_ring_wakes_nothing() -> None:
    doorbell = Doorbell(poll_s=0.02, sleep_after_s=10.0, sleep_s=30.0)
    consumer = Consumer(doorbell)
    sets = 0
    original_set = doorbell._event.set

    def counted_set() -> None:
        nonlocal sets
        sets += 1
        original_set()

    doorbell._event.set = counted_set  # type: ignore[method-assign]
    for _ in range(50):
        consumer.put()
        time.sleep(0.005)
    deadline = time.monotonic() + 5
    while len(consumer.latencies) < 50 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(consumer.latencies) == 50 and max(consumer.latencies) < 1.0  # polled, within 20 ms or so
    assert sets == 0  # the request path never set the event
    consumer.close()
