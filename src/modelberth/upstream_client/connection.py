"""One keep-alive connection to an upstream: the asyncio protocol that sends a request and
the httptools callbacks that parse its answer, with flow control and the answer's timeouts."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import cast

import httptools

from modelberth.upstream_client.errors import UpstreamError, UpstreamTimeout

# By name, not as limits.X: one lookup less on every request and every piece of an answer.
from modelberth.upstream_client.limits import EARLY, HIGH_WATER, WHOLE_REQUEST

Headers = list[tuple[bytes, bytes]]


class Pool:
    """One address's idle connections, oldest first, and the timer that closes them."""

    __slots__ = ("idle", "timer")

    def __init__(self) -> None:
        self.idle: deque[Connection] = deque()
        self.timer: asyncio.TimerHandle | None = None


class Connection(asyncio.Protocol):
    """One keep-alive connection; carries one request at a time."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._head: asyncio.Future[None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._pieces: list[bytes] = []
        self._buffered = 0
        self._paused = False
        self._head_only = False
        self._eof = False
        self._sent = False  # a request went out on this connection before
        # One timer for both timeouts: it is left armed from request to request and, when
        # it fires, checks what is awaited now, so a request usually costs no timer at all.
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._head_due = 0.0  # when the head must have arrived (0: no limit)
        self._head_timeout = 0.0
        self._stall = 0.0  # the current wait's stall_timeout (0: no limit)
        self._wait_since = 0.0
        self.status = 0
        self.headers: Headers = []
        self.complete = False
        self.reusable = False
        self.received = False  # any byte of the current answer
        self.reused = False  # the current request went out on a pooled connection
        self.error: UpstreamError | None = None
        self.idle_since = 0.0

    # --- used by the client ---------------------------------------------------------------

    @property
    def usable(self) -> bool:
        return not self._eof and self._transport is not None and not self._transport.is_closing()

    def send(
        self, method: bytes, head: bytes, body: bytes, first_byte_timeout: float | None
    ) -> None:
        assert self._transport is not None
        self._head = self.loop.create_future()
        self._head_only = method == b"HEAD"
        self.status, self.headers, self.error = 0, [], None
        self.complete = self.reusable = self.received = False
        self.reused, self._sent = self._sent, True
        if first_byte_timeout:
            self._head_timeout = first_byte_timeout
            self._head_due = self.loop.time() + first_byte_timeout
            self._arm(self._head_due)
        else:
            self._head_due = 0.0
        if len(body) <= WHOLE_REQUEST:
            self._transport.write(head + body)
        else:
            self._transport.write(head)
            self._transport.write(body)

    def head_received(self) -> asyncio.Future[None]:
        """Done when the answer's head has arrived (a future, not a coroutine: one frame
        less on every request's path)."""
        assert self._head is not None
        return self._head

    def take(self) -> bytes:
        """Everything received since the last call, or b""."""
        if not self._pieces:
            return b""
        data = self._pieces[0] if len(self._pieces) == 1 else b"".join(self._pieces)
        self._pieces.clear()
        self._buffered = 0
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return data

    async def more(self, stall_timeout: float | None) -> None:
        """Wait until more of the answer, its end or an error arrives (an UpstreamTimeout
        error if nothing arrives for `stall_timeout` seconds)."""
        self._waiter = self.loop.create_future()
        if stall_timeout:
            self._stall = stall_timeout
            self._wait_since = self.loop.time()
            self._arm(self._wait_since + stall_timeout)
        else:
            self._stall = 0.0
        try:
            await self._waiter
        finally:
            self._waiter = None

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # --- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self._head is None or self.complete:
            self.abort()  # unasked-for bytes: the connection cannot be trusted any more
            return
        self.received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(
                UpstreamError(
                    f"malformed answer from the upstream: {exc}", answered=True, reused=self.reused
                )
            )
            self.abort()
            return
        if self._stall and self._waiter is not None and not self._waiter.done():
            self._wait_since = self.loop.time()  # bytes, but no body yet (chunk framing)

    def eof_received(self) -> bool:
        self._eof = True  # never reused from now on; the transport closes itself
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        with contextlib.suppress(ValueError):
            self.pool.idle.remove(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._head is None or self.complete or self.error is not None:
            return
        if self._head.done() and self._ends_at_close():
            self.on_message_complete()
            return
        reason = f": {exc}" if exc else ""
        self._fail(
            UpstreamError(
                f"the upstream closed the connection{reason}",
                answered=self.received,
                reused=self.reused,
            )
        )

    # --- httptools callbacks --------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        if self.status < 200:
            return  # informational (100 Continue): the real answer follows
        assert self._head is not None
        if not self._head.done():
            self._head.set_result(None)
        if self._head_only:
            self.complete = True  # a HEAD answer has no body, whatever it says it would have
            self._wake()

    def on_body(self, body: bytes) -> None:
        self._pieces.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.status < 200:
            self.headers = []
            return
        self.reusable = not self._head_only and self._parser.should_keep_alive()
        self.complete = True
        self._wake()

    # --- internals ------------------------------------------------------------------------

    def _ends_at_close(self) -> bool:
        """True when the answer's length is "until the connection closes"."""
        for name, value in self.headers:
            if name == b"content-length" or (
                name == b"transfer-encoding" and b"chunked" in value.lower()
            ):
                return False
        return True

    def _arm(self, due: float) -> None:
        """Have the timer fire by `due` (it may fire earlier: `_on_timer` re-arms it)."""
        if self._timer is not None:
            if self._timer_at <= due:
                return
            self._timer.cancel()
        self._timer_at = due
        self._timer = self.loop.call_at(due, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._head is None or self.complete or self.error is not None:
            return
        if not self._head.done():
            if not self._head_due:
                return
            due = self._head_due
            message = (
                f"no answer from the upstream within {self._head_timeout:g}s (first_byte_timeout)"
            )
        elif self._stall and self._waiter is not None and not self._waiter.done():
            due = self._wait_since + self._stall
            message = f"the upstream sent nothing for {self._stall:g}s (stream_stall_timeout)"
        else:
            return  # nothing awaited with a limit: the next wait or request arms the timer
        if self.loop.time() < due - EARLY:
            self._arm(due)
            return
        self._fail(UpstreamTimeout(message, answered=self.received, reused=self.reused))
        self.abort()

    def _fail(self, error: UpstreamError) -> None:
        if self.error is not None:
            return  # the first failure is the one to report
        self.error = error
        if self._head is not None and not self._head.done():
            self._head.set_exception(error)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
