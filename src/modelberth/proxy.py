"""The hot path: a raw ASGI app that picks the model, admits the request, forwards it and
streams the answer back chunk by chunk. FastAPI stays out of this path on purpose."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp
from loguru import logger

from modelberth import auth
from modelberth.lifecycle import Model
from modelberth.registry import Registry
from modelberth.types import APIError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
    b"trailer", b"trailers", b"transfer-encoding", b"upgrade", b"host", b"content-length",
})
_NOT_FORWARDED = _HOP_BY_HOP | frozenset(auth.AUTH_HEADERS)
_RESPONSE_DROPPED = _HOP_BY_HOP - {b"content-length"}
_SKIP_AUTO = ("Accept-Encoding", "User-Agent", "Content-Type")
_MULTIPART_MODEL = re.compile(rb'name="model"[^\r\n]*\r\n(?:[^\r\n]+\r\n)*\r\n([^\r\n]*)\r\n')


class Proxy:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = self.registry.config.server  # read per request: a reload may change it
        try:
            auth.check(scope["headers"], server.api_keys)
            body = await self._read_body(scope, receive, int(server.max_body_mb * 2**20))
            if scope["path"].startswith("/upstream/"):
                name, path = _split_upstream_path(scope["path"])
            else:
                name, path = _model_from_body(scope, body), scope["path"]
            model = self.registry.require(name)
            await model.acquire()
        except APIError as error:
            await send_error(send, error)
            return
        try:
            await self._forward(model, scope, receive, send, path, body)
        finally:
            model.release()

    async def _read_body(self, scope: Scope, receive: Receive, limit: int) -> bytes:
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                raise _too_large(limit)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise APIError(499, "client closed the request", code="client_closed")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _forward(self, model: Model, scope: Scope, receive: Receive, send: Send,
                       path: str, body: bytes) -> None:
        """Relay one request; a client disconnect cancels the relay, closing the upstream call."""
        task = asyncio.current_task()
        assert task is not None
        gone = asyncio.ensure_future(receive())

        def on_disconnect(_: asyncio.Future[Message]) -> None:
            task.cancel(msg="client disconnected")

        gone.add_done_callback(on_disconnect)
        try:
            await self._relay(model, scope, send, path, body)
        except asyncio.CancelledError:
            if not gone.done() or gone.cancelled():
                raise
            task.uncancel()
            logger.bind(model=model.name).info("client disconnected; upstream request closed")
        finally:
            gone.remove_done_callback(on_disconnect)
            gone.cancel()

    async def _relay(self, model: Model, scope: Scope, send: Send, path: str,
                     body: bytes) -> None:
        url = model.base_url + path
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode("latin-1")
        headers = [(k.decode("latin-1"), v.decode("latin-1"))
                   for k, v in scope["headers"] if k.lower() not in _NOT_FORWARDED]
        started = False
        try:
            async with self.registry.http.request(
                scope["method"], url, data=body, headers=headers, allow_redirects=False,
                skip_auto_headers=_SKIP_AUTO,
            ) as resp:
                await send({
                    "type": "http.response.start",
                    "status": resp.status,
                    "headers": [(k, v) for k, v in resp.raw_headers
                                if k.lower() not in _RESPONSE_DROPPED],
                })
                started = True
                is_sse = resp.content_type == "text/event-stream"
                try:
                    async for chunk in resp.content.iter_any():
                        await send({"type": "http.response.body", "body": chunk,
                                    "more_body": True})
                except (aiohttp.ClientError, TimeoutError) as exc:
                    await self._broken_stream(model, send, is_sse, exc)
                    return
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            if started:
                raise
            await send_error(send, _upstream_error(model, exc))

    async def _broken_stream(self, model: Model, send: Send, is_sse: bool,
                             exc: BaseException) -> None:
        error = _upstream_error(model, exc, mid_stream=True)
        logger.bind(model=model.name).warning("{}", error.message)
        if not is_sse:
            return  # returning mid-body makes the server drop the connection: a visible cut
        payload = json.dumps(error.body())
        await send({"type": "http.response.body", "more_body": False,
                    "body": f"event: error\ndata: {payload}\n\n".encode()})


def _too_large(limit: int) -> APIError:
    return APIError(413, f"Request body is larger than the limit of {limit} bytes "
                    "(server.max_body_mb).", code="request_too_large")


def _upstream_error(model: Model, exc: BaseException, mid_stream: bool = False) -> APIError:
    when = "during the response" if mid_stream else "before answering"
    detail = str(exc) or type(exc).__name__
    if model.last_error:
        detail += f"; {model.last_error.splitlines()[0]}"
    return APIError(502, f"Upstream for model '{model.name}' failed {when}: {detail}",
                    type="server_error", code="upstream_error")


def _split_upstream_path(path: str) -> tuple[str, str]:
    _, _, rest = path.partition("/upstream/")
    name, slash, tail = rest.partition("/")
    if not name:
        raise APIError(404, "Use /upstream/{model}/{path}.", code="not_found")
    return name, slash + tail if slash else "/"


def _model_from_body(scope: Scope, body: bytes) -> str:
    content_type = _header(scope, b"content-type") or b""
    if content_type.startswith(b"multipart/form-data"):
        match = _MULTIPART_MODEL.search(body)
        if match:
            return match.group(1).decode("utf-8", "replace")
        raise _missing_model()
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise APIError(400, f"The request body is not valid JSON: {exc}",
                       code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_body")
    model = data.get("model")
    if model is None:
        raise _missing_model()
    if not isinstance(model, str):
        raise APIError(400, "'model' must be a string.", param="model", code="invalid_model")
    return model


def _missing_model() -> APIError:
    return APIError(400, "The request has no 'model' field: say which model to use.",
                    param="model", code="missing_model")


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return bytes(value)
    return None


async def send_error(send: Send, error: APIError) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    with contextlib.suppress(Exception):
        await send({"type": "http.response.start", "status": error.status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})
