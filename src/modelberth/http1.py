"""The HTTP/1.1 protocol uvicorn runs for each client connection, in place of its own.

uvicorn keeps the process: sockets, lifespan, signals, graceful shutdown, the Date header.
This protocol parses requests (httptools) and hands each to a direct handler when its router
claims it (the proxy's requests: no ASGI messages), else to the ASGI app (FastAPI). It frames
the answers and holds writes until the end of the event-loop turn, so a response's head and
body leave in one system call. It does per request only what modelberth needs: the barest
forwarder on it costs 31 us of CPU per request against ~50 us on uvicorn's own protocol
(docs/decisions.md). No WebSocket upgrades (answered as plain HTTP), no TLS."""

from __future__ import annotations

import asyncio
import http
import logging
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

import httptools
import uvicorn
from uvicorn.server import ServerState

Message = MutableMapping[str, Any]
ASGIApp = Callable[[Message, Callable[[], Awaitable[Message]],
                    Callable[[Message], Awaitable[None]]], Awaitable[None]]
Handler = Callable[["Exchange"], Awaitable[None]]
Router = Callable[[str, str], Handler | None]  # (method, path) -> a direct handler, or the app

_HIGH_WATER = 64 * 1024  # bytes buffered (request body in, or answer out) before pushing back
# A request body still arriving when its answer goes out (an early 401 or 413) is read and
# discarded to keep the connection if it is at most this large, as Go's net/http does;
# a larger one, one of unknown length, or one the client holds back for a 100 Continue it
# will not get, ends the connection instead.
_DISCARD_AT_MOST = 256 * 1024
_LINGER = 5.0  # seconds such a connection goes on discarding what the client still sends
_DISCONNECT: Message = {"type": "http.disconnect"}


def _status_line(code: int) -> bytes:
    try:
        phrase = http.HTTPStatus(code).phrase.encode()
    except ValueError:
        phrase = b""
    return b"HTTP/1.1 %d %s\r\n" % (code, phrase)


_STATUS_LINE = {code: _status_line(code) for code in range(100, 600)}
_NO_BODY_STATUS = frozenset({204, 304}) | frozenset(range(100, 200))
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

error_log = logging.getLogger("uvicorn.error")
access_log = logging.getLogger("uvicorn.access")


