"""The smallest proxy modelberth's stack can make: uvicorn, one raw ASGI function and one shared
aiohttp session. No auth, no parsing, no admission, no metrics. The benchmark runs it beside
modelberth to show how much of the gap to direct access is the stack's and how much is ours.

    python bench/ceiling.py --port 8081 --upstream http://127.0.0.1:8080
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp
import uvicorn

Message = MutableMapping[str, Any]
_DROPPED = (b"connection", b"transfer-encoding")


def make_app(upstream: str) -> Callable[..., Awaitable[None]]:
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
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    uvicorn.run(make_app(args.upstream), host="127.0.0.1", port=args.port,
                log_level="warning", access_log=False, proxy_headers=False)


if __name__ == "__main__":
    main()
