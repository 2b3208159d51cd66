"""The idle timer: stops a ready model that nothing has used for idle_timeout seconds (or
puts it to sleep, for a model with `sleep`: the lifecycle's `stop` hook decides which).

One watcher task at a time, armed whenever the model may have become idle (it became
ready, its last request finished, a start by hand). The watcher sleeps until the idle time
could be up and checks again, since a request may have come and gone meanwhile; it goes by
the monotonic clock (the wall clock can jump) and stops with only_if_idle, so a request
arriving as the stop begins wins.

A request may override the timeout for the upstream that is running (`keep_alive`, what
Ollama's keep_alive field maps to): 0 stops the model as soon as it is idle (after the
answer under way), infinity never idle-stops it, N seconds replaces idle_timeout. The
override lasts until another one replaces it or `keep_alive(None)` clears it, which the
lifecycle does whenever a new upstream becomes ready: it was said for that one."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable

from loguru import logger


class IdleTimer:
    __slots__ = ("_disarmed", "_idle_for", "_name", "_override", "_stop", "_task", "_timeout")

    def __init__(
        self,
        name: str,
        timeout: Callable[[], float],
        idle_for: Callable[[], float | None],
        stop: Callable[[], Awaitable[object]],
    ) -> None:
        """`timeout` is read anew each time (update_settings may change idle_timeout);
        `idle_for` is how long the model has been idle, None when it is not idle and ready
        (then the watcher ends); `stop` stops the model if it is still idle."""
        self._name = name
        self._timeout = timeout
        self._idle_for = idle_for
        self._stop = stop
        self._task: asyncio.Task[None] | None = None
        self._disarmed = False
        self._override: float | None = None  # keep_alive's seconds, None: idle_timeout

    def limit(self) -> float | None:
        """Seconds of idleness after which the model stops; None: never."""
        if self._override is not None:
            return None if math.isinf(self._override) else self._override
        timeout = self._timeout()
        return timeout if timeout > 0 else None

    def keep_alive(self, seconds: float | None) -> None:
        """Override the timeout (see the module docstring); None goes back to idle_timeout.
        A watcher asleep on the old timeout is replaced, so a shorter one takes effect."""
        if seconds is not None and (math.isnan(seconds) or seconds < 0):
            raise ValueError(f"keep_alive must be >= 0 seconds, not {seconds}")
        if seconds == self._override:
            return
        self._override = seconds
        task = self._task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()  # a stop it began goes on: Lifecycle.stop shields it
            self._task = None
        self.arm()

    def arm(self) -> None:
        if self.limit() is None or self._disarmed:
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
        idle_for, limit = self._idle_for(), self.limit()
        if idle_for is None or limit is None:
            return None
        return round(time.time() + max(0.0, limit - idle_for), 3)

    async def _watch(self) -> None:
        while (idle_for := self._idle_for()) is not None:
            limit = self.limit()
            if limit is None:
                return
            if idle_for >= limit:
                logger.info("{}: idle for {:.1f}s", self._name, idle_for)
                await self._stop()
                return
            await asyncio.sleep(limit - idle_for)
