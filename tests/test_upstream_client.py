"""The hot path's upstream client against a scripted HTTP server on loopback: keep-alive
reuse, the answer framings HTTP/1.1 allows, answers cut short, the stale keep-alive race and
which requests are sent again, the idle limit, and the first-byte and stall timeouts."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from modelberth.upstream_client import (
    UpstreamClient,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
)

# One scripted exchange: gets the request's head, writes (or not) an answer, and returns
# whether the connection stays open for another request.
Script = Callable[[bytes, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]


class Server:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[bytes] = []
        self.closed = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                self.requests.append(head + await reader.readexactly(length))
                if not await self.script(head, reader, writer):
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self.closed.set()


@asynccontextmanager
async def serving(script: Script) -> AsyncIterator[tuple[Server, int]]:
    server = Server(script)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        yield server, port
    finally:
        listener.close()
        await listener.wait_closed()


def answer(body: bytes, *headers: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
    head += b"".join(h + b"\r\n" for h in headers)
    return head + b"content-length: %d\r\n\r\n" % len(body) + body


async def ok(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    writer.write(answer(b'{"ok":true}'))
    return True


async def until_hung_up(
    head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> bool:
    """Never answers: waits until the client closes the connection."""
    await reader.read()
    return False


async def post(
    client: UpstreamClient,
    port: int,
    body: bytes = b"{}",
    method: str = "POST",
    first_byte_timeout: float | None = None,
) -> tuple[int, bytes]:
    resp = await client.request(
        method,
        "127.0.0.1",
        port,
        "/v1/x?a=1",
        [(b"content-type", b"application/json")],
        body,
        first_byte_timeout=first_byte_timeout,
    )
    try:
        return resp.status, await resp.read()
    finally:
        resp.release()


async def test_keep_alive_connections_are_reused_and_requests_are_framed() -> None:
    client = UpstreamClient()
    async with serving(ok) as (server, port):
        for _ in range(3):
            assert await post(client, port, b'{"model":"m"}') == (200, b'{"ok":true}')
        assert server.connections == 1
        first = server.requests[0]
        assert first.startswith(b"POST /v1/x?a=1 HTTP/1.1\r\n")
        assert b"host: 127.0.0.1:%d\r\n" % port in first
        assert b"content-length: 13\r\n" in first
        assert first.endswith(b'\r\n\r\n{"model":"m"}')
        await client.close()


async def test_a_chunked_answer_arrives_piece_by_piece() -> None:
    release = asyncio.Event()

    async def chunked(head: bytes, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n6\r\ndata 1\r\n"
        )
        await writer.drain()
        await release.wait()
        writer.write(b"6\r\ndata 2\r\n0\r\n\r\n")
        return True

    client = UpstreamClient()
    async with serving(chunked) as (_, port):
        resp = await client.request("POST", "127.0.0.1", port, "/", [], b"{}")
        assert (b"content-type", b"text/event-stream") in resp.headers  # names in lower case
        assert b"content-length" not in dict(resp.headers)
        assert resp.arrived_whole() is None  # not all here yet, and nothing taken
        assert await resp.next_piece() == b"data 1"  # before the rest was even written
        release.set()
        assert await resp.next_piece() == b"data 2"
        assert await resp.next_piece() == b""
        resp.release()
        await client.close()


async def test_a_small_answer_is_there_whole_with_its_head() -> None:
    async def small(head: bytes, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(
            b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{"a":1}'
        )
        return True

    client = UpstreamClient()
    async with serving(small) as (_, port):
        resp = await client.request("POST", "127.0.0.1", port, "/", [], b"{}")
        assert resp.headers == [(b"content-type", b"application/json"), (b"content-length", b"7")]
        assert resp.arrived_whole() == b'{"a":1}'
        resp.release()
        await client.close()


async def test_an_answer_delimited_by_close_is_read_to_the_end() -> None:
    async def until_close(
        head: bytes, _: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it")
        return False

    client = UpstreamClient()
    async with serving(until_close) as (server, port):
        assert await post(client, port) == (200, b"all of it")
        assert await post(client, port) == (200, b"all of it")
        assert server.connections == 2  # the closed connection was not pooled
        await client.close()


async def test_an_answer_cut_short_is_an_error_and_the_connection_is_dropped() -> None:
    async def cut(head: bytes, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part")
        return False

    client = UpstreamClient()
    async with serving(cut) as (_, port):
        resp = await client.request("POST", "127.0.0.1", port, "/", [], b"")
        with pytest.raises(UpstreamError, match="closed the connection") as caught:
            await resp.read()
        assert (caught.value.answered, caught.value.reused) == (True, False)
        resp.release()
        await client.close()


async def test_a_malformed_answer_is_an_error() -> None:
    async def garbage(head: bytes, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        return True

    client = UpstreamClient()
    async with serving(garbage) as (_, port):
        with pytest.raises(UpstreamError, match="malformed"):
            await post(client, port)
        await client.close()


async def test_a_refused_connection_is_unreachable() -> None:
    listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    listener.close()
    await listener.wait_closed()
    client = UpstreamClient()
    with pytest.raises(UpstreamUnreachable, match=f"127.0.0.1:{port}") as caught:
        await post(client, port)
    assert (caught.value.answered, caught.value.reused) == (False, False)


async def test_a_pooled_connection_closed_unanswered_is_retried_once_on_a_new_one() -> None:
    """The stale keep-alive race: the upstream closes an idle connection as it is reused; an
    idempotent request is sent again."""

    async def once_per_connection(
        head: bytes, _: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        writer.write(answer(b"fresh"))
        await writer.drain()
        return False  # and close, without telling the client it will

    client = UpstreamClient()
    async with serving(once_per_connection) as (server, port):
        assert await post(client, port, b"", method="GET") == (200, b"fresh")
        # The close is in flight; the next request may find the connection still pooled.
        assert await post(client, port, b"", method="GET") == (200, b"fresh")
        assert server.connections == 2
        await client.close()


async def test_a_connection_whose_eof_was_seen_is_never_reused() -> None:
    async def once_per_connection(
        head: bytes, _: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        writer.write(answer(b"fresh"))
        await writer.drain()
        return False  # close, though the answer says keep-alive

    client = UpstreamClient()
    async with serving(once_per_connection) as (server, port):
        assert await post(client, port) == (200, b"fresh")
        await asyncio.wait_for(server.closed.wait(), 5)
        await asyncio.sleep(0.05)  # the client's loop sees the EOF
        assert await post(client, port) == (200, b"fresh")  # a POST: not retried if it failed
        assert server.connections == 2
        assert len(server.requests) == 2
        await client.close()


def second_unanswered() -> Script:
    """Answers the first request of each connection; reads the second whole, then hangs up
    without a byte."""
    answered: set[asyncio.StreamWriter] = set()  # kept alive: no id is reused

    async def script(head: bytes, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        if writer in answered:
            return False
        answered.add(writer)
        writer.write(answer(b"one"))
        return True

    return script


@pytest.mark.parametrize(("method", "body"), [("POST", b"{}"), ("POST", b""), ("PATCH", b"{}")])
async def test_a_request_the_upstream_may_have_read_is_never_sent_again(
    method: str, body: bytes
) -> None:
    """RFC 9112 §9.3.1: the upstream read the request on a reused connection and closed it
    unanswered; a non-idempotent request (a POST even without a body) is not replayed."""
    client = UpstreamClient()
    async with serving(second_unanswered()) as (server, port):
        assert await post(client, port, body, method=method) == (200, b"one")
        with pytest.raises(UpstreamError, match="closed the connection") as caught:
            await post(client, port, body, method=method)
        assert not isinstance(caught.value, UpstreamUnreachable)
        assert (caught.value.answered, caught.value.reused) == (False, True)
        assert len(server.requests) == 2  # exactly what the client sent
        assert server.connections == 1
        assert await post(client, port, body, method=method) == (200, b"one")  # a new one
        await client.close()


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "OPTIONS"])
async def test_a_reused_connection_that_gets_no_answer_is_retried_if_idempotent(
    method: str,
) -> None:
    client = UpstreamClient()
    async with serving(second_unanswered()) as (server, port):
        assert await post(client, port, b"{}", method=method) == (200, b"one")
        assert await post(client, port, b"{}", method=method) == (200, b"one")  # a second
        assert server.connections == 2  # connection, once
        assert len(server.requests) == 3
        await client.close()


async def test_a_fresh_connection_that_gets_no_answer_is_an_error() -> None:
    async def hang_up(head: bytes, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        return False

    client = UpstreamClient()
    async with serving(hang_up) as (server, port):
        with pytest.raises(UpstreamError, match="closed the connection") as caught:
            await post(client, port, method="GET")
        assert (caught.value.answered, caught.value.reused) == (False, False)
        assert server.connections == 1  # not retried: a fresh connection is no stale race
        await client.close()


async def test_releasing_an_unfinished_answer_closes_the_connection() -> None:
    async def endless(head: bytes, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n")
        await writer.drain()
        while True:
            await asyncio.sleep(0.01)
            writer.write(b"1\r\nb\r\n")
            await writer.drain()

    client = UpstreamClient()
    async with serving(endless) as (server, port):
        resp = await client.request("POST", "127.0.0.1", port, "/", [], b"")
        assert await resp.next_piece() == b"a"
        resp.release()
        await asyncio.wait_for(server.closed.wait(), 5)
        await client.close()


async def test_a_large_answer_read_slowly_arrives_whole() -> None:
    body = bytes(range(256)) * 16384  # 4 MiB, beyond the high-water mark

    async def large(head: bytes, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer(body))
        return True

    client = UpstreamClient()
    async with serving(large) as (_, port):
        resp = await client.request("POST", "127.0.0.1", port, "/", [], b"")
        pieces = []
        while piece := await resp.next_piece():
            pieces.append(piece)
            await asyncio.sleep(0.001)
        assert b"".join(pieces) == body
        resp.release()
        assert await post(client, port) == (200, body)  # the paused connection was reused
        await client.close()


async def test_head_answers_and_informational_answers() -> None:
    async def varied(head: bytes, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        if head.startswith(b"HEAD"):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + answer(b"after continue"))
        return True

    client = UpstreamClient()
    async with serving(varied) as (_, port):
        assert await post(client, port, b"", method="HEAD") == (200, b"")
        assert await post(client, port) == (200, b"after continue")
        await client.close()


async def test_a_large_request_body_is_sent_whole() -> None:
    body = b"x" * (3 * 2**20)
    client = UpstreamClient()
    async with serving(ok) as (server, port):
        assert await post(client, port, body) == (200, b'{"ok":true}')
        assert server.requests[0].endswith(body)
        await client.close()


async def test_idle_connections_are_closed_at_the_idle_limit_and_not_reused() -> None:
    assert inspect.signature(UpstreamClient).parameters["idle_timeout"].default == 4.0
    client = UpstreamClient(idle_timeout=0.2)
    async with serving(ok) as (server, port):
        await post(client, port)
        assert await post(client, port) == (200, b'{"ok":true}')
        assert server.connections == 1  # reused within the limit
        began = time.monotonic()
        await asyncio.wait_for(server.closed.wait(), 2)  # closed actively, unasked
        assert time.monotonic() - began >= 0.15
        assert await post(client, port) == (200, b'{"ok":true}')
        assert server.connections == 2
        await client.close()


async def test_an_idle_connection_past_the_limit_is_not_picked_even_before_its_timer() -> None:
    client = UpstreamClient(idle_timeout=0.1)
    async with serving(ok) as (server, port):
        await post(client, port)
        time.sleep(0.15)  # the loop is blocked: the pool's timer cannot have run  # noqa: ASYNC251
        assert await post(client, port) == (200, b'{"ok":true}')
        assert server.connections == 2
        await client.close()


async def test_an_upstream_that_never_answers_times_out() -> None:
    client = UpstreamClient()
    async with serving(until_hung_up) as (server, port):
        began = time.monotonic()
        with pytest.raises(
            UpstreamTimeout,
            match=r"no answer from the upstream within 0\.2s \(first_byte_timeout\)",
        ) as caught:
            await post(client, port, first_byte_timeout=0.2)
        assert 0.19 <= time.monotonic() - began < 0.4
        assert (caught.value.answered, caught.value.reused) == (False, False)
        await asyncio.wait_for(server.closed.wait(), 1)  # the connection was aborted
        assert len(server.requests) == 1
        await client.close()


@pytest.mark.parametrize("earlier", [5.0, 0.05])
async def test_the_first_byte_timeout_of_a_reused_connection_is_its_requests_own(
    earlier: float,
) -> None:
    """The connection's timer, left armed by the first request (later or sooner than the
    second's limit), times the second request by the second's limit; nothing is resent."""
    answered: set[asyncio.StreamWriter] = set()

    async def first_only(
        head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        if writer in answered:
            return await until_hung_up(head, reader, writer)
        answered.add(writer)
        writer.write(answer(b"one"))
        return True

    client = UpstreamClient()
    async with serving(first_only) as (server, port):
        assert await post(client, port, method="GET", first_byte_timeout=earlier) == (200, b"one")
        began = time.monotonic()
        with pytest.raises(UpstreamTimeout, match=r"within 0\.3s") as caught:
            await post(client, port, method="GET", first_byte_timeout=0.3)
        assert 0.29 <= time.monotonic() - began < 0.5
        assert (caught.value.answered, caught.value.reused) == (False, True)
        assert len(server.requests) == 2  # a timeout is not retried, even for a GET
        await client.close()


def head_then_stall(framing: bytes, chunk: bytes = b"") -> Script:
    """Sends the head (with `framing`'s headers) and the first piece of the body, then
    nothing."""

    async def script(
        head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\n%s\r\n%sdata 1" % (framing, chunk))
        return await until_hung_up(head, reader, writer)

    return script


async def test_a_stream_that_stalls_times_out_and_its_connection_is_dropped() -> None:
    stalls = head_then_stall(b"transfer-encoding: chunked\r\n", b"6\r\n")
    calls: list[bytes] = []

    async def stall_then_ok(
        head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        calls.append(head)
        return await (stalls if len(calls) == 1 else ok)(head, reader, writer)

    client = UpstreamClient()
    async with serving(stall_then_ok) as (server, port):
        resp = await client.request("POST", "127.0.0.1", port, "/", [], b"{}")
        assert await resp.next_piece(stall_timeout=0.2) == b"data 1"
        began = time.monotonic()
        with pytest.raises(
            UpstreamTimeout,
            match=r"the upstream sent nothing for 0\.2s "
            r"\(stream_stall_timeout\)",
        ) as caught:
            await resp.next_piece(stall_timeout=0.2)
        assert 0.19 <= time.monotonic() - began < 0.4
        assert (caught.value.answered, caught.value.reused) == (True, False)
        resp.release()
        await asyncio.wait_for(server.closed.wait(), 1)
        assert await post(client, port) == (200, b'{"ok":true}')
        assert server.connections == 2  # the timed-out connection was not pooled
        await client.close()


@pytest.mark.parametrize(
    "framing",
    [
        b"content-length: 100\r\n",  # sized
        b"",  # delimited by the close
    ],
)
async def test_read_times_out_on_a_stall(framing: bytes) -> None:
    client = UpstreamClient()
    async with serving(head_then_stall(framing)) as (server, port):
        resp = await client.request("POST", "127.0.0.1", port, "/", [], b"{}")
        with pytest.raises(UpstreamTimeout, match=r"0\.2s"):
            await resp.read(stall_timeout=0.2)  # a close-delimited answer is not "complete"
        resp.release()
        await asyncio.wait_for(server.closed.wait(), 1)
        await client.close()


async def test_a_stream_trickling_faster_than_the_stall_limit_is_not_cut() -> None:
    async def trickle(head: bytes, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for i in range(8):  # 0.6 s in all, more than twice the limit
            await writer.drain()
            await asyncio.sleep(0.075)
            writer.write(b"1\r\n%d\r\n" % i)
        # Then bytes that are not body yet (a chunk's size), its data 0.15 s later: 0.3 s
        # between two pieces of body, but never 0.25 s without a byte.
        for piece in (b"2\r\n", b"ab\r\n0\r\n\r\n"):
            await writer.drain()
            await asyncio.sleep(0.15)
            writer.write(piece)
        return True

    client = UpstreamClient()
    async with serving(trickle) as (_, port):
        resp = await client.request("POST", "127.0.0.1", port, "/", [], b"{}")
        assert await resp.read(stall_timeout=0.25) == b"01234567ab"
        resp.release()
        await client.close()
