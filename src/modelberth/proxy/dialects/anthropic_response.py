"""An OpenAI chat completion as an Anthropic `message`, and what the stream translator shares
with it: stop reasons, usage, ids, tool input. See anthropic.py for the mapping."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modelberth.proxy.dialects.anthropic_errors import DialectError

_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


@dataclass
class Usage:
    """Token counts an upstream reported, in OpenAI's terms: `input_tokens` is the whole
    prompt (OpenAI's prompt_tokens, cached tokens included), as modelberth's accounting
    counts it. None: not reported (yet)."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_tokens: int | None = None

    def update(self, doc: Mapping[str, Any]) -> None:
        """Take what an answer (or a stream chunk) reports: OpenAI's `usage`, or llama.cpp's
        `timings` for what `usage` leaves out. Counts are cumulative: later ones win."""
        usage = _mapping(doc.get("usage"))
        timings = _mapping(doc.get("timings"))
        # llama.cpp's timings: prompt_n is what it evaluated, cache_n what it reused.
        reused = _count(timings.get("cache_n"))
        prompt = _count(usage.get("prompt_tokens"))
        evaluated = _count(timings.get("prompt_n"))
        if prompt is None and evaluated is not None:
            prompt = evaluated + (reused or 0)
        completion = _count(usage.get("completion_tokens"))
        if completion is None:
            completion = _count(timings.get("predicted_n"))
        cached = _count(_mapping(usage.get("prompt_tokens_details")).get("cached_tokens"))
        if cached is None:
            cached = reused
        self.input_tokens = self.input_tokens if prompt is None else prompt
        self.output_tokens = self.output_tokens if completion is None else completion
        self.cached_tokens = self.cached_tokens if cached is None else cached

    def anthropic(self, output_estimate: int = 0) -> dict[str, int]:
        """Anthropic's `usage`, whose input_tokens leave out the cache reads (its total input
        is input + cache_read + cache_creation). Nothing is written to a cache on request
        here, so cache_creation_input_tokens is 0."""
        cached = self.cached_tokens or 0
        return {
            "input_tokens": max((self.input_tokens or 0) - cached, 0),
            "output_tokens": self.output_tokens
            if self.output_tokens is not None
            else output_estimate,
            "cache_read_input_tokens": cached,
            "cache_creation_input_tokens": 0,
        }


def from_chat_response(chat: Mapping[str, Any], model: str) -> dict[str, Any]:
    choices = chat.get("choices") if isinstance(chat, Mapping) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        raise DialectError(502, "api_error", "The upstream's answer has no choices.")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, Mapping):
        raise DialectError(502, "api_error", "The upstream's answer has no message.")
    msg_id = message_id(chat.get("id"))
    content: list[dict[str, Any]] = []
    reasoning = reasoning_of(message)
    if reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = _text(message.get("content"))
    if text:
        content.append({"type": "text", "text": text})
    calls = message.get("tool_calls")
    for i, call in enumerate(calls if isinstance(calls, list) else ()):
        function = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(function, Mapping):
            continue
        content.append(
            {
                "type": "tool_use",
                "id": tool_use_id(call.get("id"), msg_id, i),
                "name": str(function.get("name") or ""),
                "input": tool_input(function.get("arguments")),
            }
        )
    reason, sequence = stop_reason(choice, any(b["type"] == "tool_use" for b in content))
    usage = Usage()
    usage.update(chat)
    return {
        "id": msg_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage.anthropic(),
    }


def stop_reason(choice: Mapping[str, Any], used_tools: bool) -> tuple[str, str | None]:
    """Anthropic's stop_reason and stop_sequence for an OpenAI choice's finish_reason.

    A stop on a stop sequence is `stop_sequence` only when the upstream says which one: vLLM
    puts the string in the choice's `stop_reason`. llama.cpp and OpenAI answer plain "stop",
    which reads as end_turn. A "stop" with tool calls is `tool_use` (some servers say so),
    since Anthropic's clients run the tools only on that."""
    finish = choice.get("finish_reason")
    if finish == "stop":
        matched = choice.get("stop_reason")
        if isinstance(matched, str) and matched:
            return "stop_sequence", matched
    reason = _STOP_REASONS.get(finish, "end_turn") if isinstance(finish, str) else "end_turn"
    if used_tools and reason == "end_turn":
        reason = "tool_use"
    return reason, None


def tool_input(arguments: Any) -> dict[str, Any]:
    """A tool call's arguments as Anthropic's `input` object. Arguments that are not a JSON
    object (a model's malformed output) come as {"_raw": the text}: the client's tool then
    rejects its input and the model sees why, instead of the whole answer failing."""
    if isinstance(arguments, Mapping):  # Ollama and some others send the object itself
        return dict(arguments)
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
    except (ValueError, RecursionError):
        parsed = None
    return parsed if isinstance(parsed, dict) else {"_raw": str(arguments)}


def message_id(chat_id: Any) -> str:
    """`msg_` and the upstream's completion id (without its `chatcmpl-`), so both sides'
    logs can be matched; a fresh one if the upstream gave none."""
    if isinstance(chat_id, str) and chat_id:
        return "msg_" + chat_id.removeprefix("chatcmpl-")
    return "msg_" + uuid.uuid4().hex


def tool_use_id(call_id: Any, msg_id: str, index: int) -> str:
    if isinstance(call_id, str) and call_id:
        return call_id
    return f"toolu_{msg_id.removeprefix('msg_')}_{index}"


def reasoning_of(message: Mapping[str, Any]) -> str:
    """The reasoning text: llama.cpp and DeepSeek say `reasoning_content`, vLLM `reasoning`."""
    for key in ("reasoning_content", "reasoning"):
        value = message.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # some servers answer with content parts
        return "".join(
            part.get("text", "")
            for part in content
            if isinstance(part, Mapping) and isinstance(part.get("text"), str)
        )
    return ""


def _count(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}