class Http1Protocol(asyncio.Protocol):
    """One client connection. Requests are answered in order; a pipelined request waits
    (with reading paused) until the one before it has its whole response."""

    def __init__(self, config: uvicorn.Config, server_state: ServerState,
                 app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None,
                 router: Router | None = None) -> None:
        if not config.loaded:
            config.load()
        self.app: ASGIApp = config.loaded_app
        self.router = router
        self.loop = _loop or asyncio.get_event_loop()
        self.state = server_state
        self.app_state = app_state
        self.log_access = config.access_log and access_log.hasHandlers()
        self.idle_timeout = float(config.timeout_keep_alive)
        self.parser = httptools.HttpRequestParser(self)
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        self.transport: asyncio.Transport | None = None
        self.server: tuple[str, int] | None = None
        self.client: tuple[str, int] | None = None
        self.current: Exchange | None = None  # the request being answered
        self.incoming: Exchange | None = None  # the request being parsed
        self.waiting: deque[Exchange] = deque()  # pipelined requests, oldest first
        self.held: list[bytes] = []
        self.held_size = 0
        self.read_paused = False
        self.writable: asyncio.Future[None] | None = None  # set while the transport is full
        self.last_active = 0.0
        self.idle_timer: asyncio.TimerHandle | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._expect_continue = False
        self._defaults: list[tuple[bytes, bytes]] | None = None
        self._default_head = b""
        self.lingering = False  # answered and closing: what arrives is discarded

    # --- connection ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.state.connections.add(self)  # type: ignore[arg-type]
        self.server = _address(transport.get_extra_info("sockname"))
        self.client = _address(transport.get_extra_info("peername"))
        self.last_active = self.loop.time()
        self.idle_timer = self.loop.call_later(self.idle_timeout, self._check_idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.connections.discard(self)
        for exchange in (self.current, self.incoming, *self.waiting):
            if exchange is not None and not exchange.disconnected:
                exchange.disconnected = True
                exchange.wake()
                if exchange.cancel_on_disconnect and exchange.task is not None \
                        and not exchange.done:
                    exchange.task.cancel(msg="client disconnected")
        self.waiting.clear()
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        self.held = []

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return
        self.last_active = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # No protocol upgrades: the request is answered as plain HTTP, and the connection
            # ends there (the parser reads nothing after an upgrade request).
            exchange = self.incoming or self.current
            if exchange is not None:
                exchange.keep_alive = False
                self.on_message_complete()
        except httptools.HttpParserError as exc:
            error_log.warning("Invalid HTTP request received: %s", exc)
            self._reject(b"Invalid HTTP request received.")

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: close when idle, else after the current answer."""
        if self.current is None:
            self.close()
        else:
            self.current.keep_alive = False

    def pause_writing(self) -> None:
        self.writable = self.loop.create_future()

    def resume_writing(self) -> None:
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)
        self.writable = None

    # --- parser callbacks --------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._expect_continue = False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self._expect_continue = True
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        version = parser.get_http_version()
        url = httptools.parse_url(self._url)
        raw_path: bytes = url.path
        path = raw_path.decode("ascii")
        scope: Message = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": version, "server": self.server, "client": self.client,
            "scheme": "http", "method": parser.get_method().decode("ascii"), "root_path": "",
            "path": urllib.parse.unquote(path) if "%" in path else path,
            "raw_path": raw_path, "query_string": url.query or b"",
            "headers": self._headers,
        }
        keep_alive = version != "1.0" and parser.should_keep_alive()
        handler = self.router(scope["method"], scope["path"]) if self.router else None
        exchange = Exchange(self, scope, handler, keep_alive, self._expect_continue)
        self.incoming = exchange
        if self.current is None:
            self._start(exchange)
        else:
            self.waiting.append(exchange)
            self.pause_reading()

    def on_body(self, body: bytes) -> None:
        exchange = self.incoming
        if exchange is None or exchange.done:
            return
        exchange.body.append(body)
        exchange.buffered += len(body)
        if exchange.buffered > _HIGH_WATER:
            self.pause_reading()
        exchange.wake()

    def on_message_complete(self) -> None:
        exchange = self.incoming
        if exchange is not None:
            exchange.complete = True
            exchange.wake()
        self.incoming = None

    # --- used by exchanges -------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue bytes to go out at the end of this loop turn, with anything else written;
        past _HIGH_WATER they go at once, so that the transport can push back."""
        if not self.held:
            self.loop.call_soon(self.flush)
        self.held.append(data)
        self.held_size += len(data)
        if self.held_size > _HIGH_WATER:
            self.flush()

    def flush(self) -> None:
        if not self.held or self.transport is None:
            return
        data = self.held[0] if len(self.held) == 1 else b"".join(self.held)
        self.held = []
        self.held_size = 0
        if not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        self.flush()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def close_after_discarding(self) -> None:
        """Close a connection whose client is still sending a request body: shut the write
        side after the answer and discard what arrives until the client closes, for at most
        _LINGER seconds. Closing at once with unread bytes would reset the connection, which
        can destroy the answer before the client reads it (nginx's lingering close)."""
        self.flush()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if not transport.can_write_eof():
            transport.close()
            return
        self.lingering = True
        transport.write_eof()
        self.resume_reading()
        self.loop.call_later(_LINGER, self.close)

    async def drain(self) -> None:
        if self.writable is not None:
            await asyncio.shield(self.writable)

    def pause_reading(self) -> None:
        if not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused and self.transport is not None and not self.transport.is_closing():
            self.read_paused = False
            self.transport.resume_reading()

    def default_head(self) -> bytes:
        """uvicorn's default headers (Date, changed each second), as head lines."""
        defaults = self.state.default_headers
        if defaults is not self._defaults:
            self._defaults = defaults
            self._default_head = b"".join(name + b": " + value + b"\r\n"
                                          for name, value in defaults)
        return self._default_head

    def answered(self, exchange: Exchange) -> None:
        """The exchange's response is complete: start the next pipelined request, if any."""
        self.state.total_requests += 1
        if self.current is exchange:
            self.current = None
        if not exchange.keep_alive:
            if exchange.complete:
                self.close()
            else:
                self.close_after_discarding()
            return
        self.last_active = self.loop.time()
        if self.waiting:
            self._start(self.waiting.popleft())
        if not self.waiting:
            self.resume_reading()

    # --- internals ---------------------------------------------------------------------

    def _start(self, exchange: Exchange) -> None:
        self.current = exchange
        task = exchange.task = self.loop.create_task(exchange.run(self.app))
        self.state.tasks.add(task)
        task.add_done_callback(self.state.tasks.discard)

    def _check_idle(self) -> None:
        """Close a keep-alive connection that has been quiet for `timeout_keep_alive`.
        One timer per connection, re-armed lazily, instead of one per request."""
        busy = self.current is not None or self.incoming is not None
        idle_for = self.loop.time() - self.last_active
        if not busy and idle_for >= self.idle_timeout:
            self.idle_timer = None
            self.close()
            return
        wait = self.idle_timeout if busy else self.idle_timeout - idle_for
        self.idle_timer = self.loop.call_later(wait, self._check_idle)

    def _reject(self, message: bytes) -> None:
        if self.current is None or not self.current.started:
            self.write(b"".join([
                _STATUS_LINE[400], b"content-type: text/plain; charset=utf-8\r\n",
                b"content-length: %d\r\n" % len(message), b"connection: close\r\n\r\n",
                message]))
        self.close()


class Exchange:
    """One request and its response. The ASGI app sees it as `receive` and `send`; a direct
    handler (the proxy) calls `start`, `send_chunk`, `finish` and `respond`, which frame the
    same bytes without building ASGI messages."""

    __slots__ = (
        "body",
        "buffered",
        "cancel_on_disconnect",
        "chunked",
        "complete",
        "conn",
        "delivered",
        "disconnected",
        "done",
        "expect_continue",
        "handler",
        "head_only",
        "keep_alive",
        "remaining",
        "scope",
        "started",
        "task",
        "waiter",
    )

    def __init__(self, conn: Http1Protocol, scope: Message, handler: Handler | None,
                 keep_alive: bool, expect_continue: bool) -> None:
        self.conn = conn
        self.scope = scope
        self.handler = handler
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.body: list[bytes] = []
        self.buffered = 0
        self.complete = False  # the whole request body has arrived
        self.delivered = False  # ... and has been handed to the app
        self.disconnected = False
        self.started = False
        self.done = False  # the whole response has been written
        self.chunked = False
        self.remaining: int | None = None  # body bytes still due under Content-Length
        self.head_only = scope["method"] == "HEAD"
        self.waiter: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None  # the one answering, once started
        # Set by a handler: the client going away before the response is complete cancels
        # `task` (with the message "client disconnected").
        self.cancel_on_disconnect = False

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def run(self, app: ASGIApp) -> None:
        try:
            if self.handler is not None:
                await self.handler(self)
            else:
                self.scope["state"] = self.conn.app_state.copy()  # the lifespan's state
                await app(self.scope, self.receive, self.send)
        except BaseException as exc:
            error_log.error("Exception while answering %s %s\n", self.scope["method"],
                            self.scope["path"], exc_info=exc)
            if not self.started and not self.disconnected:
                self._send_500()
            else:
                self.conn.close()
        else:
            if self.disconnected or self.done:
                return
            if not self.started:
                error_log.error("ASGI callable returned without starting response.")
                self._send_500()
            else:
                error_log.error("ASGI callable returned without completing response.")
                self.conn.close()

    async def receive(self) -> Message:
        while True:
            if self.disconnected or self.done:
                return _DISCONNECT
            if not self.delivered and (self.body or self.complete):
                body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
                self.body = []
                self.buffered = 0
                self.delivered = self.complete
                if not self.complete:
                    self.conn.resume_reading()
                return {"type": "http.request", "body": body, "more_body": not self.complete}
            if self.expect_continue:
                self.expect_continue = False
                self.conn.write(_CONTINUE)
            self.waiter = self.conn.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None

    def whole_body(self) -> bytes | None:
        """The request body, if it has all arrived and not been read: no wait, no message."""
        if not self.complete or self.delivered or self.disconnected:
            return None
        self.delivered = True
        body, self.body = self.body, []
        return body[0] if len(body) == 1 else b"".join(body)

    async def send(self, message: Message) -> None:
        if self.conn.writable is not None and not self.disconnected:
            await self.conn.drain()
        if self.disconnected:
            return
        kind = message["type"]
        if not self.started:
            if kind != "http.response.start":
                raise RuntimeError(f"Expected 'http.response.start', got '{kind}'.")
            headers = []
            for name, value in message.get("headers", ()):
                if b"\n" in value or b"\r" in value or b"\n" in name or b":" in name:
                    raise RuntimeError(f"Invalid HTTP header {name!r}.")
                headers.append((name.lower(), value))
            self.start(message["status"], headers)
        elif not self.done:
            if kind != "http.response.body":
                raise RuntimeError(f"Expected 'http.response.body', got '{kind}'.")
            self._body(message.get("body", b""), message.get("more_body", False))
        else:
            raise RuntimeError(f"Unexpected '{kind}' after the response completed.")

    # --- direct API --------------------------------------------------------------------

    def start(self, status: int, headers: Iterable[tuple[bytes, bytes]]) -> None:
        """Write the head (header names in lower case), to go out at the end of this loop
        turn with what follows it. Framing: the headers' Content-Length, else chunked."""
        if not self.disconnected:
            self.conn.write(self._head(status, headers, None))

    def respond(self, status: int, headers: Iterable[tuple[bytes, bytes]],
                body: bytes) -> None:
        """A whole response, with its Content-Length, in one piece."""
        if self.disconnected or self.done:
            return
        head = self._head(status, headers, len(body))
        no_body = self.head_only or self.remaining is None
        self.done = True
        self.conn.write(head if no_body else head + body)
        self.conn.answered(self)

    def _head(self, status: int, headers: Iterable[tuple[bytes, bytes]],
              length: int | None) -> bytes:
        """With `length`, that is the Content-Length whatever the headers say."""
        self.started = True
        if not self.complete and not self._discardable():
            self.keep_alive = False
        self.expect_continue = False
        conn = self.conn
        lines = [_STATUS_LINE[status], conn.default_head()]
        closing = False
        for name, value in headers:
            if name == b"content-length":
                if length is None:
                    self.remaining = int(value)
                    lines.append(b"content-length: " + value + b"\r\n")
                continue
            if name == b"transfer-encoding":
                continue  # the framing is this protocol's choice, made below
            if name == b"connection":
                closing = closing or b"close" in value.lower()
                continue
            lines.append(name + b": " + value + b"\r\n")
        if length is not None:
            self.remaining = length
            lines.append(b"content-length: %d\r\n" % length)
        if conn.log_access:
            access_log.info('%s - "%s %s HTTP/%s" %d', _client(self.scope),
                            self.scope["method"], _target(self.scope),
                            self.scope["http_version"], status)
        if status in _NO_BODY_STATUS or self.head_only:
            self.remaining = None
        elif self.remaining is None:
            if self.scope["http_version"] == "1.0":
                self.keep_alive = False  # the end of the connection ends the body
            else:
                self.chunked = True
                lines.append(b"transfer-encoding: chunked\r\n")
        if not self.keep_alive or closing:
            self.keep_alive = False
            lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)

    def _discardable(self) -> bool:
        """Whether the rest of a request body not read yet is cheap enough to discard."""
        if self.expect_continue:
            return False
        for name, value in self.scope["headers"]:
            if name == b"content-length":
                return value.isdigit() and int(value) <= _DISCARD_AT_MOST
        return False

    async def send_chunk(self, data: bytes) -> None:
        """One piece of a streamed body, written this loop turn; waits while the client's
        socket is full, so a slow reader slows the upstream instead of filling memory."""
        if self.conn.writable is not None and not self.disconnected:
            await self.conn.drain()
        if not self.disconnected and data:
            self._body(data, True)

    def finish(self, data: bytes = b"") -> None:
        if not self.disconnected and not self.done:
            self._body(data, False)

    def cut(self) -> None:
        """End the response short by closing the connection: the client sees the body
        end before its length (or without the last chunk)."""
        self.done = True
        self.conn.close()

    def _body(self, body: bytes, more: bool) -> None:
        conn = self.conn
        if self.head_only:
            pass
        elif self.chunked:
            if body:
                conn.write(b"%x\r\n%s\r\n" % (len(body), body))
            if not more:
                conn.write(b"0\r\n\r\n")
        elif body:
            if self.remaining is not None:
                if len(body) > self.remaining:
                    raise RuntimeError("Response content longer than Content-Length")
                self.remaining -= len(body)
            conn.write(body)
        if not more:
            if self.remaining and not self.head_only:
                raise RuntimeError("Response content shorter than Content-Length")
            self.done = True
            self.wake()
            conn.answered(self)

    def _send_500(self) -> None:
        self.keep_alive = False
        self.respond(500, [(b"content-type", b"text/plain; charset=utf-8")],
                     b"Internal Server Error")


def _address(value: Any) -> tuple[str, int] | None:
    if isinstance(value, (tuple, list)) and len(value) >= 2:
        return str(value[0]), int(value[1])
    return None


def _client(scope: Message) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "-"


def _target(scope: Message) -> str:
    query = scope["query_string"]
    path: str = scope["path"]
    return path + ("?" + query.decode("latin-1") if query else "")
