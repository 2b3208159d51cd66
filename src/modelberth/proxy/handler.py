"""The hot path: picks the model, admits the request, forwards it and streams the answer
back chunk by chunk, its `model` renamed to the name the client sent (naming.py). It is a
raw ASGI handler the app routes POST /v1/*, /upstream/* and the other APIs' inference routes
to (Ollama's POST /api/chat...; translation.py translates those for the upstream, and
relay_translated.py their answers); FastAPI stays out of this path on purpose."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable

from loguru import logger
from opentelemetry import trace

from modelberth import auth
from modelberth.errors import APIError
from modelberth.models.model import Model
from modelberth.models.registry import Registry
from modelberth.proxy.asgi import Headers, Receive, Scope, Send
from modelberth.proxy.errors import failure
from modelberth.proxy.fallback import FallBack, Prepared, Sent, with_fallbacks
from modelberth.proxy.forwarding import Forwarding
from modelberth.proxy.naming import ModelNamer, rename
from modelberth.proxy.relay_translated import answer_at_once, relay_local, relay_translated
from modelberth.proxy.remote import remote_body, remote_headers
from modelberth.proxy.reply import Reply, answer_error
from modelberth.proxy.request import model_from_body, read_body, split_upstream_path
from modelberth.proxy.translation import INFERENCE_PATHS, Translation, dialect_for
from modelberth.telemetry.activity import Activity
from modelberth.telemetry.metrics import Metrics
from modelberth.telemetry.observe import RequestObservation, UsageReader, usage_of_answer
from modelberth.telemetry.setup import Telemetry
from modelberth.upstream_client import (
    UpstreamClient,
    UpstreamError,
    UpstreamResponse,
    UpstreamTimeout,
    UpstreamUnreachable,
)

_SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_WHOLE = 64 * 1024  # non-SSE answers of known length up to this size are relayed in one piece


class Proxy:
    def __init__(
        self,
        registry: Registry,
        upstream: UpstreamClient,
        telemetry: Telemetry,
        metrics: Metrics,
        activity: Activity,
    ) -> None:
        self.registry = registry
        self.upstream = upstream
        self.telemetry = telemetry
        self.metrics = metrics
        self.activity = activity
        self._forwarding: tuple[list[str], Forwarding] | None = None

    @staticmethod
    def claims(method: str, path: str) -> bool:
        """POST /v1/*, /upstream/* and the other APIs' inference routes (translation.py's
        INFERENCE_PATHS, e.g. Ollama's POST /api/chat) come here; the rest goes to the app
        (FastAPI)."""
        if method == "POST":
            return path.startswith(("/v1/", "/upstream/")) or path in INFERENCE_PATHS
        return path.startswith("/upstream/")

    def forwarding(self, trusted: list[str]) -> Forwarding:
        """The header rules for the config's trusted proxies, rebuilt when a reload brings
        a new list (a config is frozen: the same list object means the same proxies)."""
        if self._forwarding is None or self._forwarding[0] is not trusted:
            self._forwarding = (trusted, Forwarding(trusted))
        return self._forwarding[1]

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = self.registry.config.server  # read per request: a reload may change it
        obs = RequestObservation(self.telemetry, self.metrics, self.activity, scope)
        reply = Reply(scope, send)
        reply.dialect = dialect = dialect_for(scope["path"])
        try:
            auth.check(scope["headers"], server.inference_keys)
            body = await read_body(scope, receive, int(server.max_body_mb * 2**20))
            obs.request_body = self.activity.capture(body)
            target: str = (scope.get("raw_path") or b"").decode("latin-1") or scope["path"]
            if scope["path"].startswith("/upstream/"):
                (name, _), streaming = split_upstream_path(scope["path"]), False
                _, target = split_upstream_path(target)
            else:
                name, streaming = model_from_body(scope, body)
            model = self.registry.get(name)
            if model is None:  # e.g. Ollama's `name:latest`; a known name skips this
                name = dialect.resolve(name, self.registry)
                model = self.registry.require(name)
            obs.named(model.name, name)
            translation = dialect.translate(model.spec, scope["path"], body, name)
        except APIError as error:
            await answer_error(obs, reply, error)
            return
        untranslated = None  # the request as the client sent it, for fallbacks
        if translation is not None:
            untranslated = (target, body, streaming)
            if await answer_at_once(model, reply, obs, translation):
                return  # nothing for the model to do (Ollama's unload)
            body, target, streaming = translation.body, translation.target, translation.streaming
        forwarding = self.forwarding(server.trusted_proxies)
        headers = forwarding.request_headers(
            scope["headers"], _peer(scope), scope.get("scheme", "http")
        )
        keepalive = server.stream_keepalive
        # The client going away cancels the work done for it (the wait for the model, the
        # upstream call), which closes the upstream's connection.
        reply.watch_disconnect()
        try:
            if not model.spec.fallbacks:
                await self._admit_and_forward(
                    model, reply, target, headers, body, obs, streaming, keepalive, translation
                )
            else:

                def attempt(candidate: Model, ready: Prepared) -> Awaitable[None]:
                    return self._admit_and_forward(
                        candidate,
                        reply,
                        ready.target,
                        ready.headers,
                        ready.body,
                        obs,
                        ready.streaming,
                        keepalive,
                        ready.translation,
                    )

                def fresh_headers() -> Headers:
                    return forwarding.request_headers(
                        scope["headers"], _peer(scope), scope.get("scheme", "http")
                    )

                await with_fallbacks(
                    model,
                    Prepared(target, headers, body, streaming, translation),
                    Sent(
                        scope["path"],
                        *(untranslated or (target, body, streaming)),
                        name,
                        fresh_headers,
                    ),
                    self.registry,
                    reply,
                    obs,
                    attempt,
                )
        except asyncio.CancelledError:
            if not reply.disconnected:
                raise
            uncancel()
            obs.finish(499, error="client disconnected")
            logger.bind(model=model.name).info("client disconnected; upstream request closed")
        finally:
            reply.unwatch_disconnect()

    async def _admit_and_forward(
        self,
        model: Model,
        reply: Reply,
        target: str,
        headers: Headers,
        body: bytes,
        obs: RequestObservation,
        streaming: bool,
        keepalive: float,
        translation: Translation | None,
    ) -> None:
        try:
            if model.try_enter():  # ready and free: the common case, without a wait
                obs.queued(time.perf_counter(), cold=False)
            else:
                await self._admit(model, obs, reply, keepalive if streaming else 0.0)
        except APIError as error:
            if reply.fallback and error.status >= 500 and not reply.early:
                raise FallBack(error) from None  # a failed start: the next model's turn
            await answer_error(obs, reply, error, reply.early)
            return
        try:
            try:
                await self._relay(model, reply, target, headers, body, obs, translation, retry=True)
            except _Refused as refused:
                if reply.fallback and not reply.early:  # now, rather than after a restart
                    raise FallBack(refused.error) from None
                # The upstream died a moment ago and its exit was not processed yet: the
                # request never reached a live upstream. It waits for the restart, as a cold
                # request does, and is sent once to the new upstream.
                if not await model.confirm_exit(2.0):
                    raise refused.error from None
                await model.await_ready()
                await self._relay(model, reply, target, headers, body, obs, translation)
        except APIError as error:
            await answer_error(obs, reply, error, reply.early)
        finally:
            model.release()

    async def _admit(
        self, model: Model, obs: RequestObservation, reply: Reply, keepalive: float
    ) -> None:
        """Wait for the model (start, room, concurrency). With keepalive, a streaming client
        gets its SSE headers and a comment line every `keepalive` seconds while it loads."""
        began = time.perf_counter()
        cold = not model.ready
        # A model's start makes spans of its own, under the request's span.
        span = obs.span if cold else None
        with trace.use_span(span) if span is not None else contextlib.nullcontext():
            if not keepalive or model.ready:
                await model.acquire()
            else:
                await self._acquire_with_keepalive(model, reply, keepalive, began, obs.requested)
        obs.queued(began, cold)

    @staticmethod
    async def _acquire_with_keepalive(
        model: Model, reply: Reply, keepalive: float, began: float, requested: str
    ) -> None:
        waiting = asyncio.ensure_future(model.acquire())
        as_reasoning = (
            model.spec.loading_status == "reasoning"
            and reply.scope["path"] == "/v1/chat/completions"
        )
        try:
            while not (await asyncio.wait({waiting}, timeout=keepalive))[0]:
                if not reply.early:
                    await reply.start(200, _SSE_HEADERS)
                    reply.early = True
                elapsed = time.perf_counter() - began
                # The start's percent, ETA and phase, when known (models/progress.py).
                progress = model.progress
                known = f" {brief}" if progress and (brief := progress.brief()) else ""
                if as_reasoning:
                    await reply.chunk(_loading_delta(requested, model.name, elapsed, known))
                else:
                    await reply.chunk(f": loading {model.name} {elapsed:.1f}s{known}\n\n".encode())
        except BaseException:
            # Called off (the client left): the acquire must not count itself in later.
            waiting.cancel()
            with contextlib.suppress(BaseException):
                await waiting
            if waiting.done() and not waiting.cancelled() and waiting.exception() is None:
                model.release()
            raise
        waiting.result()

    async def _relay(
        self,
        model: Model,
        reply: Reply,
        target: str,
        headers: Headers,
        body: bytes,
        obs: RequestObservation,
        translation: Translation | None,
        retry: bool = False,
    ) -> None:
        if translation is not None and not translation.target:  # nothing for the upstream
            await relay_local(model, reply, obs, translation)
            return
        scope = reply.scope
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        spec = model.spec
        remote = spec.remote
        try:
            if remote is None:
                obs.upstream_headers(headers, model, target)
                if model.port is None:  # admitted models have a port; a stop since has not
                    raise UpstreamUnreachable("the upstream is not running")
                resp = await self.upstream.request(
                    scope["method"],
                    model.host,
                    model.port,
                    target,
                    headers,
                    body,
                    first_byte_timeout=spec.first_byte_timeout or None,
                )
            else:  # runtime: remote (remote.py)
                target = remote.target(target)
                obs.upstream_headers(headers, model, target)
                resp = await self.upstream.request(
                    scope["method"],
                    remote.host,
                    remote.port,
                    target,
                    remote_headers(remote, headers),
                    remote_body(remote, body, obs.requested, scope["path"]),
                    spec.first_byte_timeout or None,
                    tls=remote.tls,
                    authority=remote.authority,
                )
        except UpstreamError as exc:
            error = failure(model, exc)
            if retry and not exc.answered and not isinstance(exc, UpstreamTimeout):
                raise _Refused(error) from exc
            if reply.fallback and not reply.early:
                raise FallBack(error) from exc
            await answer_error(obs, reply, error, reply.early)
            return
        try:
            if reply.fallback and resp.status >= 500 and not reply.early:
                text = await _read_or_empty(resp, spec.stream_stall_timeout or None)
                raise FallBack(
                    APIError(
                        resp.status,
                        f"Upstream for model '{model.name}' answered {resp.status}: "
                        f"{text.decode('utf-8', 'replace')[:500]}",
                        type="server_error",
                        code="upstream_error",
                    )
                )
            if translation is None:
                await self._relay_answer(model, reply, resp, obs)
            else:
                await relay_translated(model, reply, resp, obs, translation)
        finally:
            resp.release()

    async def _relay_answer(
        self, model: Model, reply: Reply, resp: UpstreamResponse, obs: RequestObservation
    ) -> None:
        headers, is_sse, length = Forwarding.answer_head(resp.status, resp.headers)
        stall = model.spec.stream_stall_timeout or None
        if reply.early and resp.status != 200:
            text = (await _read_or_empty(resp, stall)).decode("utf-8", "replace")
            error = APIError(
                resp.status,
                f"Upstream answered {resp.status}: {text}",
                type="server_error",
                code="upstream_error",
            )
            await answer_error(obs, reply, error, early=True)
            return
        renamed = _renames(model, reply, headers, is_sse)
        if not reply.early:  # else the SSE head went out while the model loaded
            if (
                not is_sse
                and length is not None
                and length <= _WHOLE
                and reply.scope["method"] != "HEAD"
            ):
                await self._relay_whole(model, resp, reply, headers, obs, stall, renamed)
                return
            if length is not None and (not renamed or reply.scope["method"] == "HEAD"):
                headers.append((b"content-length", b"%d" % length))
            await reply.start(resp.status, headers)
        usage = UsageReader(is_sse)
        obs.streamed = is_sse
        namer = ModelNamer(obs.requested, is_sse) if renamed else None
        captured = obs.answer_body = obs.activity.capture()
        try:
            while chunk := await resp.next_piece(stall):
                obs.first_chunk()
                usage.feed(chunk)
                if namer is not None:
                    chunk = namer.feed(chunk)
                    if not chunk:
                        continue
                if captured is not None:
                    captured.feed(chunk)
                await reply.chunk(chunk)
            if namer is not None and (rest := namer.finish()):
                await reply.chunk(rest)
        except UpstreamError as exc:
            error = failure(model, exc, mid_stream=True)
            obs.finish(error.status, usage.result(), error=error.message)
            await self._broken_stream(model, reply, is_sse or reply.early, error)
            return
        model.upstream_answered()
        await reply.finish()
        obs.finish(resp.status, usage.result())

    @staticmethod
    async def _relay_whole(
        model: Model,
        resp: UpstreamResponse,
        reply: Reply,
        headers: Headers,
        obs: RequestObservation,
        stall: float | None,
        renamed: bool,
    ) -> None:
        """A small answer of known length, read whole and sent in one piece: nothing to
        stream, and if the upstream fails while sending it the client still gets a clean
        error (nothing has been sent yet)."""
        answer = resp.arrived_whole()
        if answer is None:
            try:
                answer = await resp.read(stall)
            except UpstreamError as exc:
                # The head had come: a timeout is "during the response"; a failure keeps
                # the wording of one before the answer, since the client has seen nothing.
                error = failure(model, exc, mid_stream=isinstance(exc, UpstreamTimeout))
                if reply.fallback:  # nothing was sent: the next model's turn
                    raise FallBack(error) from exc
                await answer_error(obs, reply, error)
                return
        model.upstream_answered()
        obs.first_chunk()
        usage = usage_of_answer(answer)
        if renamed:
            answer = rename(answer, obs.requested)
        obs.answer_body = obs.activity.capture(answer)
        await reply.respond(resp.status, headers, answer)
        obs.finish(resp.status, usage)

    @staticmethod
    async def _broken_stream(model: Model, reply: Reply, is_sse: bool, error: APIError) -> None:
        logger.bind(model=model.name).warning("{}", error.message)
        if not is_sse:
            reply.cut()
            return
        await reply.finish(reply.dialect.error_event(error))


async def _read_or_empty(resp: UpstreamResponse, stall: float | None) -> bytes:
    try:
        return await resp.read(stall)
    except UpstreamError:
        return b""


def _loading_delta(requested: str, name: str, elapsed: float, known: str) -> bytes:
    """A chat completion chunk whose `reasoning_content` says the model is loading, for
    chat UIs that show reasoning as thinking (`loading_status: reasoning`)."""
    chunk = {
        "id": "chatcmpl-modelberth-loading",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": requested,
        "choices": [
            {
                "index": 0,
                "finish_reason": None,
                "delta": {
                    "role": "assistant",
                    "reasoning_content": f"Loading {name}... {elapsed:.1f}s{known}\n",
                },
            }
        ],
    }
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def _renames(model: Model, reply: Reply, headers: Headers, is_sse: bool) -> bool:
    """Whether the answer's `model` becomes the name the client sent (naming.py): JSON and
    SSE answers, unless the model keeps the upstream's name or the route is the raw
    /upstream/ passthrough."""
    if model.spec.use_upstream_model_name or reply.scope["path"].startswith("/upstream/"):
        return False
    if is_sse:
        return True
    for name, value in headers:
        if name == b"content-type":
            return b"json" in value
    return False


def _peer(scope: Scope) -> str | None:
    client = scope.get("client")
    return str(client[0]) if client else None


def uncancel() -> None:
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


class _Refused(Exception):
    """The upstream refused the connection: the request never reached it."""

    def __init__(self, error: APIError) -> None:
        super().__init__(error.message)
        self.error = error
