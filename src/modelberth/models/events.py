"""Fan-out of lifecycle events to whoever listens (logs, /api/events, metrics, scheduler)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable
from typing import Any

from modelberth.models.state import Notice, StateEvent

Listener = Callable[[StateEvent], None]
Event = StateEvent | Notice


_END = Notice("end", "")  # tells subscribers the bus is closed


class EventBus:
    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._queues: set[asyncio.Queue[Event]] = set()
        self._closed = False

    def close(self) -> None:
        """End every subscription (at shutdown: an open /api/events stream must not hold
        the server's graceful shutdown for its whole timeout)."""
        self._closed = True
        self._stream(_END)

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def publish(self, event: StateEvent) -> None:
        for listener in self._listeners:
            listener(event)
        self._stream(event)

    @property
    def has_subscribers(self) -> bool:
        """Whether anyone reads /api/events (so a per-request event is worth making)."""
        return bool(self._queues)

    def notify(self, kind: str, model: str, **detail: Any) -> None:
        """A non-state event, for /api/events subscribers only."""
        self._stream(Notice(kind, model, detail=detail))

    def _stream(self, event: Event) -> None:
        for queue in self._queues:
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(event)

    async def subscribe(self, heartbeat: float | None = None) -> AsyncGenerator[Event | None, None]:
        """Every event from now on, until close(); with `heartbeat`, None after that many
        quiet seconds (so a stream can show its reader it is alive)."""
        queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=1000)
        self._queues.add(queue)
        try:
            while not self._closed:
                try:
                    event = await asyncio.wait_for(queue.get(), heartbeat)
                except TimeoutError:
                    yield None
                    continue
                if event is _END:
                    return
                yield event
        finally:
            self._queues.discard(queue)
