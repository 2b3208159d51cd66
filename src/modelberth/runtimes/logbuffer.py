"""A bounded ring buffer of one upstream's output lines, with live followers."""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

_BREAK = re.compile(rb"\r\n|\r|\n")


def split_output(pending: bytes, data: bytes) -> tuple[list[str], bytes]:
    r"""The complete lines in `pending + data`, and what is left for the next read. A line
    ends at a newline or at a bare carriage return: a progress bar that redraws itself
    (tqdm's, as vLLM prints its loading) gives one line per redraw, so each counts as the
    upstream moving on, not only the last when the bar is done. A final \r waits for the
    next byte (it may be half of a \r\n). Empty lines are dropped.

    >>> split_output(b"", b"shards: 50%\rshards: 100%\r\nready\nhalf")
    (['shards: 50%', 'shards: 100%', 'ready'], b'half')
    >>> split_output(b"half", b" a line\r")
    ([], b'half a line\r')
    """
    text = pending + data
    held = b""
    if text.endswith(b"\r"):
        text, held = text[:-1], b"\r"
    *done, rest = _BREAK.split(text)
    return [line.decode("utf-8", "replace") for line in done if line], rest + held


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
