"""The smallest proxy modelberth's stack can make, with no auth, parsing, admission or
metrics. The benchmark runs its variants beside modelberth to show how much of the gap to
direct access is the HTTP server's and how much is modelberth's own work:

- `--server modelberth` (the stack modelberth runs on): uvicorn with modelberth's guarded
  protocol (protocol.py, uvicorn's httptools protocol with limits), one raw ASGI function
  and modelberth's upstream client;
- `--server uvicorn`: the same on uvicorn's own httptools protocol; with `--client aiohttp`,
  one shared aiohttp session instead of modelberth's client (the stack modelberth ran on
  first);
- `--server granian` / `--server granian-rsgi`: granian (Rust HTTP, one worker, one runtime
  thread) with the ASGI function, or its own RSGI interface, and modelberth's client.
  granian is not a dependency: bench/run.py installs the pinned version on first use.

    python bench/ceiling.py --port 8081 --upstream-port 8080 --server modelberth
"""

from __future__ import annotations

import argparse
import functools
import os
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import aiohttp
import uvicorn

from modelberth.protocol import HttpProtocol, Limits
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

    async def lifespan(
        receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
    ) -> None:
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

    async def app(
        scope: Message,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        body = await read_body(receive)
        assert session is not None
        async with session.post(
            upstream + scope["path"], data=body, headers={"content-type": "application/json"}
        ) as resp:
            await send(
                {
                    "type": "http.response.start",
                    "status": resp.status,
                    "headers": [(k, v) for k, v in resp.raw_headers if k.lower() not in _DROPPED],
                }
            )
            async for chunk in resp.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})

    return app


def make_own_client_app(port: int) -> Callable[..., Awaitable[None]]:
    """The proxy on modelberth's upstream client."""
    client = UpstreamClient()
    json_type = [(b"content-type", b"application/json")]

    async def app(
        scope: Message,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await client.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = await read_body(receive)
        resp = await client.request("POST", "127.0.0.1", port, scope["path"], json_type, body)
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": resp.status,
                    "headers": [(k, v) for k, v in resp.headers if k.lower() not in _DROPPED],
                }
            )
            while chunk := await resp.next_piece():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            resp.release()

    return app


class RsgiApp:
    """The proxy on granian's RSGI interface and modelberth's client."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.client: UpstreamClient | None = None

    async def __call__(self, scope: Any, proto: Any) -> None:
        if self.client is None:
            self.client = UpstreamClient()
        body = await proto()
        resp = await self.client.request(
            "POST",
            "127.0.0.1",
            self.port,
            scope.path,
            [(b"content-type", b"application/json")],
            body,
        )
        try:
            headers = [(k.decode(), v.decode()) for k, v in resp.headers if k not in _DROPPED]
            proto.response_bytes(resp.status, headers, await resp.read())
        finally:
            resp.release()


def granian_target() -> Any:
    """What granian's worker imports (`ceiling:granian_target`, a factory)."""
    port = int(os.environ["CEILING_UPSTREAM_PORT"])
    if os.environ.get("CEILING_INTERFACE") == "rsgi":
        return RsgiApp(port)
    return make_own_client_app(port)


async def lifespan_only(
    scope: Message,
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream-port", type=int, required=True)
    parser.add_argument("--client", choices=("modelberth", "aiohttp"), default="modelberth")
    parser.add_argument(
        "--server", default="uvicorn", choices=("uvicorn", "modelberth", "granian", "granian-rsgi")
    )
    args = parser.parse_args()
    if args.server.startswith("granian"):
        from granian.constants import Interfaces, Loops
        from granian.server import Server

        os.environ["CEILING_UPSTREAM_PORT"] = str(args.upstream_port)
        rsgi = args.server == "granian-rsgi"
        os.environ["CEILING_INTERFACE"] = "rsgi" if rsgi else "asgi"
        Server(
            "ceiling:granian_target",
            address="127.0.0.1",
            port=args.port,
            interface=Interfaces.RSGI if rsgi else Interfaces.ASGI,
            factory=True,
            workers=1,
            runtime_threads=1,
            loop=Loops.uvloop,
            log_enabled=False,
            working_dir=Path(__file__).resolve().parent,
        ).serve()
        return
    app = (
        make_own_client_app(args.upstream_port)
        if args.client == "modelberth"
        else make_app(f"http://127.0.0.1:{args.upstream_port}")
    )
    protocol: Any = "httptools"
    if args.server == "modelberth":
        protocol = functools.partial(HttpProtocol, limits=Limits())
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        proxy_headers=False,
        http=protocol,
    )


if __name__ == "__main__":
    main()
