"""Writes made in one event-loop turn leave in one write; nothing waits past that turn."""

from __future__ import annotations

import asyncio
from typing import Any

from modelberth.coalesce import CoalescingTransport


class _Recording(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0


async def test_writes_of_one_turn_leave_together_at_its_end() -> None:
    real = _Recording()
    transport = CoalescingTransport(real, asyncio.get_running_loop())
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.write(b"body")
    assert real.writes == []
    assert transport.get_write_buffer_size() == 23
    await asyncio.sleep(0)
    assert real.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
    transport.write(b"next chunk")
    await asyncio.sleep(0)
    assert real.writes[-1] == b"next chunk"  # a later turn's write is not held back


async def test_close_sends_what_is_held_and_abort_drops_it() -> None:
    real = _Recording()
    transport = CoalescingTransport(real, asyncio.get_running_loop())
    transport.write(b"last words")
    transport.close()
    assert real.writes == [b"last words"] and real.closed
    await asyncio.sleep(0)
    assert real.writes == [b"last words"]  # the scheduled flush finds nothing more

    real = _Recording()
    transport = CoalescingTransport(real, asyncio.get_running_loop())
    transport.write(b"never")
    transport.abort()
    await asyncio.sleep(0)
    assert real.writes == [] and real.closed
