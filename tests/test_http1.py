"""The HTTP/1.1 connection protocol (http1.py) on real sockets, under a real uvicorn server:
framing, keep-alive, pipelining, request bodies, errors, disconnects, flow control."""

from __future__ import annotations

import asyncio
import functools
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import uvicorn

from modelberth import http1
from modelberth.http1 import Exchange, Handler, Http1Protocol, Message

Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class Direct:
    """Direct handlers (the proxy's way in), recording what they saw."""

    def __init__(self) -> None:
        self.disconnects = 0
        self.sent_chunks = 0
        self.release = asyncio.Event()
        self.state: uvicorn.server.ServerState | None = None  # the server's, once it runs

    def route(self, method: str, path: str) -> Handler | None:
        return {"/direct": self.whole, "/direct/stream": self.stream,
                "/direct/big": self.big, "/direct/hang": self.hang}.get(path)

    async def whole(self, exchange: Exchange) -> None:
        body = exchange.whole_body()
        exchange.respond(200, [(b"content-type", b"text/plain")], b"got " + (body or b"-"))

    async def stream(self, exchange: Exchange) -> None:
        exchange.start(200, [(b"content-type", b"text/event-stream")])
        for n in range(3):
            await exchange.send_chunk(b"data: %d\n\n" % n)
            await asyncio.sleep(0.02)
        exchange.finish()

    async def big(self, exchange: Exchange) -> None:
        exchange.start(200, [])
        for _ in range(400):
            await exchange.send_chunk(b"x" * 65536)
            self.sent_chunks += 1
        exchange.finish()

    async def hang(self, exchange: Exchange) -> None:
        exchange.cancel_on_disconnect = True
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.disconnects += 1
            self.release.set()
            raise


async def asgi_app(scope: Message, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    path = scope["path"]
    if path == "/raise":
        raise RuntimeError("boom")
    if path == "/nothing":
        return
    if path == "/slow":
        await asyncio.sleep(0.2)
    if path == "/wait-disconnect":
        while (message := await receive())["type"] != "http.disconnect":
            pass
        WAITED.set()
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    answer = b"%s %s %s" % (scope["method"].encode(), path.encode(), body)
    headers = [(b"content-type", b"text/plain")]
    if path != "/unsized":
        headers.append((b"content-length", b"%d" % len(answer)))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer})


WAITED = asyncio.Event()


