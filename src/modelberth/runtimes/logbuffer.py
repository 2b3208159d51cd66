"""A bounded ring buffer of one upstream's output lines, with live followers."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LogLine:
    at: float
    stream: str  # "stdout" | "stderr" | "modelberth"
    text: str


class LogBuffer:
    def __init__(self, max_lines: int = 2000) -> None:
        self._lines: deque[LogLine] = deque(maxlen=max_lines)
        self._followers: set[asyncio.Queue[LogLine | None]] = set()
        # Lines ever appended: a reader keeps the count it has read up to (see since()), so
        # it sees every new line without a follower's queue (a start's progress polls so).
        self.count = 0

    def append(self, stream: str, text: str) -> LogLine:
        line = LogLine(time.time(), stream, text)
        self._lines.append(line)
        self.count += 1
        for queue in self._followers:
            if queue.full():
                queue.get_nowait()  # a slow follower loses its oldest line, never blocks us
            queue.put_nowait(line)
        return line

    def end_followers(self) -> None:
        """End every follow() (at shutdown, so a followed log does not hold it up)."""
        for queue in self._followers:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(None)

    def tail(self, n: int | None = None) -> list[LogLine]:
        lines = list(self._lines)
        return lines if n is None else lines[-n:] if n > 0 else []

    def since(self, count: int) -> list[LogLine]:
        """The lines appended after the first `count` (as many as the buffer still holds)."""
        new = min(self.count - count, len(self._lines))
        return list(itertools.islice(reversed(self._lines), new))[::-1] if new > 0 else []

    def tail_text(self, n: int = 20) -> str:
        return "\n".join(line.text for line in self.tail(n))

    async def follow(self, backlog: int | None = None) -> AsyncIterator[LogLine]:
        """Yield the last `backlog` lines, then every new line until the consumer stops."""
        queue: asyncio.Queue[LogLine | None] = asyncio.Queue(maxsize=1000)
        for line in self.tail(backlog):
            yield line
        self._followers.add(queue)
        try:
            while (item := await queue.get()) is not None:
                yield item
        finally:
            self._followers.discard(queue)
