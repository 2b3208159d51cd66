"""The public socket's HTTP/1.1 protocol: uvicorn's httptools protocol with the limits a
server facing hostile clients needs, which uvicorn leaves out.

uvicorn parses, frames, pipelines and flow-controls; this subclass only adds, before any
request reaches the app:

- a bound on the request head (bytes and header count: 431) and one `Host` header (400);
- a deadline for the head (`header_timeout`, counted from the connection's first byte or
  from its opening) and for each pause of a request body (`body_timeout`): slowloris
  clients are closed, not waited for;
- a cap on open connections: at the cap a connection that has sent nothing yet is closed to
  make room, and if there is none the newcomer gets a 503;
- errors the server writes itself are JSON in OpenAI's shape, counted by reason through
  `Limits.rejected` instead of logged one line each (a flood must not flood the log);
- a per-request hook for the proxy: a callback run when the client goes away
  (`on_disconnect`), and `cut()` to end an answer short.

The per-request cost is two clock reads and a counter; the timers are one per connection,
re-armed lazily.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, cast

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

Scope = MutableMapping[str, Any]
_DISCONNECT_HOOK = "modelberth.on_disconnect"
# A request body still arriving when its answer goes out (an early 401 or 413) is discarded
# to keep the connection if it is at most this large (as Go's net/http does); a larger one,
# one of unknown length, or one the client holds back for a 100 Continue it will not get,
# ends the connection (lingeringly, see _Transport) instead.
_DISCARD_AT_MOST = 256 * 1024
_LINGER = 5.0
_PROTOCOL = "modelberth.protocol"


@dataclass(slots=True)
class Limits:
    max_head_bytes: int = 64 * 1024
    max_headers: int = 100
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections: int = 10_000
    rejected: Callable[[str], None] = field(default=lambda reason: None)


class _Rejected(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


def error_body(status: int, message: str, code: str) -> bytes:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return json.dumps(
        {"error": {"message": message, "type": kind, "param": None, "code": code}}
    ).encode()


class _Transport(asyncio.Transport):
    """Stands in for the connection's transport: holds the writes made during one
    event-loop turn and sends them as one at its end (a response's head and body, and the
    turn's other answers, in one system call; nothing waits past the turn, so streamed
    chunks still leave one by one), and closes a connection whose client is still sending
    a request body lingeringly: the write side is shut after the answer and what arrives is
    discarded until the client closes, for at most `_LINGER` seconds. Closing at once with
    unread bytes would reset the connection, which can destroy the answer before the
    client reads it (nginx's lingering close)."""

    def __init__(self, transport: asyncio.Transport, protocol: HttpProtocol) -> None:
        super().__init__()
        self._transport = transport
        self._protocol = protocol
        self._loop = protocol.loop
        self._held: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def flush(self) -> None:
        if not self._held:
            return
        held = self._held[0] if len(self._held) == 1 else b"".join(self._held)
        self._held = []
        if not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        transport = self._transport
        if transport.is_closing():
            return
        if self._protocol.body_unread() and transport.can_write_eof():
            self._protocol.lingering = True
            transport.write_eof()
            transport.resume_reading()
            self._loop.call_later(_LINGER, transport.close)
            return
        transport.close()

    def abort(self) -> None:
        self._held = []
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing() or self._protocol.lingering

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._held))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        if not self._protocol.lingering:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()


class HttpProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: Limits,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits
        self._in_head = True  # a connection that has sent nothing is held to header_timeout
        self._head_began = 0.0
        self._head_bytes = 0
        self._raw_head_bytes = 0
        self._header_count = 0
        self._host_count = 0
        self._body_at = 0.0
        self._content_length: bytes | None = None
        self._keep_alive_after_body = False
        self._shutting_down = False
        self.lingering = False  # answered and closing: what arrives is discarded
        self._watchdog: asyncio.TimerHandle | None = None

    # --- connection --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        super().connection_made(_Transport(transport, self))
        self._head_began = self.loop.time()
        if len(self.connections) > self.limits.max_connections and not self._make_room():
            self._refuse(
                503, "connection_limit", "Too many open connections; retry later.", "server_busy"
            )
            return
        self._watchdog = self.loop.call_later(self.limits.header_timeout, self._watch)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        cycles = [self.cycle] if self.cycle is not None else []
        cycles += [cycle for cycle, _ in self.pipeline]
        super().connection_lost(exc)
        for cycle in cycles:
            hook = cast(Scope, cycle.scope).get(_DISCONNECT_HOOK)
            if hook is not None and not cycle.response_complete:
                hook()

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return
        self._unset_keepalive_if_required()
        if self._in_head:
            self._raw_head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            rejected = exc.__context__
            if isinstance(rejected, _Rejected):
                self._refuse(
                    rejected.status,
                    rejected.reason,
                    rejected.message,
                    "request_header_fields_too_large" if rejected.status == 431 else "bad_request",
                )
                return
            raise
        except httptools.HttpParserError as exc:
            self._refuse(400, "malformed", f"Invalid HTTP request: {exc}", "bad_request")
            return
        except httptools.HttpParserUpgrade:
            # No protocol upgrades: the request is answered as plain HTTP, and the
            # connection ends with it (the parser reads nothing after an upgrade request).
            if self.cycle is not None:
                self.cycle.keep_alive = False
            self.limits.rejected("upgrade")
            return
        # A single enormous header line is gathered inside the parser before any callback
        # sees it: bound the raw bytes too.
        if self._in_head and self._raw_head_bytes > 2 * self.limits.max_head_bytes:
            self._refuse(
                431, "head_too_large", self._head_too_large(), "request_header_fields_too_large"
            )

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, "malformed", msg, "bad_request")

    def shutdown(self) -> None:
        self._shutting_down = True
        super().shutdown()

    def body_unread(self) -> bool:
        """Whether the client is still sending a request body nobody will read."""
        cycle = self.cycle
        return cycle is not None and cycle.more_body and not cycle.disconnected

    # --- parser callbacks --------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_began = self.loop.time()
        self._head_bytes = self._header_count = self._host_count = 0
        self._content_length = None

    def on_url(self, url: bytes) -> None:
        self._head_bytes += len(url)
        if self._head_bytes > self.limits.max_head_bytes:
            raise _Rejected(431, "head_too_large", self._head_too_large())
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        self._header_count += 1
        if self._head_bytes > self.limits.max_head_bytes:
            raise _Rejected(431, "head_too_large", self._head_too_large())
        if self._header_count > self.limits.max_headers:
            raise _Rejected(
                431,
                "too_many_headers",
                f"The request has more than {self.limits.max_headers} headers.",
            )
        # uvicorn's on_header, with the names it lowers looked at once here.
        name = name.lower()
        if name == b"host":
            self._host_count += 1
        elif name == b"content-length":
            self._content_length = value
        elif name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._raw_head_bytes = 0
        if self._host_count != 1 and (self._host_count or self.parser.get_http_version() != "1.0"):
            raise _Rejected(
                400,
                "bad_host",
                f"A request must carry exactly one Host header (this one has {self._host_count}).",
            )
        self._body_at = self.loop.time()
        super().on_headers_complete()
        self.scope[_PROTOCOL] = self  # type: ignore[literal-required]
        # Until its body has arrived, an answer ends the connection unless what is left of
        # the body is cheap to discard: the head must say so (`connection: close`).
        cycle = self.cycle
        length = self._content_length
        if not (
            length is not None
            and length.isdigit()
            and int(length) <= _DISCARD_AT_MOST
            and not self.expect_100_continue
        ):
            self._keep_alive_after_body = cycle.keep_alive
            cycle.keep_alive = False

    def on_message_complete(self) -> None:
        super().on_message_complete()
        cycle = self.cycle
        if (
            cycle is not None
            and self._keep_alive_after_body
            and not cycle.response_started
            and not self._shutting_down
        ):
            cycle.keep_alive = True
        self._keep_alive_after_body = False

    def on_body(self, body: bytes) -> None:
        self._body_at = self.loop.time()
        super().on_body(body)

    # --- internals ---------------------------------------------------------------------

    def _head_too_large(self) -> str:
        return f"The request head is larger than {self.limits.max_head_bytes} bytes."

    def _refuse(self, status: int, reason: str, message: str, code: str) -> None:
        """Answer with an OpenAI-shaped error and close, unless an answer is under way."""
        self.limits.rejected(reason)
        if self.transport.is_closing():
            return
        if self.cycle is None or not self.cycle.response_started:
            body = error_body(status, message, code)
            head = [STATUS_LINE[status]]
            head += [b"%s: %s\r\n" % pair for pair in self.server_state.default_headers]
            head.append(
                b"content-type: application/json\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n" % len(body)
            )
            self.transport.write(b"".join(head) + body)
        if self.cycle is not None:
            self.cycle.keep_alive = False
        self.transport.close()

    def _make_room(self) -> bool:
        """Close one connection that has sent nothing yet (a pre-connect, or a client that
        holds sockets open) for a new one. Clients that have been served keep theirs."""
        for conn in self.connections:
            if conn is not self and isinstance(conn, HttpProtocol) and conn._silent():
                conn.limits.rejected("silent_closed_for_room")
                conn.transport.close()
                return True
        return False

    def _silent(self) -> bool:
        return self.cycle is None and not self._raw_head_bytes

    def _watch(self) -> None:
        """The connection's one timer: closes a head or body that takes too long."""
        self._watchdog = None
        if self.transport.is_closing():
            return
        now = self.loop.time()
        limits = self.limits
        cycle = self.cycle
        if self._in_head and (cycle is None or cycle.response_complete):
            due = self._head_began + limits.header_timeout
            if now >= due:
                limits.rejected("header_timeout")
                self.transport.close()
                return
        elif (
            cycle is not None
            and cycle.more_body
            and not cycle.response_complete
            and not self.flow.read_paused
        ):
            due = self._body_at + limits.body_timeout
            if now >= due:
                limits.rejected("body_timeout")
                cycle.keep_alive = False
                self.transport.close()
                return
        else:
            due = now + min(limits.header_timeout, limits.body_timeout)
        self._watchdog = self.loop.call_at(due, self._watch)


def on_disconnect(scope: Scope, hook: Callable[[], None] | None) -> None:
    """Have `hook` called if the client's connection closes before the answer is complete
    (None removes it)."""
    if hook is None:
        scope.pop(_DISCONNECT_HOOK, None)
    else:
        scope[_DISCONNECT_HOOK] = hook


def cut(scope: Scope) -> None:
    """End the answer short by closing the connection: the client sees the body end before
    its length (or without the last chunk)."""
    protocol = scope.get(_PROTOCOL)
    if protocol is not None:
        if protocol.cycle is not None:
            protocol.cycle.keep_alive = False
        protocol.transport.close()
