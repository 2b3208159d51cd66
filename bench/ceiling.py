"""The smallest proxy modelberth's stack can make, with no auth, parsing, admission or
metrics. The benchmark runs its variants beside modelberth to show how much of the gap to
direct access is the stack's and how much is modelberth's own work:

- `--protocol modelberth` (the stack modelberth runs on): uvicorn with modelberth's
  connection protocol (http1.py), one handler on the connection's exchange (no ASGI) and
  modelberth's upstream client;
- `--protocol uvicorn`: uvicorn's own protocol, one raw ASGI function, and modelberth's
  client (`--client modelberth`) or one shared aiohttp session (`--client aiohttp`, the stack
  modelberth ran on before).

    python bench/ceiling.py --port 8081 --upstream-port 8080 --protocol modelberth
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp
import uvicorn

from modelberth.http1 import Exchange, Handler, Http1Protocol
from modelberth.upstream_client import UpstreamClient

Message = MutableMapping[str, Any]
_DROPPED = (b"connection", b"transfer-encoding")


async def read_body(receive: Callable[[], Awaitable[Message]]) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def make_app(upstream: str) -> Callable[..., Awaitable[None]]:
    """The proxy on an aiohttp session."""
    session: aiohttp.ClientSession | None = None

    async def lifespan(receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        nonlocal session
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if session is not None:
                    await session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def app(scope: Message, receive: Callable[[], Awaitable[Message]],
                  send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        body = await read_body(receive)
        assert session is not None
        async with session.post(upstream + scope["path"], data=body,
                                headers={"content-type": "application/json"}) as resp:
            await send({"type": "http.response.start", "status": resp.status,
                        "headers": [(k, v) for k, v in resp.raw_headers
                                    if k.lower() not in _DROPPED]})
            async for chunk in resp.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})

    return app


def make_own_client_app(port: int) -> Callable[..., Awaitable[None]]:
    """The proxy on modelberth's upstream client."""
    client = UpstreamClient()
    json_type = [(b"content-type", b"application/json")]

    async def app(scope: Message, receive: Callable[[], Awaitable[Message]],
                  send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await client.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = await read_body(receive)
        resp = await client.request("POST", "127.0.0.1", port, scope["path"], json_type, body)
        try:
            await send({"type": "http.response.start", "status": resp.status,
                        "headers": [(k, v) for k, v in resp.headers
                                    if k.lower() not in _DROPPED]})
            while chunk := await resp.next_piece():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            resp.release()

    return app


def make_direct_handler(port: int) -> Handler:
    """The proxy on the connection's exchange and modelberth's upstream client."""
    client = UpstreamClient()
    json_type = [(b"content-type", b"application/json")]

    async def handle(exchange: Exchange) -> None:
        body = exchange.whole_body()
        if body is None:
            body = await read_body(exchange.receive)
        resp = await client.request("POST", "127.0.0.1", port, exchange.scope["path"],
                                    json_type, body)
        try:
            headers = [(k, v) for k, v in resp.headers if k not in _DROPPED]
            exchange.respond(resp.status, headers, await resp.read())
        finally:
            resp.release()

    return handle


async def lifespan_only(scope: Message, receive: Callable[[], Awaitable[Message]],
                        send: Callable[[Message], Awaitable[None]]) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream-port", type=int, required=True)
    parser.add_argument("--client", choices=("modelberth", "aiohttp"), default="modelberth")
    parser.add_argument("--protocol", choices=("uvicorn", "modelberth"), default="uvicorn",
                        help="uvicorn's own HTTP protocol or modelberth's (http1.py)")
    args = parser.parse_args()
    if args.protocol == "modelberth":
        handler = make_direct_handler(args.upstream_port)
        protocol = functools.partial(Http1Protocol, router=lambda method, path: handler)
        uvicorn.run(lifespan_only, host="127.0.0.1", port=args.port, log_level="warning",
                    access_log=False, proxy_headers=False, http=protocol)  # type: ignore[arg-type]
        return
    app = (make_own_client_app(args.upstream_port) if args.client == "modelberth"
           else make_app(f"http://127.0.0.1:{args.upstream_port}"))
    uvicorn.run(app, host="127.0.0.1", port=args.port,
                log_level="warning", access_log=False, proxy_headers=False)


if __name__ == "__main__":
    main()
