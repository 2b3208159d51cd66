"""An Anthropic Messages request as an OpenAI chat completions request, and the text to count
for /v1/messages/count_tokens. See anthropic.py for the mapping."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from modelberth.proxy.dialects.anthropic_errors import invalid

_JOIN = "\n\n"  # between the text blocks of one message: a paragraph break reads naturally
_SAMPLING = ("temperature", "top_p", "top_k")
_TOOL_CHOICE = {"auto": "auto", "any": "required", "none": "none"}
_USER_BLOCKS = frozenset({"text", "image", "document", "tool_result"})
_ASSISTANT_BLOCKS = frozenset({"text", "tool_use", "thinking", "redacted_thinking"})


def to_chat_request(body: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(body, Mapping):
        raise invalid("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("model: Field required (a string).")
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise invalid("max_tokens: Field required.")
    if not _is_int(max_tokens) or max_tokens < 1:
        raise invalid("max_tokens: Input should be an integer greater than 0.")
    chat: dict[str, Any] = {
        "model": model,
        "messages": chat_messages(body),
        "max_tokens": max_tokens,
    }
    for name in _SAMPLING:
        value = body.get(name)
        if value is not None:
            if not _is_number(value) or (name == "top_k" and not _is_int(value)):
                raise invalid(f"{name}: Input should be a number.")
            chat[name] = value
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise invalid("stop_sequences: Input should be a list of strings.")
        if stops:
            chat["stop"] = stops
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise invalid("stream: Input should be a valid boolean.")
    if stream:
        # Without include_usage an OpenAI stream never says how many tokens it took.
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise invalid("tools: Input should be a valid list.")
        if tools:
            chat["tools"] = [_tool(tool, f"tools.{i}") for i, tool in enumerate(tools)]
    choice = body.get("tool_choice")
    if choice is not None:
        chat.update(_tool_choice(choice))
    return chat


def chat_messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """`system` and `messages` as OpenAI chat messages."""
    out: list[dict[str, Any]] = []
    system = body.get("system")
    if system is not None:
        text = _system_text(system)
        if text:
            out.append({"role": "system", "content": text})
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise invalid("messages: Input should be a valid list.")
    for i, message in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(message, Mapping):
            raise invalid(f"{where}: Input should be an object.")
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise invalid(f"{where}.role: Input should be 'user' or 'assistant'.")
        blocks = _blocks(
            message.get("content"),
            f"{where}.content",
            _USER_BLOCKS if role == "user" else _ASSISTANT_BLOCKS,
        )
        out += _user(blocks, where) if role == "user" else [_assistant(blocks, where)]
    return out


def count_tokens_request(body: Mapping[str, Any]) -> str:
    """The text to send to a `/tokenize` endpoint for /v1/messages/count_tokens: the tools
    (as JSON), then the system prompt and each message (text, tool calls, tool results) in
    order, each after its role.

    An approximation: without the model's chat template the role markers and special tokens
    are not counted, nor are images. For llama-server, `POST /apply-template` with the
    `messages` of `to_chat_request` renders the real prompt, whose `/tokenize` is exact."""
    if not isinstance(body, Mapping):
        raise invalid("The request body must be a JSON object.")
    lines = []
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        lines.append(json.dumps([_tool(t, f"tools.{i}") for i, t in enumerate(tools)]))
    for message in chat_messages(body):
        content = message.get("content")
        if isinstance(content, list):
            content = _JOIN.join(p["text"] for p in content if p.get("type") == "text")
        line = f"{message['role']}: {content or ''}"
        for call in message.get("tool_calls", ()):
            line += f"\n{call['function']['name']}({call['function']['arguments']})"
        lines.append(line)
    return "\n".join(lines)


def _system_text(system: Any) -> str:
    if isinstance(system, str):
        return system
    blocks = _blocks(system, "system", frozenset({"text"}))
    return _JOIN.join(block["text"] for block in blocks)


def _blocks(content: Any, where: str, allowed: frozenset[str]) -> list[Mapping[str, Any]]:
    """Content as a list of checked blocks (a string is one text block)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise invalid(f"{where}: Input should be a string or a list of content blocks.")
    for j, block in enumerate(content):
        if not isinstance(block, Mapping):
            raise invalid(f"{where}.{j}: Input should be an object.")
        kind = block.get("type")
        if kind not in allowed:
            raise invalid(
                f"{where}.{j}.type: {kind!r} blocks are not supported here "
                f"(supported: {', '.join(sorted(allowed))})."
            )
        if kind == "text" and not isinstance(block.get("text"), str):
            raise invalid(f"{where}.{j}.text: Field required (a string).")
    return content


