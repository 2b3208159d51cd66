"""The hot path's HTTP/1.1 client to upstreams: keep-alive connections pooled per address,
answers parsed by httptools and handed on piece by piece, with flow control.

Limits, and why:
- Connect timeout, 10 s: a local upstream that does not accept by then is not coming; the
  request was never sent (UpstreamUnreachable), so the caller may send it elsewhere or again.
- Idle timeout, 4 s (`UpstreamClient(idle_timeout=...)`): below the upstreams' own keep-alive
  (llama-server and uvicorn close idle connections at 5 s), so a pooled connection is rarely
  reused just as the upstream closes it. Idle connections are closed actively (one timer per
  address), so none lingers half-closed (CLOSE_WAIT).
- Pool size, 256 idle connections per address, reused newest first so the others age out.
- High water, 256 KB: answer bytes buffered before reading from the upstream is paused, until
  the caller takes them.
- Replay (RFC 9112 §9.3.1): a request is sent again, once, on a new connection only when that
  is safe: its method is idempotent (GET, HEAD, OPTIONS, PUT, DELETE, TRACE) and a reused
  pooled connection failed before any byte of the answer arrived (the stale keep-alive race).
  Anything else, a POST above all (even without a body), may have been read and acted on by
  the upstream: it fails with UpstreamError, whose `answered` and `reused` let the caller
  decide; so does a timed-out request. A connection that saw the upstream's EOF is never
  reused.
- Timeouts for the answer: `request(first_byte_timeout=)` for its head, `next_piece()` and
  `read()`'s `stall_timeout` between its bytes (none by default); past them the connection is
  aborted and UpstreamTimeout raised. One timer per connection, re-armed lazily, serves both.

It does only what forwarding to a local model server needs, at a quarter of the CPU time of
aiohttp's ClientSession per request (decision 12 in docs/decisions.md). Health probes and
everything off the hot path keep using aiohttp."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import cast

import httptools

Headers = list[tuple[bytes, bytes]]
Address = tuple[str, int]

_CONNECT_TIMEOUT = 10.0
_IDLE_TIMEOUT = 4.0  # a pooled connection unused this long is closed
_MAX_IDLE = 256  # pooled connections kept per address
_HIGH_WATER = 256 * 1024  # answer bytes buffered before the upstream is paused
_WHOLE_REQUEST = 64 * 1024  # bodies up to this size go out in one write with the head
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})  # RFC 9110 §9.2.2
_EARLY = 0.001  # a timer firing this close to its deadline counts as on time (uvloop: ms)


class UpstreamError(Exception):
    """The connection failed, or the upstream's answer was cut short or malformed.

    `answered`: some byte of the answer had arrived. `reused`: the request went out on a
    pooled connection. Neither set: the upstream may still have read the request."""

    def __init__(self, message: str, *, answered: bool = False, reused: bool = False) -> None:
        super().__init__(message)
        self.answered = answered
        self.reused = reused


class UpstreamUnreachable(UpstreamError):
    """Connecting failed: the request never reached the upstream."""


class UpstreamTimeout(UpstreamError):
    """The answer's head, or its next byte, did not arrive in time; the connection was
    aborted."""


class _Pool:
    """One address's idle connections, oldest first, and the timer that closes them."""

    __slots__ = ("idle", "timer")

    def __init__(self) -> None:
        self.idle: deque[_Connection] = deque()
        self.timer: asyncio.TimerHandle | None = None


class _Connection(asyncio.Protocol):
    """One keep-alive connection; carries one request at a time."""

    def __init__(self, pool: _Pool) -> None:
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
        return (not self._eof and self._transport is not None
                and not self._transport.is_closing())

    def send(self, method: bytes, head: bytes, body: bytes,
             first_byte_timeout: float | None) -> None:
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
            self._fail(UpstreamError(f"malformed answer from the upstream: {exc}",
                                     answered=True, reused=self.reused))
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
        self._fail(UpstreamError(f"the upstream closed the connection{reason}",
                                 answered=self.received, reused=self.reused))

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
            message = (f"no answer from the upstream within {self._head_timeout:g}s "
                       "(first_byte_timeout)")
        elif self._stall and self._waiter is not None and not self._waiter.done():
            due = self._wait_since + self._stall
            message = f"the upstream sent nothing for {self._stall:g}s (stream_stall_timeout)"
        else:
            return  # nothing awaited with a limit: the next wait or request arms the timer
        if self.loop.time() < due - _EARLY:
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


