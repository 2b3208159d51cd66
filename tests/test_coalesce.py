"""A response head leaves with the write after it, or at the end of the loop turn."""

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


async def test_a_head_leaves_with_the_body_in_one_write() -> None:
    real = _Recording()
    transport = CoalescingTransport(real, asyncio.get_running_loop())
    transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n")
    assert real.writes == []
    assert transport.get_write_buffer_size() == 38
    transport.write(b"body")
    assert real.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nbody"]  # at once
    transport.write(b"6\r\nchunk!\r\n")
    assert real.writes[-1] == b"6\r\nchunk!\r\n"  # body chunks are never held


async def test_a_head_alone_leaves_at_the_end_of_the_turn() -> None:
    real = _Recording()
    transport = CoalescingTransport(real, asyncio.get_running_loop())
    transport.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
    assert real.writes == []
    await asyncio.sleep(0)
    assert real.writes == [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"]


async def test_close_sends_what_is_held_and_abort_drops_it() -> None:
    real = _Recording()
    transport = CoalescingTransport(real, asyncio.get_running_loop())
    transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")
    transport.close()
    assert real.writes == [b"HTTP/1.1 204 No Content\r\n\r\n"] and real.closed
    await asyncio.sleep(0)
    assert len(real.writes) == 1  # the scheduled flush finds nothing more

    real = _Recording()
    transport = CoalescingTransport(real, asyncio.get_running_loop())
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.abort()
    await asyncio.sleep(0)
    assert real.writes == [] and real.closed
