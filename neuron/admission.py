"""Per-model admission control: a bounded number of requests run, a bounded queue waits.

Invariants: at most `max_in_flight` holders at once; at most `max_queue_depth` waiters; a waiter
gives up after `max_wait_s`. Both refusals are `RateLimited` (429) with a Retry-After estimated
from recent request durations, so clients back off for about as long as the queue needs.
Waiters are served first-come first-served (asyncio.Semaphore is FIFO).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from neuron.config import Admission
from neuron.errors import RateLimited


class AdmissionGate:
    """One model's admission control: at most `limits.max_in_flight` requests hold a slot, and at
    most `max_queue_depth` wait, first come first served, for up to `max_wait_s` each.

    `limits.max_in_flight` must be set (the manager fills in a None). Event loop only; `in_flight`,
    `waiting` and `rejected` are live counts that /health and /metrics read.
    """

    def __init__(self, limits: Admission, on_wait: Callable[[float], None] | None = None) -> None:
        assert limits.max_in_flight is not None, "the manager fills in max_in_flight"
        self.limits = limits
        self._max_in_flight = limits.max_in_flight
        self._on_wait = on_wait
        self._slots = asyncio.Semaphore(limits.max_in_flight)
        self.in_flight = 0
        self.waiting = 0
        self.rejected = 0
        self._mean_duration_s = 1.0

    def retry_after(self) -> float:
        ahead = self.waiting + self.in_flight
        return max(1.0, self._mean_duration_s * ahead / self._max_in_flight)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        arrived = time.monotonic()
        if self._slots.locked() or self.waiting:
            if self.waiting >= self.limits.max_queue_depth:
                self.rejected += 1
                raise RateLimited(
                    f"queue full ({self.waiting} waiting, {self.in_flight} running)",
                    retry_after=self.retry_after(),
                )
            self.waiting += 1
            try:
                await asyncio.wait_for(self._slots.acquire(), self.limits.max_wait_s)
            except TimeoutError:
                self.rejected += 1
                raise RateLimited(
                    f"waited {self.limits.max_wait_s:g}s in the queue without a free slot",
                    retry_after=self.retry_after(),
                ) from None
            finally:
                self.waiting -= 1
        else:
            await self._slots.acquire()
        self.in_flight += 1
        started = time.monotonic()
        if self._on_wait is not None:
            self._on_wait(started - arrived)
        try:
            yield
        finally:
            self.in_flight -= 1
            self._slots.release()
            elapsed = time.monotonic() - started
            self._mean_duration_s = 0.8 * self._mean_duration_s + 0.2 * elapsed
