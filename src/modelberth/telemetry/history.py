"""The last 15 minutes of the machine, for GET /api/history and the dashboard's chart: host
RAM, each GPU's memory, requests per second, requests queued and in flight, sampled every
few seconds, and the evictions in that window (who was stopped for whom)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from loguru import logger

from modelberth.models.model import Model
from modelberth.models.resources import Monitor
from modelberth.models.state import ModelState, StateEvent

INTERVAL = 5.0
WINDOW = 900.0
_EVICTED = "evicted for "


class History:
    """Owns its sampling task: `start` on the loop, `stop` cancels and awaits it."""

    def __init__(
        self,
        monitor: Monitor,
        models: Callable[[], Iterable[Model]],
        requests_total: Callable[[], int],
        interval: float = INTERVAL,
        window: float = WINDOW,
    ) -> None:
        self._monitor = monitor
        self._models = models
        self._requests_total = requests_total
        self.interval = interval
        self.window = window
        self._samples: deque[dict[str, Any]] = deque(maxlen=int(window / interval) + 1)
        self._evictions: deque[dict[str, Any]] = deque(maxlen=1000)
        self._last: tuple[float, int] | None = None  # (monotonic time, requests) at a sample
        self._task: asyncio.Task[None] | None = None

    def on_state_event(self, event: StateEvent) -> None:
        if event.new is ModelState.STOPPING and event.reason.startswith(_EVICTED):
            self._evictions.append(
                {
                    "at": event.at,
                    "model": event.model,
                    "for_model": event.reason.removeprefix(_EVICTED),
                    "reason": event.reason,
                }
            )

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                self.sample()
            except Exception as exc:  # one bad sample must not end the history
                logger.warning("history sample failed: {}", exc)
            await asyncio.sleep(self.interval)

    def sample(self) -> None:
        """Record one sample from the monitor's latest readings (no I/O: they are cached)."""
        now, total = time.monotonic(), self._requests_total()
        rate = None
        if self._last is not None and now > self._last[0]:
            rate = round((total - self._last[1]) / (now - self._last[0]), 3)
        self._last = (now, total)
        snapshot = self._monitor.snapshot
        models = list(self._models())
        host = snapshot.host
        self._samples.append(
            {
                "at": round(time.time(), 3),
                "memory_used_bytes": host.memory_total_bytes - host.memory_available_bytes,
                "memory_total_bytes": host.memory_total_bytes,
                "gpus": [
                    {
                        "index": gpu.index,
                        "memory_used_bytes": gpu.memory_used_bytes,
                        "memory_total_bytes": gpu.memory_total_bytes,
                    }
                    for gpu in snapshot.gpus
                ],
                "requests_per_second": rate,
                "queued": sum(model.waiting for model in models),
                "in_flight": sum(model.in_flight for model in models),
            }
        )

    def report(self) -> dict[str, Any]:
        since = time.time() - self.window
        return {
            "interval_seconds": self.interval,
            "window_seconds": self.window,
            "samples": list(self._samples),
            "evictions": [e for e in self._evictions if e["at"] >= since],
        }
