"""The client: a pool of idle connections per address, requests sent on them (again on a
new one only when that is safe), and the answers read from them."""

from __future__ import annotations

import asyncio
import ssl

from modelberth.upstream_client.connection import Connection, Headers, Pool
from modelberth.upstream_client.errors import UpstreamError, UpstreamTimeout, UpstreamUnreachable
from modelberth.upstream_client.limits import (
    CONNECT_TIMEOUT,
    EARLY,
    IDEMPOTENT,
    IDLE_TIMEOUT,
    MAX_IDLE,
)

Address = tuple[str, int, bool]  # host, port, TLS


class UpstreamResponse:
    """An answer whose head has arrived (header names in lower case); its body is read with
    `read()` or piece by piece with `next_piece()`. `release()` must follow: it pools or
    closes the connection."""

    __slots__ = ("_address", "_client", "_conn", "headers", "status")

    def __init__(self, client: UpstreamClient, conn: Connection, address: Address) -> None:
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
    def __init__(self, idle_timeout: float = IDLE_TIMEOUT) -> None:
        self._idle_timeout = idle_timeout
        self._pools: dict[Address, Pool] = {}
        self._tls: ssl.SSLContext | None = None  # made when the first TLS connection is

    async def request(
        self,
        method: str,
        host: str,
        port: int,
        target: str,
        headers: Headers,
        body: bytes,
        first_byte_timeout: float | None = None,
        *,
        tls: bool = False,
        authority: str | None = None,
    ) -> UpstreamResponse:
        """Send a request and wait for the answer's head. Raises UpstreamUnreachable when
        no connection could be made, UpstreamTimeout when the head has not arrived
        `first_byte_timeout` seconds after the request went out (0 or None: no limit),
        UpstreamError when the upstream failed before its head.

        `host` is an address or a name (resolved by the event loop); `tls` connects with
        TLS, the certificate checked against the system's CAs (or $SSL_CERT_FILE) and the
        host's name; `authority` is the Host header (default `host:port`). Plain and TLS
        connections to the same host and port are pooled apart.

        Only an idempotent request whose pooled connection failed before a single byte of
        the answer (the stale keep-alive race: the upstream closed it as we reused it) is
        sent once more, on a new connection; see the module's docstring."""
        address = (host, port, tls)
        head = _request_head(method, host, port, target, headers, len(body), authority)
        verb = method.encode("ascii")
        conn = self._pooled(address)
        if conn is not None:
            try:
                await _exchange(conn, verb, head, body, first_byte_timeout)
                return UpstreamResponse(self, conn, address)
            except UpstreamError as exc:
                if exc.answered or method not in IDEMPOTENT or isinstance(exc, UpstreamTimeout):
                    raise
        conn = await self._connect(address)
        await _exchange(conn, verb, head, body, first_byte_timeout)
        return UpstreamResponse(self, conn, address)

    def pool(self, conn: Connection, address: Address) -> None:
        pool = conn.pool
        if self._pools.get(address) is not pool:  # the client was closed meanwhile
            conn.close()
            return
        idle = pool.idle
        if len(idle) >= MAX_IDLE:
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

    def _pooled(self, address: Address) -> Connection | None:
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

    def _expire(self, pool: Pool) -> None:
        """Close the address's connections idle for the timeout, and re-arm for the next."""
        pool.timer = None
        idle = pool.idle
        if not idle:
            return
        loop = idle[0].loop
        oldest_kept = loop.time() - self._idle_timeout + EARLY
        while idle and idle[0].idle_since <= oldest_kept:
            idle.popleft().close()
        if idle:
            pool.timer = loop.call_at(idle[0].idle_since + self._idle_timeout, self._expire, pool)

    async def _connect(self, address: Address) -> Connection:
        loop = asyncio.get_running_loop()
        pool = self._pools.get(address)
        if pool is None:
            pool = self._pools[address] = Pool()
        host, port, tls = address
        context = self._context() if tls else None
        try:
            # The TLS handshake, if any, is part of connecting: within the same timeout.
            async with asyncio.timeout(CONNECT_TIMEOUT):
                _, conn = await loop.create_connection(
                    lambda: Connection(pool),
                    host,
                    port,
                    ssl=context,
                    server_hostname=host if tls else None,
                )
        except TimeoutError:
            raise UpstreamUnreachable(f"connecting to {host}:{port} timed out") from None
        except OSError as exc:  # ssl.SSLError too: a certificate that does not verify
            raise UpstreamUnreachable(
                f"cannot connect to {host}:{port}: {exc.strerror or exc}"
            ) from None
        return conn

    def _context(self) -> ssl.SSLContext:
        """One TLS context for every connection: making one reads the CA store (~ms)."""
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls


async def _exchange(
    conn: Connection, verb: bytes, head: bytes, body: bytes, first_byte_timeout: float | None
) -> None:
    """Send the request and wait for the answer's head; on any failure the connection is
    dropped."""
    conn.send(verb, head, body, first_byte_timeout)
    try:
        await conn.head_received()
    except BaseException:
        conn.abort()
        raise


def _request_head(
    method: str,
    host: str,
    port: int,
    target: str,
    headers: Headers,
    length: int,
    authority: str | None,
) -> bytes:
    r"""The request's head: Host and Content-Length are always set here (forwarding.py
    drops the client's), Host as the authority given or else host:port; then the headers.

    >>> _request_head("POST", "127.0.0.1", 8080, "/v1/chat/completions",
    ...               [(b"accept", b"*/*")], 2, None).splitlines()  # doctest: +NORMALIZE_WHITESPACE
    [b'POST /v1/chat/completions HTTP/1.1', b'host: 127.0.0.1:8080', b'content-length: 2',
     b'accept: */*', b'']
    >>> _request_head("GET", "203.0.113.5", 443, "/v1/models", [], 0, "api.example.com")
    b'GET /v1/models HTTP/1.1\r\nhost: api.example.com\r\ncontent-length: 0\r\n\r\n'
    """
    if authority is None:
        start = f"{method} {target} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-length: {length}\r\n"
    else:
        start = f"{method} {target} HTTP/1.1\r\nhost: {authority}\r\ncontent-length: {length}\r\n"
    lines = [start.encode("latin-1")]
    for name, value in headers:
        lines.append(b"%s: %s\r\n" % (name, value))
    lines.append(b"\r\n")
    return b"".join(lines)
