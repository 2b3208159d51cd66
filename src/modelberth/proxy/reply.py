"""The answer to one client, over ASGI `send`, with the connection hooks of protocol.py:
the disconnect watch and cutting an answer short."""

from __future__ import annotations

import asyncio
from typing import Any

from modelberth import protocol
from modelberth.proxy.asgi import Headers, Scope, Send


class Reply:
    __slots__ = ("disconnected", "early", "scope", "send", "task")

    def __init__(self, scope: Scope, send: Send) -> None:
        self.scope, self.send = scope, send
        self.early = False  # True once SSE headers went out while the model was loading
        self.disconnected = False
        self.task: asyncio.Task[Any] | None = None

    def watch_disconnect(self) -> None:
        self.task = asyncio.current_task()
        protocol.on_disconnect(self.scope, self._gone)

    def unwatch_disconnect(self) -> None:
        protocol.on_disconnect(self.scope, None)

    def _gone(self) -> None:
        self.disconnected = True
        if self.task is not None:
            self.task.cancel(msg="client disconnected")

    async def start(self, status: int, headers: Headers) -> None:
        await self.send({"type": "http.response.start", "status": status, "headers": headers})

    async def chunk(self, data: bytes) -> None:
        await self.send({"type": "http.response.body", "body": data, "more_body": True})

    async def finish(self, data: bytes = b"") -> None:
        await self.send({"type": "http.response.body", "body": data, "more_body": False})

    async def respond(self, status: int, headers: Headers, body: bytes) -> None:
        headers = [*headers, (b"content-length", b"%d" % len(body))]
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        await self.send({"type": "http.response.body", "body": body, "more_body": False})

    def cut(self) -> None:
        protocol.cut(self.scope)
