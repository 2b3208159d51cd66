"""The hot path's HTTP/1.1 client to upstreams: keep-alive connections pooled per address,
answers parsed by httptools and handed on piece by piece, with flow control.

It does only what forwarding to a local model server needs, at a quarter of the CPU time of
aiohttp's ClientSession per request (measurements in docs/decisions.md). Health probes and
everything off the hot path keep using aiohttp."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import cast

import httptools

Headers = list[tuple[bytes, bytes]]
Address = tuple[str, int]

_CONNECT_TIMEOUT = 10.0
_IDLE_TIMEOUT = 15.0  # a pooled connection unused this long is closed
_MAX_IDLE = 256  # pooled connections kept per address
_HIGH_WATER = 256 * 1024  # answer bytes buffered before the upstream is paused
_WHOLE_REQUEST = 64 * 1024  # bodies up to this size go out in one write with the head


class UpstreamError(Exception):
    """The connection failed, or the upstream's answer was cut short or malformed."""


class UpstreamUnreachable(UpstreamError):
    """Connecting failed: the request never reached the upstream."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; carries one request at a time."""

    def __init__(self, pool: deque[_Connection]) -> None:
        self._pool = pool
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._head: asyncio.Future[None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._pieces: list[bytes] = []
        self._buffered = 0
        self._paused = False
        self._head_only = False
        self.status = 0
        self.headers: Headers = []
        self.complete = False
        self.reusable = False
        self.received = False  # any byte of the current answer
        self.error: UpstreamError | None = None
        self.idle_since = 0.0

    # --- used by the client ---------------------------------------------------------------

    @property
    def usable(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def send(self, method: bytes, head: bytes, body: bytes) -> None:
        assert self._transport is not None
        self._head = self._loop.create_future()
        self._head_only = method == b"HEAD"
        self.status, self.headers, self.error = 0, [], None
        self.complete = self.reusable = self.received = False
        if len(body) <= _WHOLE_REQUEST:
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

    async def more(self) -> None:
        """Wait until more of the answer, its end or an error arrives."""
        self._waiter = self._loop.create_future()
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
            self._fail(UpstreamError(f"malformed answer from the upstream: {exc}"))
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        with contextlib.suppress(ValueError):
            self._pool.remove(self)
        if self._head is None or self.complete:
            return
        if self._head.done() and self._ends_at_close():
            self.on_message_complete()
            return
        reason = f": {exc}" if exc else ""
        self._fail(UpstreamError(f"the upstream closed the connection{reason}"))

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
        if self._buffered > _HIGH_WATER and not self._paused and self._transport is not None:
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
            if name == b"content-length" or (name == b"transfer-encoding"
                                             and b"chunked" in value.lower()):
                return False
        return True

    def _fail(self, error: UpstreamError) -> None:
        self.error = error
        if self._head is not None and not self._head.done():
            self._head.set_exception(error)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class UpstreamResponse:
    """An answer whose head has arrived (header names in lower case); its body is read with
    `read()` or piece by piece with `next_piece()`. `release()` must follow: it pools or
    closes the connection."""

    __slots__ = ("_address", "_client", "_conn", "headers", "status")

    def __init__(self, client: UpstreamClient, conn: _Connection, address: Address) -> None:
        self._client, self._conn, self._address = client, conn, address
        self.status = conn.status
        self.headers = conn.headers

    async def next_piece(self) -> bytes:
        """The body received since the last call (waiting for some); b"" at the end.
        Raises UpstreamError when the upstream breaks off."""
        conn = self._conn
        while True:
            data = conn.take()
            if data:
                return data
            if conn.complete:
                return b""
            if conn.error is not None:
                raise conn.error
            await conn.more()

    def arrived_whole(self) -> bytes | None:
        """The whole body if all of it is here already (a small answer usually comes in the
        same read as its head), else None; `read()` waits for it."""
        conn = self._conn
        return conn.take() if conn.complete else None

    async def read(self) -> bytes:
        pieces = []
        while piece := await self.next_piece():
            pieces.append(piece)
        return b"".join(pieces)

    def release(self) -> None:
        conn = self._conn
        if conn.complete and conn.reusable and conn.usable:
            self._client.pool(conn, self._address)
        elif conn.complete:
            conn.close()
        else:
            conn.abort()  # an unfinished answer: the upstream learns the client is gone


class UpstreamClient:
    def __init__(self) -> None:
        self._idle: dict[Address, deque[_Connection]] = {}

    async def request(self, method: str, host: str, port: int, target: str,
                      headers: Headers, body: bytes) -> UpstreamResponse:
        """Send a request and wait for the answer's head. Raises UpstreamUnreachable when
        no connection could be made, UpstreamError when the upstream failed before its head.

        A pooled connection that closes before a single byte of the answer is the stale
        keep-alive race (the upstream closed it as we reused it); the request is sent once
        more on a new connection."""
        address = (host, port)
        head = _request_head(method, host, port, target, headers, len(body))
        verb = method.encode("ascii")
        conn = self._pooled(address)
        if conn is not None:
            try:
                await _exchange(conn, verb, head, body)
                return UpstreamResponse(self, conn, address)
            except UpstreamError:
                if conn.received:
                    raise
        conn = await self._connect(address)
        await _exchange(conn, verb, head, body)
        return UpstreamResponse(self, conn, address)

    def pool(self, conn: _Connection, address: Address) -> None:
        idle = self._idle.setdefault(address, deque())
        now = time.monotonic()
        while idle and (len(idle) >= _MAX_IDLE or now - idle[0].idle_since > _IDLE_TIMEOUT):
            idle.popleft().close()
        conn.idle_since = now
        idle.append(conn)

    async def close(self) -> None:
        for idle in self._idle.values():
            while idle:
                idle.pop().close()
        self._idle.clear()

    def _pooled(self, address: Address) -> _Connection | None:
        idle = self._idle.get(address)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if conn.usable and now - conn.idle_since <= _IDLE_TIMEOUT:
                return conn
            conn.close()
        return None

    async def _connect(self, address: Address) -> _Connection:
        loop = asyncio.get_running_loop()
        idle = self._idle.setdefault(address, deque())
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT):
                _, conn = await loop.create_connection(lambda: _Connection(idle), *address)
        except TimeoutError:
            raise UpstreamUnreachable(
                f"connecting to {address[0]}:{address[1]} timed out") from None
        except OSError as exc:
            raise UpstreamUnreachable(
                f"cannot connect to {address[0]}:{address[1]}: {exc.strerror or exc}") from None
        return conn


async def _exchange(conn: _Connection, verb: bytes, head: bytes, body: bytes) -> None:
    """Send the request and wait for the answer's head; on any failure the connection is
    dropped."""
    conn.send(verb, head, body)
    try:
        await conn.head_received()
    except BaseException:
        conn.abort()
        raise


def _request_head(method: str, host: str, port: int, target: str, headers: Headers,
                  length: int) -> bytes:
    lines = [f"{method} {target} HTTP/1.1\r\nhost: {host}:{port}\r\n"
             f"content-length: {length}\r\n".encode("latin-1")]
    for name, value in headers:
        lines.append(b"%s: %s\r\n" % (name, value))
    lines.append(b"\r\n")
    return b"".join(lines)
