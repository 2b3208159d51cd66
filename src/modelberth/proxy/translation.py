"""Routes whose clients speak another API than OpenAI's: their errors in that API's shape,
and, for upstreams that do not speak it, the request and its answer translated on the way.

- Anthropic's Messages API (POST /v1/messages and /v1/messages/count_tokens). A model
  with `anthropic: native` gets the request as it came (only errors modelberth makes itself
  are shaped); with `translate` it gets a chat completions request (or, for count_tokens, a
  `/tokenize` call) and the answer comes back as Anthropic's (proxy/dialects/anthropic*.py).
- Ollama's inference routes (POST /api/chat, /api/generate, /api/embed, /api/embeddings),
  always translated: the upstreams modelberth runs speak OpenAI's API, not Ollama's
  (proxy/dialects/ollama*.py). Its names may come as `name:latest` (`Dialect.resolve`), its
  requests may ask for nothing but the model (a preload, answered once the model is up,
  without an upstream call) or for its unloading (answered at once), and their keep_alive
  becomes the model's idle timeout (`Model.keep_alive`). Its catalog routes are FastAPI's
  (api/ollama.py).

Every other route is OpenAI's: `dialect_for` returns `OPENAI`, which changes nothing."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from modelberth.config import ModelSpec
from modelberth.errors import APIError
from modelberth.proxy import errors
from modelberth.proxy.dialects import anthropic, ollama

if TYPE_CHECKING:
    from modelberth.models.model import Model
    from modelberth.models.registry import Registry

_MESSAGES = "/v1/messages"
_COUNT_TOKENS = "/v1/messages/count_tokens"


class Stream(Protocol):
    """Turns an upstream's SSE stream into the client's, piece by piece."""

    def feed(self, chunk: bytes) -> bytes: ...

    def finish(self) -> bytes: ...

    def error(self, status: int, message: str) -> bytes: ...


class Times(Protocol):
    """When things happened to the request, in perf_counter() seconds (RequestObservation
    has these): it began, waited `queue_seconds` for the model (cold start and queue), and
    the upstream's first byte came (None until it has)."""

    began: float
    queue_seconds: float
    first_byte: float | None


class Translation:
    """One request rewritten for the upstream, and the way back for its answer. `streaming`
    says whether the client may get SSE keep-alive comments while the model loads. An empty
    `target`: nothing is sent upstream; once the model is ready, `whole(200, b"", times)`
    is the answer (Ollama's preload)."""

    stream_type = b"text/event-stream"  # the content type of `stream()`'s output

    def __init__(self, target: str, body: bytes, streaming: bool) -> None:
        self.target = target
        self.body = body
        self.streaming = streaming

    def at_once(self, model: Model) -> bytes | None:
        """A 200 answer that needs neither the model nor its upstream (Ollama's unload),
        acting on the model itself; None for the usual way."""
        return None

    def apply(self, model: Model) -> None:
        """What the request says of the model itself, once the model is up (Ollama's
        keep_alive)."""

    def whole(self, status: int, answer: bytes, times: Times) -> tuple[int, bytes]:
        """A whole answer (or the upstream's error) as the client's API has it."""
        raise NotImplementedError

    def stream(self, times: Times) -> Stream:
        raise NotImplementedError


class Dialect:
    """How a route's errors look, and whether a request needs translating. The default is
    OpenAI's: errors as {"error": {...}}, nothing translated."""

    name = "openai"

    def error_body(self, error: APIError) -> bytes:
        return errors.error_body(error)

    def error_event(self, error: APIError) -> bytes:
        return errors.sse_error_event(error)

    def translate(
        self, spec: ModelSpec, path: str, body: bytes, requested: str
    ) -> Translation | None:
        return None

    def resolve(self, requested: str, registry: Registry) -> str:
        """The name to look up, for a `requested` name the registry does not know as it
        is (the proxy asks only then: known names cost nothing more)."""
        return requested


class AnthropicDialect(Dialect):
    name = "anthropic"

    def error_body(self, error: APIError) -> bytes:
        return json.dumps(anthropic.error_body(error.status, error.message)).encode()

    def error_event(self, error: APIError) -> bytes:
        return b"event: error\ndata: " + self.error_body(error) + b"\n\n"

    def translate(
        self, spec: ModelSpec, path: str, body: bytes, requested: str
    ) -> Translation | None:
        if spec.anthropic == "native":
            return None
        request = _json_object(body)
        try:
            if path == _COUNT_TOKENS:
                text = anthropic.count_tokens_request(request)
                return _CountTokens(json.dumps({"content": text}).encode())
            chat = anthropic.to_chat_request(request)
        except anthropic.DialectError as exc:
            raise APIError(exc.status, exc.message) from None
        return _Messages(json.dumps(chat).encode(), requested, chat.get("stream") is True)