@pytest.fixture
async def server() -> AsyncIterator[tuple[int, Direct]]:
    direct = Direct()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(asgi_app, host="127.0.0.1", port=port, log_config=None,
                            lifespan="on", timeout_keep_alive=1,
                            timeout_graceful_shutdown=2,
                            http=functools.partial(Http1Protocol,  # type: ignore[arg-type]
                                                   router=direct.route))
    srv = uvicorn.Server(config)
    direct.state = srv.server_state
    task = asyncio.create_task(srv.serve())
    while not srv.started:
        await asyncio.sleep(0.01)
    try:
        yield port, direct
    finally:
        srv.should_exit = True
        await asyncio.wait_for(task, 10)


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def read_response(reader: asyncio.StreamReader) -> tuple[bytes, dict[bytes, bytes], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status, *lines = head[:-4].split(b"\r\n")
    headers = {k.lower(): v for k, _, v in (line.partition(b": ") for line in lines)}
    if b"content-length" in headers:
        body = await reader.readexactly(int(headers[b"content-length"]))
    elif headers.get(b"transfer-encoding") == b"chunked":
        body = b""
        while size := int((await reader.readuntil(b"\r\n"))[:-2], 16):
            body += (await reader.readexactly(size + 2))[:-2]
        await reader.readexactly(2)
    else:
        body = await asyncio.wait_for(reader.read(), 5)
    return status, headers, body


async def test_keep_alive_serves_requests_in_turn_on_one_connection(
        server: tuple[int, Direct]) -> None:
    reader, writer = await connect(server[0])
    for n in range(3):
        writer.write(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\n\r\n%d" % n)
        status, headers, body = await read_response(reader)
        assert status == b"HTTP/1.1 200 OK"
        assert body == b"POST /echo %d" % n
        assert b"date" in headers and b"connection" not in headers
    writer.close()


async def test_pipelined_requests_are_answered_in_order(server: tuple[int, Direct]) -> None:
    reader, writer = await connect(server[0])
    writer.write(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n"
                 b"POST /direct HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nhi"
                 b"GET /fast HTTP/1.1\r\nhost: x\r\n\r\n")
    bodies = [(await read_response(reader))[2] for _ in range(3)]
    assert bodies == [b"GET /slow ", b"got hi", b"GET /fast "]
    writer.close()


async def test_chunked_request_body_reaches_the_app_whole(server: tuple[int, Direct]) -> None:
    reader, writer = await connect(server[0])
    writer.write(b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
                 b"3\r\nabc\r\n")
    await asyncio.sleep(0.05)
    writer.write(b"2\r\nde\r\n0\r\n\r\n")
    assert (await read_response(reader))[2] == b"POST /echo abcde"
    writer.close()


async def test_100_continue_is_sent_when_the_app_reads_the_body(
        server: tuple[int, Direct]) -> None:
    reader, writer = await connect(server[0])
    writer.write(b"POST /echo HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\n"
                 b"content-length: 4\r\n\r\n")
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"body")
    assert (await read_response(reader))[2] == b"POST /echo body"
    writer.close()


async def test_unsized_answers_are_chunked_or_close_delimited_for_http_1_0(
        server: tuple[int, Direct]) -> None:
    reader, writer = await connect(server[0])
    writer.write(b"GET /unsized HTTP/1.1\r\nhost: x\r\n\r\n")
    _, headers, body = await read_response(reader)
    assert headers[b"transfer-encoding"] == b"chunked" and body == b"GET /unsized "
    writer.close()
    reader, writer = await connect(server[0])
    writer.write(b"GET /unsized HTTP/1.0\r\n\r\n")
    _status, headers, body = await read_response(reader)
    assert b"transfer-encoding" not in headers and headers[b"connection"] == b"close"
    assert body == b"GET /unsized "  # read to the end of the connection
    writer.close()


async def test_head_answers_carry_no_body(server: tuple[int, Direct]) -> None:
    reader, writer = await connect(server[0])
    writer.write(b"HEAD /echo HTTP/1.1\r\nhost: x\r\n\r\nGET /after HTTP/1.1\r\nhost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert b"content-length: 11" in head  # "HEAD /echo "
    assert (await read_response(reader))[2] == b"GET /after "  # no body bytes in between
    writer.close()


async def test_malformed_request_gets_400_and_the_server_goes_on(
        server: tuple[int, Direct]) -> None:
    reader, writer = await connect(server[0])
    writer.write(b"NOT HTTP AT ALL\r\n\r\n")
    status, headers, _body = await read_response(reader)
    assert status.startswith(b"HTTP/1.1 400") and headers[b"connection"] == b"close"
    assert await asyncio.wait_for(reader.read(), 5) == b""
    reader, writer = await connect(server[0])
    writer.write(b"GET /ok HTTP/1.1\r\nhost: x\r\n\r\n")
    assert (await read_response(reader))[2] == b"GET /ok "
    writer.close()


@pytest.mark.parametrize("path", ["/raise", "/nothing"])
async def test_an_app_that_fails_or_answers_nothing_gives_500(
        server: tuple[int, Direct], path: str) -> None:
    reader, writer = await connect(server[0])
    writer.write(b"GET %s HTTP/1.1\r\nhost: x\r\n\r\n" % path.encode())
    status, headers, body = await read_response(reader)
    assert status == b"HTTP/1.1 500 Internal Server Error"
    assert body == b"Internal Server Error" and headers[b"connection"] == b"close"
    writer.close()


async def test_direct_handler_streams_chunks_as_sent(server: tuple[int, Direct]) -> None:
    reader, writer = await connect(server[0])
    writer.write(b"POST /direct/stream HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert b"transfer-encoding: chunked" in head
    first = await asyncio.wait_for(reader.read(100), 5)
    assert first == b"9\r\ndata: 0\n\n\r\n"  # arrives alone, before the next is sent
    rest = b""
    while not rest.endswith(b"0\r\n\r\n"):
        rest += await asyncio.wait_for(reader.read(100), 5)
    assert b"data: 1" in rest and b"data: 2" in rest
    writer.close()


async def test_client_going_away_is_told_to_direct_and_asgi_handlers(
        server: tuple[int, Direct]) -> None:
    port, direct = server
    _reader, writer = await connect(port)
    writer.write(b"POST /direct/hang HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
    await asyncio.sleep(0.1)
    writer.close()
    await asyncio.wait_for(direct.release.wait(), 5)
    assert direct.disconnects == 1
    WAITED.clear()
    _reader, writer = await connect(port)
    writer.write(b"GET /wait-disconnect HTTP/1.1\r\nhost: x\r\n\r\n")
    await asyncio.sleep(0.1)
    assert not WAITED.is_set()
    writer.close()
    await asyncio.wait_for(WAITED.wait(), 5)


async def test_a_client_that_does_not_read_holds_the_sender_back(
        server: tuple[int, Direct]) -> None:
    port, direct = server
    reader, writer = await connect(port)
    writer.write(b"POST /direct/big HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
    await asyncio.sleep(0.5)
    assert 0 < direct.sent_chunks < 400  # 26 MB were not queued in memory
    _status, _headers, body = await read_response(reader)
    assert len(body) == 400 * 65536 and direct.sent_chunks == 400
    writer.close()


async def test_idle_keep_alive_connection_is_closed(server: tuple[int, Direct]) -> None:
    reader, writer = await connect(server[0])
    writer.write(b"GET /once HTTP/1.1\r\nhost: x\r\n\r\n")
    await read_response(reader)
    assert await asyncio.wait_for(reader.read(), 5) == b""  # timeout_keep_alive is 1 s
    writer.close()


async def test_connection_close_request_is_honoured(server: tuple[int, Direct]) -> None:
    reader, writer = await connect(server[0])
    writer.write(b"GET /bye HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    _status, headers, body = await read_response(reader)
    assert headers[b"connection"] == b"close" and body == b"GET /bye "
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


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

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1)

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    paused = False


async def test_head_and_body_of_a_turn_leave_in_one_write() -> None:
    config = uvicorn.Config(asgi_app, log_config=None)
    state = uvicorn.server.ServerState()
    protocol = Http1Protocol(config, state, {}, asyncio.get_running_loop())
    transport = _Recording()
    protocol.connection_made(transport)
    protocol.data_received(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nab")
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(transport.writes) == 1
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.writes[0].endswith(b"\r\n\r\nPOST /echo ab")
    protocol.connection_lost(None)


async def test_upgrade_requests_are_answered_as_plain_http(server: tuple[int, Direct]) -> None:
    reader, writer = await connect(server[0])
    writer.write(b"GET /chat HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\n"
                 b"upgrade: websocket\r\n\r\n")
    _, headers, body = await read_response(reader)
    assert body == b"GET /chat " and headers[b"connection"] == b"close"
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_a_request_body_the_app_does_not_read_stops_the_reading() -> None:
    received: list[bytes] = []
    reading = asyncio.Event()

    async def slow_reader(scope: Message, receive: Receive, send: Send) -> None:
        await reading.wait()
        while (message := await receive())["more_body"]:
            received.append(message["body"])
        received.append(message["body"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    protocol = Http1Protocol(uvicorn.Config(slow_reader, log_config=None),
                             uvicorn.server.ServerState(), {}, asyncio.get_running_loop())
    transport = _Recording()
    protocol.connection_made(transport)
    protocol.data_received(b"POST /up HTTP/1.1\r\nhost: x\r\ncontent-length: 200000\r\n\r\n")
    protocol.data_received(b"x" * 100000)  # more than the 64 KB the connection buffers
    assert transport.paused
    reading.set()
    for _ in range(5):
        await asyncio.sleep(0)
    assert not transport.paused  # the app took what was buffered: reading goes on
    protocol.data_received(b"y" * 100000)
    for _ in range(5):
        await asyncio.sleep(0)
    assert b"".join(received) == b"x" * 100000 + b"y" * 100000
    assert transport.writes[0].startswith(b"HTTP/1.1 204 No Content\r\n")
    protocol.connection_lost(None)


async def test_a_small_unread_body_is_discarded_and_the_connection_kept(
        server: tuple[int, Direct]) -> None:
    reader, writer = await connect(server[0])
    writer.write(b"POST /direct HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n" + b"a" * 10)
    _, headers, body = await read_response(reader)  # answered before the body arrived
    assert body == b"got -" and b"connection" not in headers
    writer.write(b"b" * 990 + b"GET /next HTTP/1.1\r\nhost: x\r\n\r\n")
    _, _, body = await read_response(reader)
    assert body == b"GET /next "
    writer.close()


@pytest.mark.parametrize("head", [
    b"content-length: 1000000\r\n",  # too large to read for nothing
    b"transfer-encoding: chunked\r\n",  # of unknown length
    b"content-length: 10\r\nexpect: 100-continue\r\n",  # held back for a 100 Continue
], ids=["large", "chunked", "expect-continue"])
async def test_an_answer_before_a_large_body_closes_after_discarding(
        server: tuple[int, Direct], head: bytes) -> None:
    reader, writer = await connect(server[0])
    writer.write(b"POST /direct HTTP/1.1\r\nhost: x\r\n" + head + b"\r\n")
    _, headers, body = await read_response(reader)
    assert body == b"got -" and headers[b"connection"] == b"close"
    for _ in range(20):  # the client goes on sending: no reset destroys what it was told
        writer.write(b"x" * 65536)
        await writer.drain()
    assert await asyncio.wait_for(reader.read(), 5) == b""  # the server shut its side
    assert server[1].state is not None and server[1].state.connections
    writer.write_eof()  # the client is done sending: the server closes the connection
    await wait_until(lambda: not server[1].state.connections)  # type: ignore[union-attr]
    writer.close()


async def test_a_client_that_goes_on_sending_is_closed_after_the_linger_time(
        server: tuple[int, Direct], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http1, "_LINGER", 0.3)
    reader, writer = await connect(server[0])
    writer.write(b"POST /direct HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000\r\n\r\n")
    _, headers, _ = await read_response(reader)
    assert headers[b"connection"] == b"close"
    await wait_until(lambda: not server[1].state.connections)  # type: ignore[union-attr]
    writer.close()


async def wait_until(condition: Callable[[], object], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)
