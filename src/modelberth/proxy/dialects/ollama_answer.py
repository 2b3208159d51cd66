"""Ollama's whole (non-streamed) answers, built from an OpenAI answer: /api/chat,
/api/generate, /api/embed, /api/embeddings, the preload reply; and the pieces the stream
translator shares with them (`Timing`, the done line's metrics, tool calls, `created_at`)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

# OpenAI's finish_reason -> Ollama's done_reason. Ollama says "stop" after a tool call
# (its own OpenAI layer turns stop + tool calls back into "tool_calls").
_DONE_REASONS = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "stop",
    "function_call": "stop",
    "content_filter": "stop",
}


@dataclass
class Timing:
    """When things happened to one request, in time.perf_counter() seconds; the caller
    fills it in as the request goes. `ready`: the model was admitted (cold start and queue
    over); `first_token`: a stream's first byte from the upstream (leave it None for a whole
    answer, whose first byte comes at the end); `end`: the answer is complete
    (`ChatStream.finish` sets it; for a whole answer the caller does, else it is now)."""

    start: float
    ready: float | None = None
    first_token: float | None = None
    end: float | None = None


@dataclass
class Counts:
    """Token counts for the done line and for modelberth's accounting. `counted` is True
    when the upstream reported no usage and `completion_tokens` is the number of content
    deltas seen (about one token each)."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    counted: bool = False


