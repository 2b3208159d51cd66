"""Ollama's requests translated to OpenAI's: /api/chat, /api/generate, /api/embed and
/api/embeddings; and what the caller reads from a request itself (preload, stream,
keep_alive). What is and is not translated is listed in ollama.py."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from modelberth.errors import APIError

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
EMBED_PATH = "/v1/embeddings"

_SAME_OPTIONS = (
    "temperature",
    "top_p",
    "seed",
    "frequency_penalty",
    "presence_penalty",
    "top_k",
    "min_p",
    "typical_p",
    "repeat_penalty",
    "repeat_last_n",
    "mirostat",
    "mirostat_tau",
    "mirostat_eta",
)
# think levels -> OpenAI's reasoning_effort; Ollama's "max" has no OpenAI word above "high"
# that gpt-oss (the model these levels are for) knows.
_EFFORTS = {"low": "low", "medium": "medium", "high": "high", "max": "high"}
# Go's time.ParseDuration units, which Ollama's keep_alive strings use.
_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
# The first bytes of an image, base64-encoded -> its type, for the data URL.
_IMAGE_TYPES = (
    ("iVBORw0KGgo", "image/png"),
    ("/9j/", "image/jpeg"),
    ("R0lGOD", "image/gif"),
    ("UklGR", "image/webp"),
    ("Qk", "image/bmp"),
)


def chat_request(body: Any) -> dict[str, Any]:
    """POST /api/chat -> an OpenAI chat completion request."""
    body = _object(body)
    messages = body.get("messages")
    if messages is None:
        messages = []
    if not isinstance(messages, list):
        raise _bad("'messages' must be a list of message objects.")
    out: dict[str, Any] = {"model": body.get("model"), "messages": _messages(messages)}
    tools = body.get("tools")
    if tools:
        if not isinstance(tools, list):
            raise _bad("'tools' must be a list.")
        out["tools"] = [
            {**tool, "type": tool.get("type") or "function"} if isinstance(tool, dict) else tool
            for tool in tools
        ]
    return _common(body, out)


def generate_request(body: Any) -> dict[str, Any]:
    """POST /api/generate -> an OpenAI request for `generate_path(body)`: a chat request
    (system and prompt as messages), or a text completion request for `raw` and `suffix`."""
    body = _object(body)
    prompt = _string(body, "prompt")
    if generate_path(body) == COMPLETIONS_PATH:
        out: dict[str, Any] = {"model": body.get("model"), "prompt": prompt}
        if body.get("suffix"):
            out["suffix"] = _string(body, "suffix")
        return _common(body, out, chat=False)
    messages: list[dict[str, Any]] = []
    if system := _string(body, "system"):
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": _content(prompt, body.get("images"))})
    return _common(body, {"model": body.get("model"), "messages": messages})


def generate_path(body: Any) -> str:
    """Where generate_request's body goes: a raw prompt is already templated, so it must
    not be wrapped in the chat template again."""
    body = _object(body)
    return COMPLETIONS_PATH if body.get("raw") is True or body.get("suffix") else CHAT_PATH


def embed_request(body: Any) -> dict[str, Any]:
    """POST /api/embed -> an OpenAI embeddings request."""
    body = _object(body)
    given = body.get("input")
    if not (
        isinstance(given, str)
        or (isinstance(given, list) and all(isinstance(item, str) for item in given))
    ):
        raise _bad("'input' must be a string or a list of strings.")
    out: dict[str, Any] = {"model": body.get("model"), "input": given, "encoding_format": "float"}
    dimensions = body.get("dimensions")
    if dimensions:
        if not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 0:
            raise _bad("'dimensions' must be a positive integer.")
        out["dimensions"] = dimensions
    return out


def embeddings_request(body: Any) -> dict[str, Any]:
    """POST /api/embeddings (legacy, one `prompt`) -> an OpenAI embeddings request."""
    body = _object(body)
    return {
        "model": body.get("model"),
        "input": _string(body, "prompt"),
        "encoding_format": "float",
    }


def is_preload(body: Any) -> bool:
    """True when the request asks for nothing but the model (Ollama's way to load it, or
    to unload it with keep_alive 0): /api/chat without messages, /api/generate or
    /api/embeddings with an empty prompt, /api/embed with an empty input."""
    body = _object(body)
    if "input" in body:
        return body["input"] in ("", [], None)
    if "messages" in body:
        return not body["messages"]
    return not body.get("prompt")


def stream_wanted(body: Any) -> bool:
    """Ollama streams unless the body says `"stream": false`."""
    return _object(body).get("stream") is not False


def keep_alive_seconds(value: Any) -> float | None:
    """Ollama's keep_alive, in seconds: None when absent (the server's default applies),
    0 to unload now, math.inf to keep it loaded for ever (any negative value). A number is
    seconds; a string is a Go duration ("5m", "1h30m", "300ms"), or a number of seconds
    ("3600", "-1": clients send those too).

    >>> keep_alive_seconds("5m"), keep_alive_seconds("1h30m"), keep_alive_seconds("300ms")
    (300.0, 5400.0, 0.3)
    >>> keep_alive_seconds("3600"), keep_alive_seconds(0), keep_alive_seconds(None)
    (3600.0, 0.0, None)
    >>> keep_alive_seconds("-1"), keep_alive_seconds(-1)
    (inf, inf)
    >>> keep_alive_seconds("soon")
    Traceback (most recent call last):
      ...
    modelberth.errors.APIError: 'keep_alive' 'soon' is not a duration such as "5m", "1h" or "30s".
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise _bad("'keep_alive' must be a duration such as \"5m\" or a number of seconds.")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _duration(value.strip())
    else:
        raise _bad("'keep_alive' must be a duration such as \"5m\" or a number of seconds.")
    if math.isnan(seconds):
        raise _bad("'keep_alive' is not a number.")
    return math.inf if seconds < 0 else seconds