class UpstreamResponse:
    """An answer whose head has arrived (header names in lower case); its body is read with
    `read()` or piece by piece with `next_piece()`. `release()` must follow: it pools or
    closes the connection."""

    __slots__ = ("_address", "_client", "_conn", "headers", "status")

    def __init__(self, client: UpstreamClient, conn: _Connection, address: Address) -> None:
        self._client, self._conn, self._address = client, conn, address
        self.status = conn.status
        self.headers = conn.headers

    async def next_piece(self, stall_timeout: float | None = None) -> bytes:
        """The body received since the last call (waiting for some); b"" at the end.
        Raises UpstreamError when the upstream breaks off, UpstreamTimeout when it sends
        nothing for `stall_timeout` seconds (0 or None: no limit)."""
        conn = self._conn
        while True:
            data = conn.take()
            if data:
                return data
            if conn.complete:
                return b""
            if conn.error is not None:
                raise conn.error
            await conn.more(stall_timeout)

    def arrived_whole(self) -> bytes | None:
        """The whole body if all of it is here already (a small answer usually comes in the
        same read as its head), else None; `read()` waits for it."""
        conn = self._conn
        return conn.take() if conn.complete else None

    async def read(self, stall_timeout: float | None = None) -> bytes:
        pieces = []
        while piece := await self.next_piece(stall_timeout):
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
    def __init__(self, idle_timeout: float = _IDLE_TIMEOUT) -> None:
        self._idle_timeout = idle_timeout
        self._pools: dict[Address, _Pool] = {}

    async def request(self, method: str, host: str, port: int, target: str,
                      headers: Headers, body: bytes,
                      first_byte_timeout: float | None = None) -> UpstreamResponse:
        """Send a request and wait for the answer's head. Raises UpstreamUnreachable when
        no connection could be made, UpstreamTimeout when the head has not arrived
        `first_byte_timeout` seconds after the request went out (0 or None: no limit),
        UpstreamError when the upstream failed before its head.

        Only an idempotent request whose pooled connection failed before a single byte of
        the answer (the stale keep-alive race: the upstream closed it as we reused it) is
        sent once more, on a new connection; see the module's docstring."""
        address = (host, port)
        head = _request_head(method, host, port, target, headers, len(body))
        verb = method.encode("ascii")
        conn = self._pooled(address)
        if conn is not None:
            try:
                await _exchange(conn, verb, head, body, first_byte_timeout)
                return UpstreamResponse(self, conn, address)
            except UpstreamError as exc:
                if (exc.answered or method not in _IDEMPOTENT
                        or isinstance(exc, UpstreamTimeout)):
                    raise
        conn = await self._connect(address)
        await _exchange(conn, verb, head, body, first_byte_timeout)
        return UpstreamResponse(self, conn, address)

    def pool(self, conn: _Connection, address: Address) -> None:
        pool = conn.pool
        if self._pools.get(address) is not pool:  # the client was closed meanwhile
            conn.close()
            return
        idle = pool.idle
        if len(idle) >= _MAX_IDLE:
            idle.popleft().close()
        conn.idle_since = now = conn.loop.time()
        idle.append(conn)
        if pool.timer is None:
            pool.timer = conn.loop.call_at(now + self._idle_timeout, self._expire, pool)

    async def close(self) -> None:
        for pool in self._pools.values():
            if pool.timer is not None:
                pool.timer.cancel()
                pool.timer = None
            while pool.idle:
                pool.idle.pop().close()
        self._pools.clear()

    def _pooled(self, address: Address) -> _Connection | None:
        pool = self._pools.get(address)
        if pool is None:
            return None
        idle = pool.idle
        while idle:
            conn = idle.pop()  # the newest: the others age out
            if conn.usable and conn.loop.time() - conn.idle_since < self._idle_timeout:
                return conn
            conn.close()
        return None

    def _expire(self, pool: _Pool) -> None:
        """Close the address's connections idle for the timeout, and re-arm for the next."""
        pool.timer = None
        idle = pool.idle
        if not idle:
            return
        loop = idle[0].loop
        oldest_kept = loop.time() - self._idle_timeout + _EARLY
        while idle and idle[0].idle_since <= oldest_kept:
            idle.popleft().close()
        if idle:
            pool.timer = loop.call_at(idle[0].idle_since + self._idle_timeout,
                                      self._expire, pool)

    async def _connect(self, address: Address) -> _Connection:
        loop = asyncio.get_running_loop()
        pool = self._pools.get(address)
        if pool is None:
            pool = self._pools[address] = _Pool()
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT):
                _, conn = await loop.create_connection(lambda: _Connection(pool), *address)
        except TimeoutError:
            raise UpstreamUnreachable(
                f"connecting to {address[0]}:{address[1]} timed out") from None
        except OSError as exc:
            raise UpstreamUnreachable(
                f"cannot connect to {address[0]}:{address[1]}: {exc.strerror or exc}") from None
        return conn


async def _exchange(conn: _Connection, verb: bytes, head: bytes, body: bytes,
                    first_byte_timeout: float | None) -> None:
    """Send the request and wait for the answer's head; on any failure the connection is
    dropped."""
    conn.send(verb, head, body, first_byte_timeout)
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
