"""How a background thread (the shadow scorer, the stream publisher, the prediction writer) waits for the
work the request path hands it, without costing the request path a wake-up while traffic flows.

The request path appends to a ``collections.deque`` (lock-free under the GIL) and rings. While work keeps
arriving, the consumer polls every ``poll_s`` (20 ms) and a ring is a counter increment: no lock, no
wake-up per request (setting an Event on the event loop costs more than scoring a request). Once nothing
has arrived for ``sleep_after_s``, the consumer says it sleeps, checks once more, and sleeps until a ring
(or ``sleep_s``): the producer sees it asleep and wakes it, so no item waits for a timeout. Before, an idle
scorer's threads woke 50 times a second each: py-spy put about 13 s of ``make test``'s CPU in each one's
polls.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Doorbell:
    def __init__(self, poll_s: float = 0.02, sleep_after_s: float = 1.0, sleep_s: float = 1.0) -> None:
        self.poll_s = poll_s
        self.sleep_after_s = sleep_after_s
        self.sleep_s = sleep_s
        self._event = threading.Event()
        self._asleep = False
        self._rings = 0
        self._seen = 0
        self._quiet_since = time.monotonic()

    def ring(self) -> None:
        """After the producer's append: wakes the consumer if it sleeps."""
        self._rings += 1
        if self._asleep:
            self._event.set()

    def wake(self) -> None:
        """Ends any wait now (a stop)."""
        self._event.set()

    def wait(self, ready: Callable[[], bool]) -> None:
        """The consumer found nothing to do: poll while work keeps arriving, else sleep until a ring.
        ``ready()``: work queued, or stopping (checked once more before sleeping)."""
        now = time.monotonic()
        if self._rings != self._seen:
            self._seen, self._quiet_since = self._rings, now
        if now - self._quiet_since < self.sleep_after_s:
            self._event.wait(self.poll_s)
            self._event.clear()
            return
        self._asleep = True
        try:
            if not ready():
                self._event.wait(self.sleep_s)
        finally:
            self._asleep = False
            self._event.clear()
