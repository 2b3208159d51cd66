"""The hot path's upstream client against a scripted HTTP server on loopback: keep-alive
reuse, the answer framings HTTP/1.1 allows, answers cut short, and the stale keep-alive race."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from modelberth.upstream_client import UpstreamClient, UpstreamError, UpstreamUnreachable

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


async def post(client: UpstreamClient, port: int, body: bytes = b"{}",
               method: str = "POST") -> tuple[int, bytes]:
    resp = await client.request(method, "127.0.0.1", port, "/v1/x?a=1",
                                [(b"content-type", b"application/json")], body)
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
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                     b"transfer-encoding: chunked\r\n\r\n6\r\ndata 1\r\n")
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
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 7\r\n\r\n{\"a\":1}")
        return True

    client = UpstreamClient()
    async with serving(small) as (_, port):
        resp = await client.request("POST", "127.0.0.1", port, "/", [], b"{}")
        assert resp.headers == [(b"content-type", b"application/json"),
                                (b"content-length", b"7")]
        assert resp.arrived_whole() == b'{"a":1}'
        resp.release()
        await client.close()


async def test_an_answer_delimited_by_close_is_read_to_the_end() -> None:
    async def until_close(head: bytes, _: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> bool:
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
        with pytest.raises(UpstreamError, match="closed the connection"):
            await resp.read()
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
    with pytest.raises(UpstreamUnreachable, match=f"127.0.0.1:{port}"):
        await post(client, port)


async def test_a_pooled_connection_closed_unanswered_is_retried_once_on_a_new_one() -> None:
    """The stale keep-alive race: the upstream closes an idle connection as it is reused."""
    async def once_per_connection(head: bytes, _: asyncio.StreamReader,
                                  writer: asyncio.StreamWriter) -> bool:
        writer.write(answer(b"fresh"))
        await writer.drain()
        return False  # and close, without telling the client it will

    client = UpstreamClient()
    async with serving(once_per_connection) as (server, port):
        assert await post(client, port) == (200, b"fresh")
        # The close is in flight; the next request may find the connection still pooled.
        assert await post(client, port) == (200, b"fresh")
        assert server.connections == 2
        await client.close()


async def test_a_reused_connection_that_gets_no_answer_is_retried() -> None:
    answered: set[int] = set()

    async def second_unanswered(head: bytes, _: asyncio.StreamReader,
                                writer: asyncio.StreamWriter) -> bool:
        key = id(writer)
        if key in answered:
            return False  # read the request, then hang up without a byte
        answered.add(key)
        writer.write(answer(b"one"))
        return True

    client = UpstreamClient()
    async with serving(second_unanswered) as (server, port):
        assert await post(client, port) == (200, b"one")
        assert await post(client, port) == (200, b"one")  # on a second connection
        assert server.connections == 2
        assert len(server.requests) == 3
        await client.close()


async def test_a_fresh_connection_that_gets_no_answer_is_an_error() -> None:
    async def hang_up(head: bytes, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        return False

    client = UpstreamClient()
    async with serving(hang_up) as (server, port):
        with pytest.raises(UpstreamError, match="closed the connection"):
            await post(client, port)
        assert server.connections == 1  # not retried: it may have been processed
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