def created_at(unix_ns: int | None = None) -> str:
    """Ollama's timestamp: UTC, RFC 3339 with up to nine fraction digits, trailing zeros
    dropped, as Go's time.RFC3339Nano prints it ("2024-07-22T20:33:28.123648Z")."""
    ns = time.time_ns() if unix_ns is None else unix_ns
    seconds, fraction = divmod(ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    digits = f"{fraction:09d}".rstrip("0")
    return f"{stamp}.{digits}Z" if digits else f"{stamp}Z"


def done_reason(finish_reason: Any) -> str:
    if not isinstance(finish_reason, str) or not finish_reason:
        return "stop"
    return _DONE_REASONS.get(finish_reason, finish_reason)


def counts_of(usage: Any, timings: Any) -> Counts:
    """OpenAI `usage` first (it counts the whole prompt), else llama.cpp's `timings`
    (whose prompt_n leaves out the tokens its prompt cache reused)."""
    counts = Counts()
    if isinstance(usage, dict):
        counts.prompt_tokens = _int(usage.get("prompt_tokens"))
        counts.completion_tokens = _int(usage.get("completion_tokens"))
    if isinstance(timings, dict):
        if counts.prompt_tokens is None:
            counts.prompt_tokens = _int(timings.get("prompt_n"))
        if counts.completion_tokens is None:
            counts.completion_tokens = _int(timings.get("predicted_n"))
    return counts


def metrics(timing: Timing, counts: Counts, timings: Any = None) -> dict[str, int]:
    """The done line's durations (nanoseconds) and counts. load_duration is the wait for
    the model (cold start and queue). The split between prompt and generation comes from
    llama.cpp's `timings` when the upstream sent them; else from the first token's time;
    without that (a whole answer) all of it counts as generation and prompt_eval_duration
    is 0, so a client's tokens/s reads a little low."""
    end = timing.end if timing.end is not None else time.perf_counter()
    ready = timing.ready if timing.ready is not None else timing.start
    prompt_ns = eval_ns = None
    if isinstance(timings, dict):
        prompt_ns = _ms_to_ns(timings.get("prompt_ms"))
        eval_ns = _ms_to_ns(timings.get("predicted_ms"))
    if prompt_ns is None or eval_ns is None:
        first = timing.first_token
        if first is None:
            prompt_ns, eval_ns = 0, _ns(end - ready)
        else:
            prompt_ns, eval_ns = _ns(first - ready), _ns(end - first)
    return {
        "total_duration": _ns(end - timing.start),
        "load_duration": _ns(ready - timing.start),
        "prompt_eval_count": counts.prompt_tokens or 0,
        "prompt_eval_duration": prompt_ns,
        "eval_count": counts.completion_tokens or 0,
        "eval_duration": eval_ns,
    }


def tool_calls(calls: Any) -> list[dict[str, Any]]:
    """OpenAI tool calls -> Ollama's: `arguments` is a JSON object, not a string. Arguments
    that are not valid JSON (a model's mistake) become {} rather than failing the answer."""
    out: list[dict[str, Any]] = []
    for position, call in enumerate(calls if isinstance(calls, list) else []):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            continue
        entry: dict[str, Any] = {
            "function": {
                "index": position,
                "name": str(function.get("name") or ""),
                "arguments": _arguments(function.get("arguments")),
            }
        }
        if isinstance(call.get("id"), str):
            entry["id"] = call["id"]
        out.append(entry)
    return out


def chat_response(chat: dict[str, Any], model: str, timing: Timing) -> dict[str, Any]:
    """A whole OpenAI chat completion -> /api/chat's answer (`model`: the name the client
    asked for)."""
    choice = _choice(chat)
    message = _message(choice)
    out: dict[str, Any] = {"role": "assistant", "content": _text(choice, message)}
    if thinking := reasoning_of(message):
        out["thinking"] = thinking
    if calls := tool_calls(message.get("tool_calls")):
        out["tool_calls"] = calls
    return _done(chat, model, timing, {"message": out}, choice)


def generate_response(chat: dict[str, Any], model: str, timing: Timing) -> dict[str, Any]:
    """A whole OpenAI chat (or text) completion -> /api/generate's answer."""
    choice = _choice(chat)
    message = _message(choice)
    out: dict[str, Any] = {"response": _text(choice, message)}
    if thinking := reasoning_of(message):
        out["thinking"] = thinking
    return _done(chat, model, timing, out, choice)


def preload_response(model: str, generate: bool = False, unload: bool = False) -> dict[str, Any]:
    """The answer to a request with nothing to generate (see `is_preload`): the model was
    loaded (done_reason "load"), or, with keep_alive 0, unloaded ("unload")."""
    body: dict[str, Any] = {"model": model, "created_at": created_at()}
    body.update({"response": ""} if generate else {"message": {"role": "assistant", "content": ""}})
    body.update(done=True, done_reason="unload" if unload else "load")
    return body


def embed_response(answer: dict[str, Any], model: str, timing: Timing) -> dict[str, Any]:
    """An OpenAI /v1/embeddings answer -> /api/embed's, vectors in input order."""
    counts = counts_of(answer.get("usage"), None)
    end = timing.end if timing.end is not None else time.perf_counter()
    ready = timing.ready if timing.ready is not None else timing.start
    return {
        "model": model,
        "embeddings": _vectors(answer),
        "total_duration": _ns(end - timing.start),
        "load_duration": _ns(ready - timing.start),
        "prompt_eval_count": counts.prompt_tokens or 0,
    }


def embeddings_response(answer: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI /v1/embeddings answer -> the legacy /api/embeddings' {"embedding": [...]}."""
    vectors = _vectors(answer)
    return {"embedding": vectors[0] if vectors else []}


def reasoning_of(part: dict[str, Any]) -> str:
    """The thinking text: llama.cpp and DeepSeek send `reasoning_content`, vLLM and
    OpenRouter `reasoning`."""
    value = part.get("reasoning_content") or part.get("reasoning")
    return value if isinstance(value, str) else ""


def _done(
    answer: dict[str, Any],
    model: str,
    timing: Timing,
    fields: dict[str, Any],
    choice: dict[str, Any],
) -> dict[str, Any]:
    timings = answer.get("timings")
    body: dict[str, Any] = {"model": model, "created_at": created_at(), **fields}
    logprobs = choice.get("logprobs")
    if isinstance(logprobs, dict) and isinstance(logprobs.get("content"), list):
        body["logprobs"] = logprobs["content"]  # OpenAI's and Ollama's entries match
    body.update(done=True, done_reason=done_reason(choice.get("finish_reason")))
    body.update(metrics(timing, counts_of(answer.get("usage"), timings), timings))
    return body


def _choice(answer: dict[str, Any]) -> dict[str, Any]:
    choices = answer.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return choices[0]
    return {}


def _message(choice: dict[str, Any]) -> dict[str, Any]:
    message = choice.get("message")
    return message if isinstance(message, dict) else {}


def _text(choice: dict[str, Any], message: dict[str, Any]) -> str:
    """A chat message's content, or a text completion's `text` (raw /api/generate)."""
    content = message.get("content") if message else choice.get("text")
    return content if isinstance(content, str) else ""


def _vectors(answer: dict[str, Any]) -> list[Any]:
    data = answer.get("data")
    items = [d for d in data if isinstance(d, dict)] if isinstance(data, list) else []
    items.sort(key=lambda d: d.get("index", 0) if isinstance(d.get("index"), int) else 0)
    return [d.get("embedding") for d in items]


def _arguments(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and value.strip():
        try:
            parsed = json.loads(value)
        except ValueError:
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return {}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _ms_to_ns(value: Any) -> int | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return max(0, round(value * 1_000_000))
    return None


def _ns(seconds: float) -> int:
    return max(0, round(seconds * 1_000_000_000))
