"""The smallest proxy modelberth's stack can make: uvicorn, one raw ASGI function and one
upstream client: modelberth's own (`--client modelberth`, the stack it runs on) or one shared
aiohttp session (`--client aiohttp`, the stack it ran on before). No auth, no parsing, no
admission, no metrics. The benchmark runs both beside modelberth to show how much of the gap
to direct access is the stack's and how much is modelberth's own work.

    python bench/ceiling.py --port 8081 --upstream-port 8080 --client modelberth
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp
import uvicorn

from modelberth.http1 import Http1Protocol
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream-port", type=int, required=True)
    parser.add_argument("--client", choices=("modelberth", "aiohttp"), default="modelberth")
    parser.add_argument("--protocol", choices=("uvicorn", "modelberth"), default="uvicorn",
                        help="uvicorn's own HTTP protocol or modelberth's (http1.py)")
    args = parser.parse_args()
    app = (make_own_client_app(args.upstream_port) if args.client == "modelberth"
           else make_app(f"http://127.0.0.1:{args.upstream_port}"))
    uvicorn.run(app, host="127.0.0.1", port=args.port,
                log_level="warning", access_log=False, proxy_headers=False,
                http=Http1Protocol if args.protocol == "modelberth" else "httptools")


if __name__ == "__main__":
    main()
