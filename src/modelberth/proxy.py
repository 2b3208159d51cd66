"""The hot path: picks the model, admits the request, forwards it and streams the answer
back chunk by chunk. It runs straight on the connection's HTTP exchange (http1.py), without
ASGI messages; FastAPI stays out of this path on purpose."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import MutableMapping
from typing import Any

import msgspec
from loguru import logger
from opentelemetry import trace

from modelberth import auth
from modelberth.http1 import Exchange, Handler
from modelberth.lifecycle import Model
from modelberth.observe import RequestObservation, UsageReader, usage_of_answer
from modelberth.registry import Registry
from modelberth.types import APIError
from modelberth.upstream_client import UpstreamError, UpstreamResponse, UpstreamUnreachable

Scope = MutableMapping[str, Any]

_HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
    b"trailer", b"trailers", b"transfer-encoding", b"upgrade", b"host", b"content-length",
})
_NOT_FORWARDED = _HOP_BY_HOP | frozenset(auth.AUTH_HEADERS)
_RESPONSE_DROPPED = (_HOP_BY_HOP - {b"content-length"}) | {b"date"}  # the server sets Date
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no")]
_WHOLE = 64 * 1024  # non-SSE answers of known length up to this size are relayed in one piece
_MULTIPART_MODEL = re.compile(rb'name="model"[^\r\n]*\r\n(?:[^\r\n]+\r\n)*\r\n([^\r\n]*)\r\n')


class Proxy:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def route(self, method: str, path: str) -> Handler | None:
        """The connection's router: POST /v1/* and /upstream/* come here, the rest to the
        app (FastAPI)."""
        if path.startswith("/upstream/") or (method == "POST" and path.startswith("/v1/")):
            return self.handle
        return None

    async def handle(self, exchange: Exchange) -> None:
        scope = exchange.scope
        server = self.registry.config.server  # read per request: a reload may change it
        obs = RequestObservation(self.registry.telemetry, self.registry.metrics, scope)
        early = False  # True once SSE headers went out while the model was loading
        try:
            auth.check(scope["headers"], server.api_keys)
            body = await self._read_body(exchange, int(server.max_body_mb * 2**20))
            target: str = (scope.get("raw_path") or b"").decode("latin-1") or scope["path"]
            if scope["path"].startswith("/upstream/"):
                (name, _), streaming = _split_upstream_path(scope["path"]), False
                _, target = _split_upstream_path(target)
            else:
                name, streaming = _model_from_body(scope, body)
            model = self.registry.require(name)
            obs.named(model.name, name)
            if model.try_enter():  # ready and free: the common case, without a wait
                obs.queued(time.perf_counter(), cold=False)
            else:
                keepalive = server.stream_keepalive if streaming else 0.0
                early = await self._admit(model, obs, exchange, keepalive)
        except APIError as error:
            _answer_error(obs, exchange, error)
            return
        except _Answered:
            return
        try:
            try:
                await self._forward(model, exchange, target, body, obs, early, retry=True)
            except _Refused as refused:
                # The upstream died a moment ago and its exit was not processed yet. The
                # request never reached it: restart the model and send the request once more.
                if not await model.confirm_exit(2.0):
                    raise refused.error from None
                await model.await_ready()
                await self._forward(model, exchange, target, body, obs, early)
        except APIError as error:
            _answer_error(obs, exchange, error, early)
        finally:
            model.release()

    async def _admit(self, model: Model, obs: RequestObservation, exchange: Exchange,
                     keepalive: float) -> bool:
        """Wait for the model (start, room, concurrency). With keepalive, a streaming client
        gets its SSE headers and a comment line every `keepalive` seconds while it loads;
        returns whether the headers went out."""
        began = time.perf_counter()
        cold = not model.ready
        early = False
        # A model's start makes spans of its own, under the request's span.
        span = obs.span if cold else None
        with trace.use_span(span) if span is not None else contextlib.nullcontext():
            if not keepalive or model.ready:
                await model.acquire()
            else:
                waiting = asyncio.ensure_future(model.acquire())
                while not (await asyncio.wait({waiting}, timeout=keepalive))[0]:
                    if not early:
                        exchange.start(200, _SSE_HEADERS)
                        early = True
                    elapsed = time.perf_counter() - began
                    await exchange.send_chunk(
                        f": loading {model.name} {elapsed:.1f}s\n\n".encode())
                try:
                    waiting.result()
                except APIError as error:
                    if not early:
                        raise
                    _answer_error(obs, exchange, error, early=True)
                    raise _Answered from None
        obs.queued(began, cold)
        return early

    async def _read_body(self, exchange: Exchange, limit: int) -> bytes:
        for name, value in exchange.scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                raise _too_large(limit)
        whole = exchange.whole_body()
        if whole is not None:
            if len(whole) > limit:
                raise _too_large(limit)
            return whole
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await exchange.receive()
            if message["type"] == "http.disconnect":
                raise APIError(499, "client closed the request", code="client_closed")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _forward(self, model: Model, exchange: Exchange, target: str, body: bytes,
                       obs: RequestObservation, early: bool, retry: bool = False) -> None:
        """Relay one request; the client's connection closing cancels the relay (the
        exchange cancels this task), which closes the upstream call."""
        if not exchange.disconnected:
            exchange.cancel_on_disconnect = True
            try:
                await self._relay(model, exchange, target, body, obs, early, retry)
                return
            except asyncio.CancelledError:
                if not exchange.disconnected or exchange.task is None:
                    raise
                exchange.task.uncancel()
            finally:
                exchange.cancel_on_disconnect = False
        obs.finish(499, error="client disconnected")
        logger.bind(model=model.name).info("client disconnected; upstream request closed")

    async def _relay(self, model: Model, exchange: Exchange, target: str, body: bytes,
                     obs: RequestObservation, early: bool, retry: bool) -> None:
        scope = exchange.scope
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        # The connection gives header names in lower case.
        headers = [(k, v) for k, v in scope["headers"] if k not in _NOT_FORWARDED]
        obs.upstream_headers(headers, model, target)
        try:
            if model.port is None:  # admitted models have a port; a stop in between has not
                raise UpstreamUnreachable("the upstream is not running")
            resp = await self.registry.upstream.request(
                scope["method"], "127.0.0.1", model.port, target, headers, body)
        except UpstreamError as exc:
            error = _upstream_error(model, exc)
            if retry and isinstance(exc, UpstreamUnreachable):
                raise _Refused(error) from exc
            _answer_error(obs, exchange, error, early)
            return
        try:
            await self._relay_answer(model, exchange, resp, obs, early)
        finally:
            resp.release()

    async def _relay_answer(self, model: Model, exchange: Exchange, resp: UpstreamResponse,
                            obs: RequestObservation, early: bool) -> None:
        headers, is_sse, length = _answer_head(resp)
        if early and resp.status != 200:
            text = (await _read_or_empty(resp)).decode("utf-8", "replace")
            error = APIError(resp.status, f"Upstream answered {resp.status}: {text}",
                             type="server_error", code="upstream_error")
            _answer_error(obs, exchange, error, early=True)
            return
        if not early:  # else the SSE head went out while the model loaded
            if not is_sse and length is not None and length <= _WHOLE:
                await self._relay_whole(model, resp, exchange, headers, obs)
                return
            exchange.start(resp.status, headers)
        usage = UsageReader(is_sse)
        try:
            while chunk := await resp.next_piece():
                obs.first_chunk()
                usage.feed(chunk)
                await exchange.send_chunk(chunk)
        except UpstreamError as exc:
            error = _upstream_error(model, exc, mid_stream=True)
            obs.finish(502, usage.result(), error=error.message)
            self._broken_stream(model, exchange, is_sse or early, error)
            return
        exchange.finish()
        obs.finish(resp.status, usage.result())

    @staticmethod
    async def _relay_whole(model: Model, resp: UpstreamResponse, exchange: Exchange,
                           headers: list[tuple[bytes, bytes]],
                           obs: RequestObservation) -> None:
        """A small answer of known length, read whole and sent in one piece: nothing to
        stream, and if the upstream fails while sending it the client still gets a clean
        502 (nothing has been sent yet)."""
        answer = resp.arrived_whole()
        if answer is None:
            try:
                answer = await resp.read()
            except UpstreamError as exc:
                _answer_error(obs, exchange, _upstream_error(model, exc))
                return
        obs.first_chunk()
        exchange.respond(resp.status, headers, answer)
        obs.finish(resp.status, usage_of_answer(answer))

    @staticmethod
    def _broken_stream(model: Model, exchange: Exchange, is_sse: bool, error: APIError) -> None:
        logger.bind(model=model.name).warning("{}", error.message)
        if not is_sse:
            exchange.cut()
            return
        end_sse_with_error(exchange, error)


def _answer_error(obs: RequestObservation, exchange: Exchange, error: APIError,
                  early: bool = False) -> None:
    """Record the request as failed and answer it with the error: an OpenAI error body, or,
    once SSE headers went out (`early`), an SSE error event."""
    obs.finish(error.status, error=error.message)
    (end_sse_with_error if early else respond_error)(exchange, error)


async def _read_or_empty(resp: UpstreamResponse) -> bytes:
    try:
        return await resp.read()
    except UpstreamError:
        return b""


def _answer_head(resp: UpstreamResponse) -> tuple[list[tuple[bytes, bytes]], bool, int | None]:
    """In one pass over the answer's headers: those to relay, whether it is an SSE stream,
    and its Content-Length."""
    relayed = []
    is_sse, length = False, None
    for name, value in resp.headers:
        if name == b"content-type":
            is_sse = value.partition(b";")[0].strip().lower() == b"text/event-stream"
        elif name == b"content-length" and value.isdigit():
            length = int(value)
        if name not in _RESPONSE_DROPPED:
            relayed.append((name, value))
    return relayed, is_sse, length


class _Answered(Exception):
    """The client already has its answer (an SSE error after loading comments)."""


class _Refused(Exception):
    """The upstream refused the connection: the request never reached it."""

    def __init__(self, error: APIError) -> None:
        super().__init__(error.message)
        self.error = error


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


def _model_from_body(scope: Scope, body: bytes) -> tuple[str, bool]:
    """The requested model, and whether the client asked for a stream."""
    content_type = _header(scope, b"content-type") or b""
    if content_type.startswith(b"multipart/form-data"):
        match = _MULTIPART_MODEL.search(body)
        if match:
            return match.group(1).decode("utf-8", "replace"), False
        raise _missing_model()
    try:
        fields = _REQUEST.decode(body)
    except msgspec.ValidationError as exc:
        if str(exc).startswith("Expected `object`"):
            raise APIError(400, "The request body must be a JSON object.",
                           code="invalid_body") from None
        raise _invalid_json(exc) from None
    except msgspec.DecodeError as exc:
        raise _invalid_json(exc) from None
    if fields.model is None:
        raise _missing_model()
    if not isinstance(fields.model, str):
        raise APIError(400, "'model' must be a string.", param="model", code="invalid_model")
    return fields.model, fields.stream is True


class _RequestFields(msgspec.Struct):
    """The two fields the proxy reads from a request. The rest is validated as JSON and
    skipped without building Python objects: 12x faster than json.loads on a 5 MB chat."""

    model: Any = None
    stream: Any = None


_REQUEST = msgspec.json.Decoder(_RequestFields)


def _invalid_json(exc: Exception) -> APIError:
    return APIError(400, f"The request body is not valid JSON: {exc}", code="invalid_json")


def _missing_model() -> APIError:
    return APIError(400, "The request has no 'model' field: say which model to use.",
                    param="model", code="missing_model")


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def end_sse_with_error(exchange: Exchange, error: APIError) -> None:
    """End an SSE response that has already started with an `error` event."""
    payload = json.dumps(error.body())
    exchange.finish(f"event: error\ndata: {payload}\n\n".encode())


def respond_error(exchange: Exchange, error: APIError) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json")]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    exchange.respond(error.status, headers, body)
