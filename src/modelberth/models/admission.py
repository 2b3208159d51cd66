"""A model's requests: how many are in flight, how many wait, and when it was last used.

Owned by its Model, which alone counts requests in and out (enter, leave, join_queue,
leave_queue); readers (status, metrics, the scheduler) read `in_flight` and `waiting`
through the model. Its Lifecycle is handed it to wait for the requests to drain before a
stop, to time the idle timer by `idle_seconds`, to `touch` it when the model becomes ready
and to `wake_waiters` at retirement. The counts change only in synchronous code, so an
admission cancelled at any await leaves nothing behind."""

from __future__ import annotations

import asyncio
import time


class Admission:
    __slots__ = ("_drained", "_slot_free", "in_flight", "last_used_at", "used_at", "waiting")

    def __init__(self) -> None:
        self.in_flight = 0
        self.waiting = 0
        self.last_used_at: float | None = None  # wall clock, for display
        self.used_at = time.monotonic()  # what the idle timer goes by
        self._slot_free = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()

    def saturated(self, limit: int | None) -> bool:
        return limit is not None and self.in_flight >= limit

    def join_queue(self) -> None:
        self.waiting += 1

    def leave_queue(self) -> None:
        self.waiting -= 1

    def enter(self) -> None:
        self.in_flight += 1
        if self.in_flight == 1:
            self._drained.clear()
        self.touch()

    def leave(self) -> bool:
        """Count a request out; True when none is left in flight."""
        self.in_flight -= 1
        self.touch()
        if self.waiting:
            self._slot_free.set()
        if self.in_flight == 0:
            self._drained.set()
            return True
        return False

    def touch(self) -> None:
        self.last_used_at = time.time()
        self.used_at = time.monotonic()

    def idle_seconds(self) -> float:
        return time.monotonic() - self.used_at

    async def slot(self) -> None:
        """Wait until a request in flight finishes (the caller checks again)."""
        self._slot_free.clear()
        await self._slot_free.wait()

    def wake_waiters(self) -> None:
        self._slot_free.set()

    async def drained(self, timeout: float) -> bool:
        """Wait until nothing is in flight, for at most `timeout`; whether it is so."""
        try:
            await asyncio.wait_for(self._drained.wait(), timeout)
        except TimeoutError:
            return False
        return True
