"""Ollama's REST API spoken in front of OpenAI-speaking upstreams: pure translation (no
I/O), for Ollama's clients (Open WebUI, Continue, the `ollama` SDK). This module is the one
to import: it holds the errors and re-exports the requests (ollama_request.py), the answers
(ollama_answer.py), the stream (ollama_stream.py) and the catalog (ollama_catalog.py).

Requests (bodies are the client's parsed JSON; a malformed one raises APIError 400, to be
answered with `error_body(error.message)`; each result's "model" is the name as the client
sent it, for the caller to replace with the one `resolve_name` finds):

- POST /api/chat: `chat_request(body)` -> an OpenAI body for CHAT_PATH.
- POST /api/generate: `generate_request(body)` -> an OpenAI body for
  `generate_path(body)` (chat completions, or text completions for `raw`).
- POST /api/embed: `embed_request(body)`; POST /api/embeddings (legacy):
  `embeddings_request(body)` -> an OpenAI body for EMBED_PATH.
- `is_preload(body)`: nothing to generate (no messages, an empty prompt or input): Ollama
  only loads the model, or unloads it when keep_alive is 0; answer with
  `preload_response(model, generate, unload)` (for /api/embed: {"model", "embeddings": []}).
- `keep_alive_seconds(body.get("keep_alive"))`: how long to keep the model loaded after
  this request; not translated, it is the caller's to act on (or ignore).
- `stream_wanted(body)`: Ollama streams unless told `"stream": false`.

Answers (`timing`: a `Timing` the caller fills with perf_counter() times):

- `chat_response(openai_answer, model, timing)`, `generate_response(...)`: the whole answer.
- `ChatStream(model, timing, generate=False)`: `.feed(upstream_bytes) -> ndjson_bytes`,
  `.finish(perf_counter()) -> the last lines`; `.usage` (a `Counts`); `.error`. Answer with
  content-type application/x-ndjson.
- `embed_response(answer, model, timing)`, `embeddings_response(answer)`.
- `error_body(message)` -> {"error": message}, Ollama's error shape (the SDK raises
  ResponseError with it); `openai_error(body)` turns an upstream's OpenAI error into it;
  `management_error(route)` for /api/pull, push, delete, create and copy (MANAGEMENT_ROUTES).

Catalog: `tags(models)`, `ps(models)`, `show(model)`, `version()`, `resolve_name(requested,
known_names)`; see ollama_catalog.py for the model dicts they take.

What is translated and what is not:

- messages: images (base64) -> image_url data URLs; an assistant's tool_calls (arguments
  an object) -> OpenAI's (arguments a JSON string, ids made up when missing: call_0, call_1,
  ...); a "tool" message -> tool_call_id (its own, else the id of the earlier call with the
  same tool_name, else the next unanswered call); an assistant's `thinking` ->
  `reasoning_content` (llama.cpp reads it back into templates that keep it).
- `format`: "json" -> response_format json_object; a JSON schema -> json_schema.
- `options`: temperature, top_p, seed, stop, frequency_penalty and presence_penalty are
  OpenAI's; top_k, min_p, typical_p, repeat_penalty, repeat_last_n and mirostat* keep their
  names, which llama.cpp's server reads (OpenAI proper would reject them, but the upstreams
  here are local servers); num_predict -> max_tokens (0, -1 "no limit" and -2 "fill the
  context" -> none). Load-time options (num_ctx, num_gpu, num_thread, num_batch, main_gpu,
  use_mmap, numa, ...) are ignored: they belong to the upstream's command line in
  modelberth's config. So are num_keep, penalize_newline, tfs_z and unknown options, as
  Ollama ignores unknown ones.
- `think`: true/false -> chat_template_kwargs.enable_thinking (llama.cpp, vLLM and SGLang
  pass it to templates such as Qwen3's); "low"/"medium"/"high" -> reasoning_effort
  (gpt-oss), "max" -> "high". The answer's reasoning_content (or reasoning) becomes
  `thinking` either way.
- `logprobs`, `top_logprobs`: passed on; the answer's logprobs come back per line.
- /api/generate: `system` and `prompt` (and `images`) become two messages. `raw` sends the
  prompt untouched to text completions, as does `suffix` (OpenAI's legacy `suffix` field,
  for fill-in-the-middle; upstreams that ignore it just continue the prompt). `template`
  (a Go template) and `context` (Ollama's token memory) cannot be honoured and are ignored;
  the answer carries no `context`.
- /api/embed: `truncate` is not translated (the upstream truncates or fails as it does);
  `dimensions` is OpenAI's too.
- `keep_alive`, `truncate`, `shift` and Ollama's image-generation fields are not sent on.
"""

from __future__ import annotations

from typing import Any

from modelberth.proxy.dialects.ollama_answer import (
    Counts,
    Timing,
    chat_response,
    created_at,
    embed_response,
    embeddings_response,
    generate_response,
    preload_response,
)
from modelberth.proxy.dialects.ollama_catalog import VERSION, ps, resolve_name, show, tags, version
from modelberth.proxy.dialects.ollama_request import (
    CHAT_PATH,
    COMPLETIONS_PATH,
    EMBED_PATH,
    chat_request,
    embed_request,
    embeddings_request,
    generate_path,
    generate_request,
    is_preload,
    keep_alive_seconds,
    stream_wanted,
)
from modelberth.proxy.dialects.ollama_stream import ChatStream

__all__ = [
    "CHAT_PATH",
    "COMPLETIONS_PATH",
    "EMBED_PATH",
    "MANAGEMENT_ROUTES",
    "VERSION",
    "ChatStream",
    "Counts",
    "Timing",
    "chat_request",
    "chat_response",
    "created_at",
    "embed_request",
    "embed_response",
    "embeddings_request",
    "embeddings_response",
    "error_body",
    "generate_path",
    "generate_request",
    "generate_response",
    "is_preload",
    "keep_alive_seconds",
    "management_error",
    "openai_error",
    "preload_response",
    "ps",
    "resolve_name",
    "show",
    "stream_wanted",
    "tags",
    "version",
]

MANAGEMENT_ROUTES = ("/api/pull", "/api/push", "/api/delete", "/api/create", "/api/copy")


def error_body(message: str) -> dict[str, str]:
    """Ollama's error shape."""
    return {"error": message}


def openai_error(body: Any) -> dict[str, str]:
    """An upstream's (or modelberth's) OpenAI error body -> Ollama's."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error_body(error["message"])
    return error_body(error if isinstance(error, str) and error else "upstream error")


def management_error(route: str) -> dict[str, str]:
    """For /api/pull, /api/push, /api/delete, /api/create and /api/copy (answer 501)."""
    return error_body(
        f"{route} is not supported: models come from modelberth's config file; "
        "add or change them there, then reload (`modelberth reload`, SIGHUP "
        "or POST /api/reload)."
    )