class _Messages(Translation):
    def __init__(self, body: bytes, model: str, streaming: bool) -> None:
        super().__init__("/v1/chat/completions", body, streaming)
        self.model = model  # answers carry the name the client asked for

    def whole(self, status: int, answer: bytes, times: Times) -> tuple[int, bytes]:
        if status >= 400:
            return status, json.dumps(anthropic.from_openai_error(answer, status)).encode()
        try:
            message = anthropic.from_chat_response(_json_object(answer, status=502), self.model)
        except anthropic.DialectError as exc:
            raise APIError(exc.status, exc.message) from None
        return status, json.dumps(message).encode()

    def stream(self, times: Times) -> Stream:
        return anthropic.MessagesStream(self.model)


class _CountTokens(Translation):
    """count_tokens on an upstream that only counts through its tokenizer (`/tokenize`, as
    llama-server and vLLM have)."""

    def __init__(self, body: bytes) -> None:
        super().__init__("/tokenize", body, False)

    def whole(self, status: int, answer: bytes, times: Times) -> tuple[int, bytes]:
        if status in (404, 405):
            raise APIError(
                501,
                "This model's upstream has no tokenizer endpoint (/tokenize): "
                "count_tokens is not available for it.",
                type="api_error",
                code="not_implemented",
            )
        if status >= 400:
            return status, json.dumps(anthropic.from_openai_error(answer, status)).encode()
        tokens = _json_object(answer, status=502).get("tokens")
        if not isinstance(tokens, list):
            raise APIError(
                502,
                "The upstream's /tokenize answer has no token list.",
                type="api_error",
                code="upstream_error",
            )
        return 200, json.dumps({"input_tokens": len(tokens)}).encode()

    def stream(self, times: Times) -> Stream:
        raise APIError(502, "/tokenize answered with a stream.", code="upstream_error")


class OllamaDialect(Dialect):
    """Errors as {"error": message}: a JSON body, or one NDJSON line mid-stream."""

    name = "ollama"

    def error_body(self, error: APIError) -> bytes:
        return json.dumps(ollama.error_body(error.message)).encode()

    def error_event(self, error: APIError) -> bytes:
        return self.error_body(error) + b"\n"

    def resolve(self, requested: str, registry: Registry) -> str:
        """`name:latest` (Ollama's clients add the default tag) and differences of case."""
        return ollama.resolve_name(requested, _known_names(registry)) or requested

    def translate(
        self, spec: ModelSpec, path: str, body: bytes, requested: str
    ) -> Translation | None:
        request = _json_object(body)
        keep = ollama.keep_alive_seconds(request.get("keep_alive"))
        kind = _OLLAMA_KINDS[path]
        if ollama.is_preload(request):
            return _OllamaPreload(kind, requested, keep)
        if kind == "chat":
            out, target = ollama.chat_request(request), ollama.CHAT_PATH
        elif kind == "generate":
            out, target = ollama.generate_request(request), ollama.generate_path(request)
        elif kind == "embed":
            out, target = ollama.embed_request(request), ollama.EMBED_PATH
        else:
            out, target = ollama.embeddings_request(request), ollama.EMBED_PATH
        out["model"] = requested
        return _OllamaAnswer(kind, target, json.dumps(out).encode(), requested, keep)


class _Ollama(Translation):
    """What Ollama's translations share: the name answers carry (the one the client sent,
    or the configured one it meant by `name:latest`) and the request's keep_alive."""

    def __init__(
        self, kind: str, target: str, body: bytes, model: str, keep_alive: float | None
    ) -> None:
        # No SSE keep-alive comments while the model loads: they are not NDJSON.
        super().__init__(target, body, streaming=False)
        self.kind = kind  # "chat", "generate", "embed" or "embeddings"
        self.model = model
        self.keep_alive = keep_alive

    def apply(self, model: Model) -> None:
        # Absent, Ollama's default applies: here, the model's idle_timeout.
        model.keep_alive(self.keep_alive)

    def timing(self, times: Times, end: float | None = None) -> ollama.Timing:
        return ollama.Timing(start=times.began, ready=times.began + times.queue_seconds, end=end)


