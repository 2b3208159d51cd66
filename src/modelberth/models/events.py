"""Fan-out of lifecycle events to whoever listens (logs, /api/events, metrics, scheduler)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from modelberth.models.state import Notice, StateEvent

Listener = Callable[[StateEvent], None]
Event = StateEvent | Notice


class EventBus:
    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._queues: set[asyncio.Queue[Event]] = set()

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def publish(self, event: StateEvent) -> None:
        for listener in self._listeners:
            listener(event)
        self._stream(event)

    def notify(self, kind: str, model: str, **detail: Any) -> None:
        """A non-state event, for /api/events subscribers only."""
        self._stream(Notice(kind, model, detail=detail))

    def _stream(self, event: Event) -> None:
        for queue in self._queues:
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(event)

    async def subscribe(self) -> AsyncIterator[Event]:
        queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=1000)
        self._queues.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._queues.discard(queue)