def _user(blocks: list[Mapping[str, Any]], where: str) -> list[dict[str, Any]]:
    """A user turn: its tool results become `tool` messages, first, since OpenAI wants them
    right after the assistant message that made the calls; then one user message with the
    rest (and any images the tool results held: a `tool` message takes only text)."""
    tools: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        kind = block["type"]
        if kind == "tool_result":
            message, images = _tool_result(block, f"{where}.content.{j}")
            tools.append(message)
            parts += images
        elif kind == "image":
            parts.append(_image(block, f"{where}.content.{j}"))
        elif kind == "document":
            parts.append(_document(block, f"{where}.content.{j}"))
        else:
            parts.append({"type": "text", "text": block["text"]})
    if parts or not tools:
        tools.append({"role": "user", "content": _content(parts)})
    return tools


def _assistant(blocks: list[Mapping[str, Any]], where: str) -> dict[str, Any]:
    """An assistant turn: its text, and its tool_use blocks as tool_calls. Thinking blocks
    are dropped: Anthropic's own API does not show earlier turns' thinking to the model
    either, and OpenAI has no standard field for them."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        if block["type"] == "text":
            texts.append(block["text"])
        elif block["type"] == "tool_use":
            calls.append(_tool_call(block, f"{where}.content.{j}"))
    message: dict[str, Any] = {"role": "assistant", "content": _JOIN.join(texts)}
    if calls:
        message["tool_calls"] = calls
        if not texts:
            message["content"] = None
    return message


def _tool_call(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    call_id, name, arguments = block.get("id"), block.get("name"), block.get("input", {})
    if not isinstance(call_id, str) or not isinstance(name, str):
        raise invalid(f"{where}: a tool_use block needs a string id and name.")
    if not isinstance(arguments, Mapping):
        raise invalid(f"{where}.input: Input should be an object.")
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)},
    }


def _tool_result(
    block: Mapping[str, Any], where: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A tool message, and the images the result held. OpenAI has no `is_error`: the text
    says it instead, so the model still learns the call failed."""
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str):
        raise invalid(f"{where}.tool_use_id: Field required (a string).")
    content = block.get("content")
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    if content is not None:
        for k, part in enumerate(
            _blocks(content, f"{where}.content", frozenset({"text", "image", "document"}))
        ):
            if part["type"] == "image":
                images.append(_image(part, f"{where}.content.{k}"))
            else:
                texts.append(
                    _document(part, f"{where}.content.{k}")["text"]
                    if part["type"] == "document"
                    else part["text"]
                )
    text = _JOIN.join(texts)
    if block.get("is_error"):
        text = f"Error: {text}" if text else "Error"
    return {"role": "tool", "tool_call_id": call_id, "content": text}, images


def _image(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    if isinstance(source, Mapping):
        if source.get("type") == "base64":
            media, data = source.get("media_type"), source.get("data")
            if isinstance(media, str) and isinstance(data, str):
                return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}}
        elif source.get("type") == "url" and isinstance(source.get("url"), str):
            return {"type": "image_url", "image_url": {"url": source["url"]}}
    raise invalid(
        f"{where}.source: an image needs a base64 source (media_type, data) or a "
        "url source; file sources are not supported."
    )


def _document(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A plain-text document is its text; PDFs and files need Anthropic's own servers."""
    source = block.get("source")
    if (
        isinstance(source, Mapping)
        and source.get("type") == "text"
        and isinstance(source.get("data"), str)
    ):
        title = block.get("title")
        text = (
            f"{title}\n\n{source['data']}" if isinstance(title, str) and title else source["data"]
        )
        return {"type": "text", "text": text}
    raise invalid(f"{where}.source: only plain-text documents are supported.")


def _content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Text alone as one string (what every OpenAI-compatible server takes), else parts."""
    if all(part["type"] == "text" for part in parts):
        return _JOIN.join(part["text"] for part in parts)
    return parts


def _tool(tool: Any, where: str) -> dict[str, Any]:
    if not isinstance(tool, Mapping):
        raise invalid(f"{where}: Input should be an object.")
    kind = tool.get("type")
    if kind not in (None, "custom"):
        raise invalid(
            f"{where}.type: Anthropic's server tool {kind!r} is not available on "
            "this model; only custom tools (with an input_schema) are."
        )
    name, schema = tool.get("name"), tool.get("input_schema")
    if not isinstance(name, str) or not isinstance(schema, Mapping):
        raise invalid(f"{where}: a tool needs a string name and an input_schema object.")
    function: dict[str, Any] = {"name": name, "parameters": dict(schema)}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _tool_choice(choice: Any) -> dict[str, Any]:
    if not isinstance(choice, Mapping):
        raise invalid("tool_choice: Input should be an object.")
    kind = choice.get("type")
    out: dict[str, Any]
    if kind in _TOOL_CHOICE:
        out = {"tool_choice": _TOOL_CHOICE[kind]}
    elif kind == "tool" and isinstance(choice.get("name"), str):
        out = {"tool_choice": {"type": "function", "function": {"name": choice["name"]}}}
    else:
        raise invalid("tool_choice: type should be 'auto', 'any', 'tool' (with a name) or 'none'.")
    if choice.get("disable_parallel_tool_use") is True and kind != "none":
        out["parallel_tool_calls"] = False
    return out


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
