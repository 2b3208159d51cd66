"""Routes whose clients speak another API than OpenAI's: their errors in that API's shape,
and, for upstreams that do not speak it, the request and its answer translated on the way.

Today: Anthropic's Messages API (POST /v1/messages and /v1/messages/count_tokens). A model
with `anthropic: native` gets the request as it came (only errors modelberth makes itself
are shaped); with `translate` it gets a chat completions request (or, for count_tokens, a
`/tokenize` call) and the answer comes back as Anthropic's (proxy/dialects/anthropic*.py).
Every other route is OpenAI's: `dialect_for` returns `OPENAI`, which changes nothing."""

from __future__ import annotations

import json
from typing import Any, Protocol

from modelberth.config import ModelSpec
from modelberth.errors import APIError
from modelberth.proxy import errors
from modelberth.proxy.dialects import anthropic

_MESSAGES = "/v1/messages"
_COUNT_TOKENS = "/v1/messages/count_tokens"


class Stream(Protocol):
    """Turns an upstream's SSE stream into the client's, piece by piece."""

    def feed(self, chunk: bytes) -> bytes: ...

    def finish(self) -> bytes: ...

    def error(self, status: int, message: str) -> bytes: ...


class Translation:
    """One request rewritten for the upstream, and the way back for its answer."""

    def __init__(self, target: str, body: bytes, streaming: bool) -> None:
        self.target = target
        self.body = body
        self.streaming = streaming

    def whole(self, status: int, answer: bytes) -> tuple[int, bytes]:
        """A whole answer (or the upstream's error) as the client's API has it."""
        raise NotImplementedError

    def stream(self) -> Stream:
        raise NotImplementedError


class Dialect:
    """How a route's errors look, and whether a request needs translating. The default is
    OpenAI's: errors as {"error": {...}}, nothing translated."""

    name = "openai"

    def error_body(self, error: APIError) -> bytes:
        return errors.error_body(error)

    def error_event(self, error: APIError) -> bytes:
        return errors.sse_error_event(error)

    def translate(self, spec: ModelSpec, path: str, body: bytes,
                  requested: str) -> Translation | None:
        return None


class AnthropicDialect(Dialect):
    name = "anthropic"

    def error_body(self, error: APIError) -> bytes:
        return json.dumps(anthropic.error_body(error.status, error.message)).encode()

    def error_event(self, error: APIError) -> bytes:
        return b"event: error\ndata: " + self.error_body(error) + b"\n\n"

    def translate(self, spec: ModelSpec, path: str, body: bytes,
                  requested: str) -> Translation | None:
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

    def whole(self, status: int, answer: bytes) -> tuple[int, bytes]:
        if status >= 400:
            return status, json.dumps(anthropic.from_openai_error(answer, status)).encode()
        try:
            message = anthropic.from_chat_response(_json_object(answer, status=502), self.model)
        except anthropic.DialectError as exc:
            raise APIError(exc.status, exc.message) from None
        return status, json.dumps(message).encode()

    def stream(self) -> Stream:
        return anthropic.MessagesStream(self.model)


class _CountTokens(Translation):
    """count_tokens on an upstream that only counts through its tokenizer (`/tokenize`, as
    llama-server and vLLM have)."""

    def __init__(self, body: bytes) -> None:
        super().__init__("/tokenize", body, False)

    def whole(self, status: int, answer: bytes) -> tuple[int, bytes]:
        if status in (404, 405):
            raise APIError(501, "This model's upstream has no tokenizer endpoint (/tokenize): "
                           "count_tokens is not available for it.", type="api_error",
                           code="not_implemented")
        if status >= 400:
            return status, json.dumps(anthropic.from_openai_error(answer, status)).encode()
        tokens = _json_object(answer, status=502).get("tokens")
        if not isinstance(tokens, list):
            raise APIError(502, "The upstream's /tokenize answer has no token list.",
                           type="api_error", code="upstream_error")
        return 200, json.dumps({"input_tokens": len(tokens)}).encode()

    def stream(self) -> Stream:
        raise APIError(502, "/tokenize answered with a stream.", code="upstream_error")


OPENAI = Dialect()
ANTHROPIC = AnthropicDialect()
_BY_PATH = {_MESSAGES: ANTHROPIC, _COUNT_TOKENS: ANTHROPIC}
# POST routes outside /v1/ that are inference, so the proxy (not FastAPI) serves them.
INFERENCE_PATHS: frozenset[str] = frozenset()


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
