"""The idle timer: stops a ready model that nothing has used for idle_timeout seconds.

One watcher task at a time, armed whenever the model may have become idle (it became
ready, its last request finished, a start by hand). The watcher sleeps until the idle time
could be up and checks again, since a request may have come and gone meanwhile; it goes by
the monotonic clock (the wall clock can jump) and stops with only_if_idle, so a request
arriving as the stop begins wins."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from loguru import logger


class IdleTimer:
    __slots__ = ("_disarmed", "_idle_for", "_name", "_stop", "_task", "_timeout")

    def __init__(self, name: str, timeout: Callable[[], float],
                 idle_for: Callable[[], float | None],
                 stop: Callable[[], Awaitable[None]]) -> None:
        """`timeout` is read anew each time (update_settings may change idle_timeout);
        `idle_for` is how long the model has been idle, None when it is not idle and ready
        (then the watcher ends); `stop` stops the model if it is still idle."""
        self._name = name
        self._timeout = timeout
        self._idle_for = idle_for
        self._stop = stop
        self._task: asyncio.Task[None] | None = None
        self._disarmed = False

    def arm(self) -> None:
        if self._timeout() <= 0 or self._disarmed:
            return
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._watch())

    def disarm(self) -> None:
        """For good (the model is retiring): cancel the watcher, unless the caller is the
        watcher itself (its own stop is under way and must finish), and never arm again."""
        self._disarmed = True
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()

    def stop_at(self) -> float | None:
        """When the timer will stop the model (wall clock, for display), if it is idle now."""
        idle_for, timeout = self._idle_for(), self._timeout()
        if idle_for is None or timeout <= 0:
            return None
        return round(time.time() + max(0.0, timeout - idle_for), 3)

    async def _watch(self) -> None:
        while (idle_for := self._idle_for()) is not None:
            timeout = self._timeout()
            if idle_for >= timeout:
                logger.info("{}: idle for {:.1f}s, stopping", self._name, idle_for)
                await self._stop()
                return
            await asyncio.sleep(timeout - idle_for)
