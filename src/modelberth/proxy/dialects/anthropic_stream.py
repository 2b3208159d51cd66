"""An OpenAI chat completions SSE stream, as it arrives (cut anywhere), translated into an
Anthropic Messages SSE stream. See anthropic.py for the event sequence."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from modelberth.proxy.dialects.anthropic_errors import error_body, error_message, status_of
from modelberth.proxy.dialects.anthropic_response import (
    Usage,
    message_id,
    reasoning_of,
    stop_reason,
    tool_use_id,
)

PING = b'event: ping\ndata: {"type":"ping"}\n\n'


def sse(event: Mapping[str, Any]) -> bytes:
    """One Anthropic SSE event: its `type` is also the SSE event name, which the SDKs need."""
    data = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
    return f"event: {event['type']}\ndata: {data}\n\n".encode()


@dataclass
class _ToolCall:
    """One streamed OpenAI tool call: its block opens once its name is known."""

    id: str | None = None
    name: str | None = None
    block: int | None = None
    pending: list[str] = field(default_factory=list)  # arguments before the block opened


class MessagesStream:
    """Translates one upstream stream: `feed` it the upstream's bytes as they come and send
    what it returns; at the upstream's end, send `finish()`. `usage` holds the token counts
    the upstream reported (OpenAI's meaning: input includes cached tokens)."""

    def __init__(self, model: str, input_tokens: int = 0) -> None:
        self.model = model  # the name the client asked for, as Anthropic echoes it
        self.usage = Usage()
        self._input_estimate = input_tokens  # for message_start, before the upstream says
        self._raw = b""  # bytes not yet split into lines (a trailing CR may start a CRLF)
        self._buffer = b""  # normalized lines not yet ending in a blank line
        self._out: list[bytes] = []
        self._id: str | None = None  # set once message_start went out
        self._open: int | None = None  # the index of the open content block
        self._open_kind = ""  # its type: text, thinking or tool_use
        self._blocks = 0  # content blocks started so far
        self._tools: dict[int, _ToolCall] = {}
        self._finish: dict[str, Any] | None = None  # the choice that carried finish_reason
        self._deltas = 0  # chunks that carried content: ~tokens, if usage never comes
        self._ended = False

    def feed(self, chunk: bytes) -> bytes:
        if self._ended or not chunk:
            return b""
        raw = self._raw + chunk
        cut = len(raw) - 1 if raw.endswith(b"\r") else len(raw)
        self._raw = raw[cut:]
        self._buffer += raw[:cut].replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        while not self._ended:
            end = self._buffer.find(b"\n\n")
            if end < 0:
                break
            event, self._buffer = self._buffer[:end], self._buffer[end + 2 :]
            self._event(event)
        return self._flush()

    def finish(self) -> bytes:
        """The end of the stream, for an upstream that ended without `data: [DONE]`: closes
        what is open and ends the message (with the finish reason seen, else end_turn). A
        stream already ended (by [DONE], an error or an earlier finish) gets nothing more."""
        if not self._ended:
            self._event(self._buffer + self._raw)  # a last event without its blank line
            self._end()
        return self._flush()

    def error(self, status: int, message: str) -> bytes:
        """The `error` event that ends the stream, for a failure the caller saw itself (the
        upstream gone, a timeout): Anthropic's clients raise it as an API error."""
        self._fail(status, message)
        return self._flush()

    def _fail(self, status: int, message: str) -> None:
        if not self._ended:
            self._ended = True
            self._out.append(sse(error_body(status, message)))

    def _flush(self) -> bytes:
        out, self._out = b"".join(self._out), []
        return out

    def _event(self, event: bytes) -> None:
        """One SSE event of the upstream: its `data` lines, and whether it is an error
        (`event: error`, as modelberth sends, or llama.cpp's `error:` field)."""
        name, data = "", []
        for line in event.decode("utf-8", "replace").split("\n"):
            if not line or line.startswith(":"):
                continue
            key, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if key == "event":
                name = value
            elif key in ("data", "error"):
                data.append(value)
                name = "error" if key == "error" else name
        if not data:
            return
        text = "\n".join(data)
        if text.strip() == "[DONE]":
            self._end()
            return
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError):
            doc = None
        if name == "error":
            self._error(text if doc is None else doc)
        elif isinstance(doc, Mapping):  # else not a JSON object: nothing to translate
            if doc.get("error") is not None or doc.get("object") == "error":  # vLLM, others
                self._error(doc)
            else:
                self._chunk(doc)

    def _error(self, doc: Any) -> None:
        inner = doc.get("error", doc) if isinstance(doc, Mapping) else doc
        status = status_of(inner, status_of(doc))
        self._fail(status, error_message(doc if isinstance(doc, Mapping) else str(doc)))

    def _chunk(self, chunk: Mapping[str, Any]) -> None:
        self._start(chunk.get("id"))
        self.usage.update(chunk)
        choices = chunk.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices else None
        if not isinstance(choice, Mapping):
            return  # the usage chunk of include_usage has no choices
        delta = choice.get("delta")
        if isinstance(delta, Mapping):
            carried = False
            reasoning = reasoning_of(delta)
            if reasoning:
                self._text("thinking", reasoning)
                carried = True
            content = delta.get("content")
            if isinstance(content, str) and content:
                self._text("text", content)
                carried = True
            calls = delta.get("tool_calls")
            for call in calls if isinstance(calls, list) else ():
                if isinstance(call, Mapping):
                    self._tool_fragment(call)
                    carried = True
            self._deltas += carried
        if choice.get("finish_reason"):
            self._finish = dict(choice)

    def _start(self, chat_id: Any) -> None:
        if self._id is not None:
            return
        self._id = message_id(chat_id)
        usage = {"input_tokens": self._input_estimate, "output_tokens": 0}
        self._out.append(
            sse(
                {
                    "type": "message_start",
                    "message": {
                        "id": self._id,
                        "type": "message",
                        "role": "assistant",
                        "model": self.model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": usage,
                    },
                }
            )
        )

    def _text(self, kind: str, text: str) -> None:
        """Text or thinking: a run of the same kind stays one block."""
        if self._open is None or self._open_kind != kind:
            block: dict[str, Any] = {"type": kind, kind: ""}
            if kind == "thinking":
                block["signature"] = ""  # no signature: nothing here can verify one
            self._open_block(kind, block)
        delta_type = "text_delta" if kind == "text" else "thinking_delta"
        self._out.append(
            sse(
                {
                    "type": "content_block_delta",
                    "index": self._open,
                    "delta": {"type": delta_type, kind: text},
                }
            )
        )

    def _tool_fragment(self, call: Mapping[str, Any]) -> None:
        """A piece of a tool call: OpenAI sends its id and name first, then the arguments in
        fragments, all under the call's `index`; each call is one tool_use block."""
        index = call.get("index", 0)
        key = index if isinstance(index, int) else 0
        tool = self._tools.setdefault(key, _ToolCall())
        if isinstance(call.get("id"), str) and call["id"]:
            tool.id = tool.id or call["id"]
        function = call.get("function")
        function = function if isinstance(function, Mapping) else {}
        if isinstance(function.get("name"), str) and function["name"] and tool.name is None:
            tool.name = function["name"]
        arguments = function.get("arguments")
        if isinstance(arguments, Mapping):  # a server that sends the object whole
            arguments = json.dumps(arguments, ensure_ascii=False)
        if isinstance(arguments, str) and arguments:
            tool.pending.append(arguments)
        if tool.block is None and tool.name:
            self._open_tool(key, tool)
        self._send_arguments(tool)

    def _send_arguments(self, tool: _ToolCall) -> None:
        """The arguments received so far, once the call's block is open. An earlier call's
        late fragment still goes to its own block, by index (servers send calls in turn)."""
        if tool.block is None:
            return
        for piece in tool.pending:
            self._out.append(
                sse(
                    {
                        "type": "content_block_delta",
                        "index": tool.block,
                        "delta": {"type": "input_json_delta", "partial_json": piece},
                    }
                )
            )
        tool.pending.clear()

    def _open_tool(self, key: int, tool: _ToolCall) -> None:
        block = {
            "type": "tool_use",
            "id": tool_use_id(tool.id, self._id or "msg_", key),
            "name": tool.name or "",
            "input": {},
        }
        tool.block = self._open_block("tool_use", block)

    def _open_block(self, kind: str, block: dict[str, Any]) -> int:
        self._close_block()
        self._open, self._open_kind = self._blocks, kind
        self._blocks += 1
        self._out.append(
            sse({"type": "content_block_start", "index": self._open, "content_block": block})
        )
        return self._open

    def _close_block(self) -> None:
        if self._open is not None:
            self._out.append(sse({"type": "content_block_stop", "index": self._open}))
            self._open, self._open_kind = None, ""

    def _end(self) -> None:
        """message_delta (stop reason, usage) and message_stop, after the last block."""
        if self._ended:
            return
        self._start(None)
        for key, tool in self._tools.items():
            if tool.block is None:  # never named: open it now rather than lose the call
                self._open_tool(key, tool)
                self._send_arguments(tool)
        self._close_block()
        reason, sequence = stop_reason(self._finish or {}, bool(self._tools))
        usage = self.usage.anthropic(self._deltas)
        delta_usage: dict[str, int] = {"output_tokens": usage["output_tokens"]}
        if self.usage.input_tokens is not None:
            delta_usage["input_tokens"] = usage["input_tokens"]
            delta_usage["cache_read_input_tokens"] = usage["cache_read_input_tokens"]
        self._out.append(
            sse(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": reason, "stop_sequence": sequence},
                    "usage": delta_usage,
                }
            )
        )
        self._out.append(sse({"type": "message_stop"}))
        self._ended = True
