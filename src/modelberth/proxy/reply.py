"""The answer to one client, over ASGI `send`, with the connection hooks of protocol.py:
the disconnect watch and cutting an answer short."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from modelberth import protocol
from modelberth.errors import APIError
from modelberth.proxy.asgi import Headers, Scope, Send
from modelberth.proxy.errors import error_headers
from modelberth.proxy.translation import OPENAI, Dialect

if TYPE_CHECKING:
    from modelberth.telemetry.observe import RequestObservation


class Reply:
    __slots__ = ("dialect", "disconnected", "early", "fallback", "scope", "send", "task")

    def __init__(self, scope: Scope, send: Send) -> None:
        self.scope, self.send = scope, send
        self.early = False  # True once SSE headers went out while the model was loading
        self.disconnected = False
        self.task: asyncio.Task[Any] | None = None
        self.dialect: Dialect = OPENAI  # the shape of the errors this answer may carry
        # A next model would take over a failure before the answer began (fallback.py):
        # failure points raise FallBack instead of answering.
        self.fallback = False

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


async def answer_error(
    obs: RequestObservation, reply: Reply, error: APIError, early: bool = False
) -> None:
    """Record the request as failed and answer it with the error in its route's shape (an
    OpenAI error body on most routes), or, once SSE headers went out (`early`), as an SSE
    error event."""
    obs.finish(error.status, error=error.message)
    if early:
        await reply.finish(reply.dialect.error_event(error))
    else:
        await reply.respond(error.status, error_headers(error), reply.dialect.error_body(error))
