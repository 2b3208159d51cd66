"""Fan-out of lifecycle events to whoever listens (logs, /api/events, metrics)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from modelberth.types import StateEvent

Listener = Callable[[StateEvent], None]


class EventBus:
    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._queues: set[asyncio.Queue[StateEvent]] = set()

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def publish(self, event: StateEvent) -> None:
        for listener in self._listeners:
            listener(event)
        for queue in self._queues:
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(event)

    async def subscribe(self) -> AsyncIterator[StateEvent]:
        queue: asyncio.Queue[StateEvent] = asyncio.Queue(maxsize=1000)
        self._queues.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._queues.discard(queue)
