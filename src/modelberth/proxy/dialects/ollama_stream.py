"""The stream translator: an upstream's OpenAI SSE stream in, Ollama's NDJSON stream out
(one JSON object and a newline per line), for /api/chat and /api/generate."""

from __future__ import annotations

import json
from typing import Any

from modelberth.proxy.dialects.ollama_answer import (
    Counts,
    Timing,
    counts_of,
    created_at,
    done_reason,
    metrics,
    reasoning_of,
    tool_calls,
)


class ChatStream:
    """Fed the upstream's bytes as they come (split anywhere, even inside a UTF-8
    character: only whole lines are decoded), it returns the NDJSON lines to send, maybe
    none. Each content or thinking delta becomes one `done: false` line. Tool calls come in
    fragments; they are gathered and sent whole in one line when the choice finishes (Ollama
    sends tool calls whole). `finish(now)` sends the done line: done_reason, the durations
    (from `timing`, which the caller fills; `finish` sets `end`) and the counts, from the
    upstream's usage chunk (`chat_request` asks for it) or llama.cpp's `timings`, else
    counted. An error event (or a chunk with `error`) becomes Ollama's `{"error": message}`
    line, and then there is no done line. Only the first choice is read (`n` > 1 is not
    Ollama's)."""

    def __init__(self, model: str, timing: Timing, generate: bool = False) -> None:
        self.model = model  # the name the client asked for, echoed in every line
        self.timing = timing
        self.generate = generate  # /api/generate's lines carry `response`, not `message`
        self.error: str | None = None
        self._pending = bytearray()  # the start of a line not yet ended
        self._data: list[bytes] = []  # the data lines of the event under way
        self._event = b""
        self._calls: dict[int, dict[str, Any]] = {}  # index -> id, name, arguments so far
        self._usage: Any = None
        self._timings: Any = None
        self._finish_reason: Any = None
        self._deltas = 0
        self._finished = False

    @property
    def usage(self) -> Counts:
        """The tokens seen so far, for modelberth's accounting."""
        counts = counts_of(self._usage, self._timings)
        if counts.completion_tokens is None:
            counts.completion_tokens, counts.counted = self._deltas, True
        return counts

    def feed(self, chunk: bytes) -> bytes:
        self._pending += chunk
        out: list[bytes] = []
        start = 0
        while (end := self._pending.find(b"\n", start)) >= 0:
            out += self._line(bytes(self._pending[start:end]).rstrip(b"\r"))
            start = end + 1
        del self._pending[:start]
        return b"".join(out)

    def finish(self, now: float) -> bytes:
        """The last lines: whatever the stream's unended tail holds, tool calls not yet
        sent, and the done line. Once only: later calls return nothing."""
        if self._finished:
            return b""
        self._finished = True
        self.timing.end = now
        out = self._line(bytes(self._pending).rstrip(b"\r")) if self._pending else []
        self._pending.clear()
        out += self._line(b"")  # an event the stream did not end with a blank line
        if self.error is not None:
            return b"".join(out)
        out += self._flush_calls()
        fields: dict[str, Any] = (
            {"response": ""} if self.generate else {"message": {"role": "assistant", "content": ""}}
        )
        fields.update(done=True, done_reason=done_reason(self._finish_reason))
        fields.update(metrics(self.timing, self.usage, self._timings))
        out.append(self._encode(fields))
        return b"".join(out)

    def _line(self, line: bytes) -> list[bytes]:
        if not line:
            data, event = b"\n".join(self._data), self._event
            self._data, self._event = [], b""
            return self._dispatch(event, data) if data else []
        if line.startswith(b":"):
            return []  # a comment: keep-alives
        field, _, value = line.partition(b":")
        value = value.removeprefix(b" ")
        if field == b"data":
            self._data.append(value)
        elif field == b"event":
            self._event = value
        return []

    def _dispatch(self, event: bytes, data: bytes) -> list[bytes]:
        if data == b"[DONE]" or self.error is not None:
            return []
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError):
            return []
        if not isinstance(doc, dict):
            return []
        if event == b"error" or doc.get("error"):
            self.error = _error_message(doc.get("error"))
            return [_json({"error": self.error})]
        if isinstance(doc.get("usage"), dict):
            self._usage = doc["usage"]
        if isinstance(doc.get("timings"), dict):
            self._timings = doc["timings"]
        choices = doc.get("choices")
        if not (isinstance(choices, list) and choices and isinstance(choices[0], dict)):
            return []  # e.g. the usage chunk, whose choices are empty
        return self._choice(choices[0])

    def _choice(self, choice: dict[str, Any]) -> list[bytes]:
        delta = choice.get("delta")
        if isinstance(delta, dict):
            content, thinking = delta.get("content"), reasoning_of(delta)
            self._gather(delta.get("tool_calls"))
        else:  # a text completion's chunk (raw /api/generate)
            content, thinking = choice.get("text"), ""
        out: list[bytes] = []
        text = content if isinstance(content, str) else ""
        if text or thinking:
            self._deltas += 1
            out.append(self._encode(self._delta(text, thinking, choice.get("logprobs"))))
        if choice.get("finish_reason"):
            self._finish_reason = choice["finish_reason"]
            out += self._flush_calls()
        return out

    def _delta(self, text: str, thinking: str, logprobs: Any) -> dict[str, Any]:
        if self.generate:
            fields: dict[str, Any] = {"response": text}
            if thinking:
                fields["thinking"] = thinking
        else:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if thinking:
                message["thinking"] = thinking
            fields = {"message": message}
        if isinstance(logprobs, dict) and isinstance(logprobs.get("content"), list):
            fields["logprobs"] = logprobs["content"]
        fields["done"] = False
        return fields

    def _gather(self, fragments: Any) -> None:
        """Join the fragments of each tool call by its `index`; an upstream that sends no
        index gets one per new `id`."""
        for fragment in fragments if isinstance(fragments, list) else []:
            if not isinstance(fragment, dict):
                continue
            index = fragment.get("index")
            if not isinstance(index, int):
                new = fragment.get("id") or not self._calls
                index = len(self._calls) if new else max(self._calls)
            call = self._calls.setdefault(index, {"id": None, "name": "", "arguments": ""})
            if isinstance(fragment.get("id"), str):
                call["id"] = fragment["id"]
            function = fragment.get("function")
            if not isinstance(function, dict):
                continue
            name = function.get("name")
            if isinstance(name, str) and name != call["name"]:
                call["name"] += name  # once in OpenAI's streams; some servers repeat it
            arguments = function.get("arguments")
            if isinstance(arguments, str):
                call["arguments"] += arguments
            elif isinstance(arguments, dict):
                call["arguments"] = json.dumps(arguments)

    def _flush_calls(self) -> list[bytes]:
        if not self._calls:
            return []
        calls = tool_calls(
            [
                {"id": c["id"], "function": {"name": c["name"], "arguments": c["arguments"]}}
                for _, c in sorted(self._calls.items())
            ]
        )
        self._calls.clear()
        if self.generate:
            return [self._encode({"response": "", "tool_calls": calls, "done": False})]
        return [
            self._encode(
                {
                    "message": {"role": "assistant", "content": "", "tool_calls": calls},
                    "done": False,
                }
            )
        ]

    def _encode(self, fields: dict[str, Any]) -> bytes:
        return _json({"model": self.model, "created_at": created_at(), **fields})


def _error_message(error: Any) -> str:
    """OpenAI's {"message": ...} object (modelberth's own error events too), or a string."""
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    return error if isinstance(error, str) and error else "upstream error"


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