class _OllamaPreload(_Ollama):
    """A request with nothing to generate: load the model (answered once it is ready, and
    its keep_alive applied), or unload it with keep_alive 0 (at once: a model that is not
    running is not started for that; a busy one stops after its answers in flight)."""

    def __init__(self, kind: str, model: str, keep_alive: float | None) -> None:
        super().__init__(kind, "", b"", model, keep_alive)

    def at_once(self, model: Model) -> bytes | None:
        if self.keep_alive != 0:
            return None
        model.keep_alive(0)
        return self._answer(unload=True)

    def whole(self, status: int, answer: bytes, times: Times) -> tuple[int, bytes]:
        return 200, self._answer(unload=False)

    def _answer(self, unload: bool) -> bytes:
        if self.kind == "embed":
            return json.dumps({"model": self.model, "embeddings": []}).encode()
        if self.kind == "embeddings":
            return json.dumps({"embedding": []}).encode()
        return json.dumps(
            ollama.preload_response(self.model, self.kind == "generate", unload)
        ).encode()

    def stream(self, times: Times) -> Stream:
        raise APIError(500, "A preload has no stream.", code="internal_error")


class _OllamaAnswer(_Ollama):
    """An answer from the upstream: whole, or its SSE stream as Ollama's NDJSON lines."""

    stream_type = b"application/x-ndjson"

    def whole(self, status: int, answer: bytes, times: Times) -> tuple[int, bytes]:
        if status >= 400:
            try:
                error = json.loads(answer)
            except (ValueError, RecursionError):
                error = {"error": answer.decode("utf-8", "replace")[:500] or None}
            return status, json.dumps(ollama.openai_error(error)).encode()
        body = _json_object(answer, status=502)
        timing = self.timing(times, time.perf_counter())
        if self.kind == "chat":
            out = ollama.chat_response(body, self.model, timing)
        elif self.kind == "generate":
            out = ollama.generate_response(body, self.model, timing)
        elif self.kind == "embed":
            out = ollama.embed_response(body, self.model, timing)
        else:
            out = ollama.embeddings_response(body)
        return status, json.dumps(out, ensure_ascii=False).encode()

    def stream(self, times: Times) -> Stream:
        return _NdjsonStream(
            ollama.ChatStream(self.model, self.timing(times), generate=self.kind == "generate"),
            times,
        )


class _NdjsonStream:
    """ChatStream as a `Stream`: the first token's time taken from `times` as it comes."""

    def __init__(self, stream: ollama.ChatStream, times: Times) -> None:
        self._stream = stream
        self._times = times

    def feed(self, chunk: bytes) -> bytes:
        timing = self._stream.timing
        if timing.first_token is None:
            timing.first_token = self._times.first_byte
        return self._stream.feed(chunk)

    def finish(self) -> bytes:
        return self._stream.finish(time.perf_counter())

    def error(self, status: int, message: str) -> bytes:
        return json.dumps(ollama.error_body(message)).encode() + b"\n"


def _known_names(registry: Registry) -> Iterator[str]:
    for model in registry.models.values():
        yield model.name
        yield from model.spec.aliases


_OLLAMA_KINDS = {
    "/api/chat": "chat",
    "/api/generate": "generate",
    "/api/embed": "embed",
    "/api/embeddings": "embeddings",
}

OPENAI = Dialect()
ANTHROPIC = AnthropicDialect()
OLLAMA = OllamaDialect()
_BY_PATH: dict[str, Dialect] = {
    _MESSAGES: ANTHROPIC,
    _COUNT_TOKENS: ANTHROPIC,
    **dict.fromkeys(_OLLAMA_KINDS, OLLAMA),
}
# POST routes outside /v1/ that are inference, so the proxy (not FastAPI) serves them.
INFERENCE_PATHS: frozenset[str] = frozenset(_OLLAMA_KINDS)


def dialect_for(path: str) -> Dialect:
    return _BY_PATH.get(path, OPENAI)


def _json_object(body: bytes, status: int = 400) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        value = None
    if not isinstance(value, dict):
        what = "request body" if status == 400 else "upstream's answer"
        raise APIError(status, f"The {what} is not a JSON object.", code="invalid_json")
    return value
