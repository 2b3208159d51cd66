"""The upstreams one model is stopping in the background, each in a task this owns.

A kill must never be cut short by a cancellation (it would leave a process or a container
behind), and it must not hold up an answer: a failed start answers its waiters at
start_timeout, however long stop_timeout is. So every upstream the model lets go of is
stopped in a task of its own, and whoever needs it gone (the next start, a stop,
retirement) awaits `settle()`, which never cancels them. The scheduler counts the model's
memory until the last kill has finished, so `on_empty` tells the model's listeners then.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from loguru import logger

from modelberth.models.tasks import swallow_outcome
from modelberth.runtimes.base import Upstream
from modelberth.runtimes.logbuffer import LogBuffer


class Kills:
    __slots__ = ("_logs", "_name", "_on_empty", "_stopping", "_tasks", "_timeout")

    def __init__(
        self, name: str, logs: LogBuffer, timeout: Callable[[], float], on_empty: Callable[[], None]
    ) -> None:
        self._name = name
        self._logs = logs
        self._timeout = timeout  # read at each stop: a reconfigure may change stop_timeout
        self._on_empty = on_empty
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping: dict[asyncio.Task[None], Upstream] = {}  # what each task stops

    def __bool__(self) -> bool:
        """Whether an upstream is still being stopped."""
        return bool(self._tasks)

    def stop_in_background(self, upstream: Upstream) -> None:
        self._stopping[self._own(self._stop_quietly(upstream))] = upstream

    @property
    def upstreams(self) -> list[Upstream]:
        """The upstreams being stopped now (their processes still use memory)."""
        return list(self._stopping.values())

    async def launch(self, start: Awaitable[Upstream]) -> Upstream:
        """Await a runtime's start; if the caller is cancelled meanwhile (a stop), the start
        still finishes and the upstream it brought up is stopped, never left behind."""
        launch = asyncio.ensure_future(start)
        try:
            return await asyncio.shield(launch)
        except asyncio.CancelledError:
            self._own(self._stop_when_launched(launch))
            raise

    async def settle(self) -> None:
        """Wait (never cancelling them) until every upstream being stopped is gone."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    def _own(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._stopping.pop(task, None)
        swallow_outcome(task)
        if not self._tasks:
            self._on_empty()

    async def _stop_when_launched(self, launch: asyncio.Future[Upstream]) -> None:
        try:
            upstream = await launch
        except Exception:
            return  # it never started
        await self._stop_quietly(upstream)

    async def _stop_quietly(self, upstream: Upstream) -> None:
        try:
            status = await upstream.stop(self._timeout())
        except Exception as exc:
            logger.bind(model=self._name).opt(exception=exc).warning(
                "{}: stopping upstream {} failed", self._name, upstream.runtime_id
            )
            return
        self._logs.append("modelberth", f"stopped ({status.describe()})")