def _common(body: dict[str, Any], out: dict[str, Any], chat: bool = True) -> dict[str, Any]:
    """What chat and generate share: stream, format, options; and for chat requests,
    think and logprobs (a text completion's logprobs and its lack of templates differ)."""
    stream = stream_wanted(body)
    out["stream"] = stream
    if stream:
        out["stream_options"] = {"include_usage": True}  # for the done line's counts
    if (response_format := _format(body.get("format"))) is not None:
        out["response_format"] = response_format
    out.update(_options(body.get("options")))
    if not chat:
        return out
    think = body.get("think")
    if isinstance(think, bool):
        out["chat_template_kwargs"] = {"enable_thinking": think}
    elif isinstance(think, str) and think in _EFFORTS:
        out["reasoning_effort"] = _EFFORTS[think]
    elif think is not None:
        raise _bad('\'think\' must be true, false, "low", "medium", "high" or "max".')
    if body.get("logprobs") is True:
        out["logprobs"] = True
        if isinstance(body.get("top_logprobs"), int) and body["top_logprobs"] > 0:
            out["top_logprobs"] = body["top_logprobs"]
    return out


def _format(value: Any) -> dict[str, Any] | None:
    if value is None or value == "":
        return None
    if value == "json":
        return {"type": "json_object"}
    if isinstance(value, dict):
        return {"type": "json_schema", "json_schema": {"name": "response", "schema": value}}
    raise _bad("'format' must be \"json\" or a JSON schema object.")


def _options(options: Any) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise _bad("'options' must be an object.")
    out: dict[str, Any] = {}
    for key in _SAME_OPTIONS:
        value = options.get(key)
        if value is None:
            continue
        if not _number(value):
            raise _bad(f"option '{key}' must be a number.")
        out[key] = value
    predict = options.get("num_predict")
    if predict is not None:
        if not _number(predict):
            raise _bad("option 'num_predict' must be a number.")
        if predict > 0:
            out["max_tokens"] = int(predict)
    stop = options.get("stop")
    if isinstance(stop, str):
        out["stop"] = [stop]
    elif isinstance(stop, list) and stop:
        if not all(isinstance(s, str) for s in stop):
            raise _bad("option 'stop' must be a list of strings.")
        out["stop"] = stop
    return out


def _messages(messages: list[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    unanswered: list[tuple[str, str]] = []  # (id, name) of the tool calls not yet answered
    made_up = 0
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise _bad("each message must be an object with a string 'role'.")
        role = message["role"]
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            raise _bad("a message's 'content' must be a string.")
        entry: dict[str, Any] = {
            "role": role,
            "content": _content(content or "", message.get("images")),
        }
        if role == "assistant":
            if isinstance(message.get("thinking"), str) and message["thinking"]:
                entry["reasoning_content"] = message["thinking"]
            calls = []
            for call in message.get("tool_calls") or []:
                function = call.get("function") if isinstance(call, dict) else None
                if not isinstance(function, dict):
                    raise _bad("a tool call must be an object with a 'function'.")
                call_id = call.get("id") if isinstance(call.get("id"), str) else None
                if not call_id:
                    call_id, made_up = f"call_{made_up}", made_up + 1
                name = str(function.get("name") or "")
                arguments = function.get("arguments")
                calls.append(
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {
                            "name": name,
                            "arguments": arguments
                            if isinstance(arguments, str)
                            else json.dumps(arguments if arguments is not None else {}),
                        },
                    }
                )
                unanswered.append((call_id, name))
            if calls:
                entry["tool_calls"] = calls
        elif role == "tool" and (call_id := _answered(message, unanswered)):
            entry["tool_call_id"] = call_id
        out.append(entry)
    return out


def _answered(message: dict[str, Any], unanswered: list[tuple[str, str]]) -> str | None:
    """The id of the call a tool message answers: its own tool_call_id, else the first
    unanswered call of its tool_name, else the first unanswered call."""
    given = message.get("tool_call_id")
    if isinstance(given, str) and given:
        unanswered[:] = [call for call in unanswered if call[0] != given]
        return given
    name = message.get("tool_name")
    for position, (call_id, call_name) in enumerate(unanswered):
        if call_name == name:
            del unanswered[position]
            return call_id
    return unanswered.pop(0)[0] if unanswered else None


def _content(text: str, images: Any) -> str | list[dict[str, Any]]:
    """Text alone, or OpenAI's content parts when there are images."""
    if not images:
        return text
    if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
        raise _bad("'images' must be a list of base64-encoded strings.")
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    parts += [{"type": "image_url", "image_url": {"url": _data_url(i)}} for i in images]
    return parts


def _data_url(image: str) -> str:
    if image.startswith("data:"):
        return image
    kind = next((t for prefix, t in _IMAGE_TYPES if image.startswith(prefix)), "image/jpeg")
    return f"data:{kind};base64,{image}"


def _duration(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    sign, rest = (-1.0, text[1:]) if text.startswith("-") else (1.0, text.removeprefix("+"))
    if rest and _DURATION.sub("", rest) == "":
        return sign * sum(float(n) * _UNITS[u] for n, u in _DURATION.findall(rest))
    raise _bad(f'\'keep_alive\' {text!r} is not a duration such as "5m", "1h" or "30s".')


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _bad("The request body must be a JSON object.")
    return body


def _string(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _bad(f"'{key}' must be a string.")
    return value


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _bad(message: str) -> APIError:
    return APIError(400, message, code="invalid_body")
