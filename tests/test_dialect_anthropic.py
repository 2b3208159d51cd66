"""Anthropic Messages <-> OpenAI chat completions translation (proxy/dialects/anthropic*.py):
pure unit tests, no servers. The official `anthropic` SDK's own types and its
own client (over an in-process mock transport) check what comes out."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from modelberth.proxy.dialects.anthropic import (
    PING,
    DialectError,
    MessagesStream,
    count_tokens_request,
    error_body,
    from_chat_response,
    from_openai_error,
    to_chat_request,
)

MODEL = "claude-local"  # the name the client asks for


def request(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    body.update(fields)
    return body


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> bytes:
    doc: dict[str, Any] = {
        "id": "chatcmpl-abc",
        "object": "chat.completion.chunk",
        "model": "upstream",
        "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}],
    }
    doc.update(extra)
    return f"data: {json.dumps(doc)}\n\n".encode()


def usage_chunk(prompt: int, completion: int, cached: int | None = None) -> bytes:
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    doc = {"id": "chatcmpl-abc", "object": "chat.completion.chunk", "choices": [], "usage": usage}
    return f"data: {json.dumps(doc)}\n\n".encode()


DONE = b"data: [DONE]\n\n"


def tool_delta(
    index: int, arguments: str, call_id: str | None = None, name: str | None = None
) -> dict[str, Any]:
    call: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
    if call_id:
        call.update(id=call_id, type="function")
        call["function"]["name"] = name
    return {"tool_calls": [call]}


def events(data: bytes) -> list[dict[str, Any]]:
    """The Anthropic SSE events in `data`, checking each one's `event:` name is its type."""
    out = []
    assert data.endswith(b"\n\n") or not data
    for block in data.decode().split("\n\n"):
        if not block:
            continue
        lines = block.split("\n")
        assert len(lines) == 2 and lines[0].startswith("event: ") and lines[1].startswith("data: ")
        event = json.loads(lines[1].removeprefix("data: "))
        assert event["type"] == lines[0].removeprefix("event: ")
        out.append(event)
    return out


def translate(
    stream: bytes, pieces: Callable[[bytes], Iterator[bytes]] | None = None, end: bool = True
) -> tuple[MessagesStream, bytes]:
    translator = MessagesStream(MODEL)
    parts = pieces(stream) if pieces else iter([stream])
    out = b"".join(translator.feed(part) for part in parts)
    if end:
        out += translator.finish()
    return translator, out


def one_byte(data: bytes) -> Iterator[bytes]:
    return (data[i : i + 1] for i in range(len(data)))


def odd_cuts(data: bytes) -> Iterator[bytes]:
    """Cuts that fall inside JSON strings, inside `\\n\\n` and inside multi-byte UTF-8."""
    sizes, i, k = (7, 1, 13, 2, 29, 3), 0, 0
    while i < len(data):
        yield data[i : i + sizes[k % len(sizes)]]
        i += sizes[k % len(sizes)]
        k += 1


def types(evs: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in evs]


# --- the request --------------------------------------------------------------------------


def test_minimal_request() -> None:
    chat = to_chat_request(request(metadata={"user_id": "u1"}))
    assert chat == {
        "model": MODEL,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "Hi"}],
    }


def test_sampling_stop_and_stream() -> None:
    chat = to_chat_request(
        request(
            temperature=0.2, top_p=0.9, top_k=40, stop_sequences=["\n\nHuman:", "END"], stream=True
        )
    )
    assert chat["temperature"] == 0.2 and chat["top_p"] == 0.9 and chat["top_k"] == 40
    assert chat["stop"] == ["\n\nHuman:", "END"]
    assert chat["stream"] is True and chat["stream_options"] == {"include_usage": True}
    assert "stream" not in to_chat_request(request(stream=False))


def test_system_string_and_blocks() -> None:
    chat = to_chat_request(request(system="Be brief."))
    assert chat["messages"][0] == {"role": "system", "content": "Be brief."}
    blocks = [
        {"type": "text", "text": "You are a CLI.", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Use tools."},
    ]
    chat = to_chat_request(request(system=blocks))
    assert chat["messages"][0] == {"role": "system", "content": "You are a CLI.\n\nUse tools."}
    assert to_chat_request(request(system=""))["messages"][0]["role"] == "user"


def test_multi_turn_and_text_blocks() -> None:
    chat = to_chat_request(
        request(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "<reminder>"},
                        {"type": "text", "text": "What is 2+2?"},
                    ],
                },
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "easy", "signature": "sig"},
                        {"type": "text", "text": "4"},
                    ],
                },
                {"role": "user", "content": "And 3+3?"},
            ]
        )
    )
    assert chat["messages"] == [
        {"role": "user", "content": "<reminder>\n\nWhat is 2+2?"},
        {"role": "assistant", "content": "4"},  # the thinking block is dropped
        {"role": "user", "content": "And 3+3?"},
    ]


def test_images() -> None:
    chat = to_chat_request(
        request(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {
                                "type": "base64",
                                "media_type": "image/png",
                                "data": "iVBORw0KGgo=",
                            },
                        },
                        {
                            "type": "image",
                            "source": {"type": "url", "url": "https://example.com/a.jpg"},
                        },
                        {"type": "text", "text": "Compare them."},
                    ],
                }
            ]
        )
    )
    assert chat["messages"][0]["content"] == [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
        {"type": "text", "text": "Compare them."},
    ]


def test_plain_text_document() -> None:
    chat = to_chat_request(
        request(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "document",
                            "title": "notes.txt",
                            "source": {
                                "type": "text",
                                "media_type": "text/plain",
                                "data": "line 1",
                            },
                        },
                        {"type": "text", "text": "Summarize."},
                    ],
                }
            ]
        )
    )
    assert chat["messages"][0]["content"] == "notes.txt\n\nline 1\n\nSummarize."


WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def test_tools_and_tool_choice() -> None:
    chat = to_chat_request(
        request(
            tools=[
                WEATHER_TOOL,
                {"name": "noop", "type": "custom", "input_schema": {"type": "object"}},
            ]
        )
    )
    assert chat["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": WEATHER_TOOL["input_schema"],
            },
        },
        {"type": "function", "function": {"name": "noop", "parameters": {"type": "object"}}},
    ]
    expected: list[tuple[dict[str, Any], dict[str, Any]]] = [
        ({"type": "auto"}, {"tool_choice": "auto"}),
        ({"type": "any"}, {"tool_choice": "required"}),
        ({"type": "none"}, {"tool_choice": "none"}),
        (
            {"type": "tool", "name": "get_weather"},
            {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
        ),
        (
            {"type": "auto", "disable_parallel_tool_use": True},
            {"tool_choice": "auto", "parallel_tool_calls": False},
        ),
    ]
    for choice, wanted in expected:
        chat = to_chat_request(request(tools=[WEATHER_TOOL], tool_choice=choice))
        assert {k: chat[k] for k in wanted} == wanted
        assert ("parallel_tool_calls" in chat) == ("parallel_tool_calls" in wanted)


TOOL_CONVERSATION: list[dict[str, Any]] = [
    {"role": "user", "content": "Weather in Paris and Oslo?"},
    {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Checking."},
            {
                "type": "tool_use",
                "id": "toolu_1",
                "name": "get_weather",
                "input": {"city": "Paris"},
            },
            {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Oslo"}},
        ],
    },
    {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18°C, sunny"},
            {
                "type": "tool_result",
                "tool_use_id": "toolu_2",
                "is_error": True,
                "content": [{"type": "text", "text": "service down"}],
            },
            {"type": "text", "text": "Answer in French."},
        ],
    },
]


def test_tool_use_and_tool_result() -> None:
    chat = to_chat_request(request(messages=TOOL_CONVERSATION, tools=[WEATHER_TOOL]))
    assert chat["messages"][1:] == [
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                },
                {
                    "id": "toolu_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18°C, sunny"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: service down"},
        {"role": "user", "content": "Answer in French."},
    ]


def test_tool_only_assistant_turn_and_image_in_tool_result() -> None:
    image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/jpeg", "data": "AAAA"},
    }
    chat = to_chat_request(
        request(
            messages=[
                {"role": "user", "content": "Screenshot please"},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t1", "name": "shot", "input": {}}],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "t1",
                            "content": [{"type": "text", "text": "done"}, image],
                        }
                    ],
                },
            ]
        )
    )
    assistant, tool, user = chat["messages"][1:]
    assert assistant["content"] is None and assistant["tool_calls"][0]["function"] == {
        "name": "shot",
        "arguments": "{}",
    }
    assert tool == {"role": "tool", "tool_call_id": "t1", "content": "done"}
    assert user == {
        "role": "user",
        "content": [{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA"}}],
    }


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"max_tokens": None}, "max_tokens: Field required"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"model": None}, "model"),
        ({"messages": "Hi"}, "messages: Input should be a valid list"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
        (
            {"messages": [{"role": "user", "content": [{"type": "video"}]}]},
            "messages.0.content.0.type: 'video'",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "tool_use", "id": "x", "name": "y", "input": {}}],
                    }
                ]
            },
            "'tool_use'",
        ),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "content.0.text"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}],
                    }
                ]
            },
            "file sources",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "document",
                                "source": {
                                    "type": "base64",
                                    "media_type": "application/pdf",
                                    "data": "JVBER",
                                },
                            }
                        ],
                    }
                ]
            },
            "plain-text documents",
        ),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "server tool"),
        ({"tools": [{"name": "x"}]}, "input_schema"),
        ({"tool_choice": {"type": "tool"}}, "tool_choice"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_k": 1.5}, "top_k"),
        ({"stop_sequences": "END"}, "stop_sequences"),
        ({"stream": "yes"}, "stream"),
    ],
)
def test_invalid_requests(fields: dict[str, Any], words: str) -> None:
    body = request(**fields)
    body = {k: v for k, v in body.items() if v is not None}
    with pytest.raises(DialectError) as caught:
        to_chat_request(body)
    assert caught.value.status == 400 and caught.value.error_type == "invalid_request_error"
    assert words in caught.value.message
    assert caught.value.body() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": caught.value.message},
    }


def test_not_an_object() -> None:
    with pytest.raises(DialectError):
        to_chat_request([])  # type: ignore[arg-type]


def test_count_tokens_request() -> None:
    text = count_tokens_request(
        {
            "model": MODEL,
            "system": "Be brief.",
            "messages": TOOL_CONVERSATION,
            "tools": [WEATHER_TOOL],
        }
    )
    assert text.startswith('[{"type": "function"')  # tool definitions count too
    assert "system: Be brief." in text and "user: Weather in Paris and Oslo?" in text
    assert 'get_weather({"city": "Oslo"})' in text and "tool: Error: service down" in text
    with pytest.raises(DialectError):
        count_tokens_request({"model": MODEL})  # messages are still required


# --- the whole answer ---------------------------------------------------------------------


def completion(
    message: dict[str, Any], finish: str | None = "stop", **extra: Any
) -> dict[str, Any]:
    chat: dict[str, Any] = {
        "id": "chatcmpl-xyz",
        "object": "chat.completion",
        "model": "qwen.gguf",
        "choices": [
            {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}
        ],
        "usage": {
            "prompt_tokens": 120,
            "completion_tokens": 9,
            "total_tokens": 129,
            "prompt_tokens_details": {"cached_tokens": 100},
        },
    }
    chat.update(extra)
    return chat


def test_text_answer() -> None:
    message = from_chat_response(completion({"content": "Hello!"}), MODEL)
    assert message == {
        "id": "msg_xyz",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [{"type": "text", "text": "Hello!"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 20,
            "output_tokens": 9,
            "cache_read_input_tokens": 100,
            "cache_creation_input_tokens": 0,
        },
    }


def test_tool_and_thinking_answer() -> None:
    chat = completion(
        {
            "content": None,
            "reasoning_content": "Need the weather.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                },
                {"type": "function", "function": {"name": "get_weather", "arguments": "{not json"}},
                {"id": "call_3", "type": "function", "function": {"name": "now", "arguments": ""}},
            ],
        },
        finish="tool_calls",
    )
    message = from_chat_response(chat, MODEL)
    assert message["content"] == [
        {"type": "thinking", "thinking": "Need the weather.", "signature": ""},
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Oslo"}},
        {
            "type": "tool_use",
            "id": "toolu_xyz_1",
            "name": "get_weather",
            "input": {"_raw": "{not json"},
        },
        {"type": "tool_use", "id": "call_3", "name": "now", "input": {}},
    ]
    assert message["stop_reason"] == "tool_use"


@pytest.mark.parametrize(
    ("finish", "extra", "reason", "sequence"),
    [
        ("stop", {}, "end_turn", None),
        ("stop", {"stop_reason": "END"}, "stop_sequence", "END"),  # vLLM names the sequence
        ("stop", {"stop_reason": 128001}, "end_turn", None),  # vLLM: a stop token id
        ("length", {}, "max_tokens", None),
        ("tool_calls", {}, "tool_use", None),
        ("content_filter", {}, "refusal", None),
        (None, {}, "end_turn", None),
    ],
)
def test_stop_reasons(
    finish: str | None, extra: dict[str, Any], reason: str, sequence: str | None
) -> None:
    chat = completion({"content": "x"}, finish)
    chat["choices"][0].update(extra)
    message = from_chat_response(chat, MODEL)
    assert (message["stop_reason"], message["stop_sequence"]) == (reason, sequence)


def test_stop_with_tool_calls_is_tool_use() -> None:
    chat = completion(
        {
            "content": "",
            "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}
            ],
        }
    )
    message = from_chat_response(chat, MODEL)
    assert message["stop_reason"] == "tool_use"
    assert message["content"] == [{"type": "tool_use", "id": "c", "name": "f", "input": {"a": 1}}]


def test_usage_from_llama_timings_and_missing() -> None:
    chat = completion({"content": "x"}, timings={"prompt_n": 5, "cache_n": 30, "predicted_n": 7})
    del chat["usage"]
    assert from_chat_response(chat, MODEL)["usage"] == {
        "input_tokens": 5,
        "output_tokens": 7,
        "cache_read_input_tokens": 30,
        "cache_creation_input_tokens": 0,
    }
    del chat["timings"], chat["id"]
    message = from_chat_response(chat, MODEL)
    assert message["usage"]["input_tokens"] == 0 and message["usage"]["output_tokens"] == 0
    assert message["id"].startswith("msg_") and len(message["id"]) > 10


def test_answer_without_choices() -> None:
    with pytest.raises(DialectError) as caught:
        from_chat_response({"id": "x", "choices": []}, MODEL)
    assert caught.value.status == 502 and caught.value.error_type == "api_error"


# --- the stream ---------------------------------------------------------------------------

TEXT_STREAM = (
    chunk({"role": "assistant", "content": ""})
    + chunk({"content": "Bon"})
    + chunk({"content": "jour ☀"})
    + chunk({}, "stop")
    + usage_chunk(30, 3, cached=10)
    + DONE
)


@pytest.mark.parametrize("pieces", [None, one_byte, odd_cuts])
def test_streamed_text(pieces: Callable[[bytes], Iterator[bytes]] | None) -> None:
    translator, out = translate(TEXT_STREAM, pieces)
    evs = events(out)
    assert types(evs) == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = evs[0]["message"]
    assert start["id"] == "msg_abc" and start["model"] == MODEL and start["content"] == []
    assert start["stop_reason"] is None and start["usage"] == {
        "input_tokens": 0,
        "output_tokens": 0,
    }
    assert evs[1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    assert [e["delta"] for e in evs[2:4]] == [
        {"type": "text_delta", "text": "Bon"},
        {"type": "text_delta", "text": "jour ☀"},
    ]
    assert evs[5] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 3, "input_tokens": 20, "cache_read_input_tokens": 10},
    }
    assert (
        translator.usage.input_tokens,
        translator.usage.output_tokens,
        translator.usage.cached_tokens,
    ) == (30, 3, 10)


def test_crlf_stream_and_comments() -> None:
    stream = b": keepalive\r\n\r\n" + TEXT_STREAM.replace(b"\n", b"\r\n")
    for pieces in (None, one_byte):
        _, out = translate(stream, pieces)
        assert types(events(out))[-2:] == ["message_delta", "message_stop"]
        assert len(events(out)) == 7


TOOL_ARGS = '{"city": "Oslo", "unit": "°C"}'
TOOL_STREAM = (
    chunk({"role": "assistant", "content": "Let me check."})
    + chunk(tool_delta(0, "", "call_9", "get_weather"))
    + b"".join(chunk(tool_delta(0, TOOL_ARGS[i : i + 4])) for i in range(0, len(TOOL_ARGS), 4))
    + chunk(tool_delta(1, '{"tz":', "call_10", "now"))
    + chunk(tool_delta(1, '"UTC"}'))
    + chunk({}, "tool_calls")
    + usage_chunk(50, 21)
    + DONE
)


@pytest.mark.parametrize("pieces", [None, one_byte, odd_cuts])
def test_streamed_tool_calls(pieces: Callable[[bytes], Iterator[bytes]] | None) -> None:
    _, out = translate(TOOL_STREAM, pieces)
    evs = events(out)
    starts = [e for e in evs if e["type"] == "content_block_start"]
    assert [s["index"] for s in starts] == [0, 1, 2]
    assert starts[1]["content_block"] == {
        "type": "tool_use",
        "id": "call_9",
        "name": "get_weather",
        "input": {},
    }
    assert starts[2]["content_block"]["name"] == "now"
    fragments: dict[int, str] = {}
    for e in evs:
        if e["type"] == "content_block_delta" and e["delta"]["type"] == "input_json_delta":
            fragments[e["index"]] = fragments.get(e["index"], "") + e["delta"]["partial_json"]
    assert json.loads(fragments[1]) == {"city": "Oslo", "unit": "°C"}
    assert json.loads(fragments[2]) == {"tz": "UTC"}
    assert [e["index"] for e in evs if e["type"] == "content_block_stop"] == [0, 1, 2]
    # each block closes before the next one opens
    order = [(e["type"], e.get("index")) for e in evs if e["type"].startswith("content_block_s")]
    assert order == [
        ("content_block_start", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_stop", 1),
        ("content_block_start", 2),
        ("content_block_stop", 2),
    ]
    assert evs[-2]["delta"]["stop_reason"] == "tool_use"
    assert evs[-2]["usage"]["output_tokens"] == 21


def test_tool_name_after_first_fragment() -> None:
    """A server that sends arguments before the name: the block waits for the name."""
    stream = (
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a"'}}]})
        + chunk({"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f"}}]})
        + chunk(tool_delta(0, ": 1}"))
        + chunk({}, "tool_calls")
        + DONE
    )
    evs = events(translate(stream)[1])
    assert evs[1]["content_block"] == {"type": "tool_use", "id": "c1", "name": "f", "input": {}}
    assert (
        "".join(e["delta"]["partial_json"] for e in evs if e["type"] == "content_block_delta")
        == '{"a": 1}'
    )


def test_streamed_thinking_then_text() -> None:
    stream = (
        chunk({"reasoning_content": "Hmm"})
        + chunk({"reasoning_content": "."})
        + chunk({"content": "Yes."})
        + chunk({}, "stop")
        + DONE
    )
    evs = events(translate(stream)[1])
    assert evs[1]["content_block"] == {"type": "thinking", "thinking": "", "signature": ""}
    assert evs[2]["delta"] == {"type": "thinking_delta", "thinking": "Hmm"}
    assert evs[5]["content_block"] == {"type": "text", "text": ""}
    assert evs[-2]["usage"] == {"output_tokens": 3}  # no usage reported: chunks counted


def test_finish_on_truncated_stream() -> None:
    cut = TOOL_STREAM[: TOOL_STREAM.index(b"call_10") - 20]  # mid-event, no finish_reason
    translator, out = translate(cut, odd_cuts, end=False)
    evs = events(out)
    assert types(evs)[-1] == "content_block_delta"  # the block is still open
    tail = events(translator.finish())
    assert types(tail)[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert tail[-2]["delta"]["stop_reason"] == "tool_use"
    assert translator.finish() == b""  # once only
    assert translator.feed(DONE) == b""


def test_finish_keeps_last_event_without_blank_line() -> None:
    stream = chunk({"content": "Hi"}).rstrip(b"\n")
    translator = MessagesStream(MODEL)
    assert translator.feed(stream) == b""
    evs = events(translator.finish())
    assert [e["delta"] for e in evs if e["type"] == "content_block_delta"] == [
        {"type": "text_delta", "text": "Hi"}
    ]


def test_finish_on_empty_stream() -> None:
    evs = events(MessagesStream(MODEL, input_tokens=12).finish())
    assert types(evs) == ["message_start", "message_delta", "message_stop"]
    assert evs[0]["message"]["usage"]["input_tokens"] == 12
    assert evs[1]["delta"]["stop_reason"] == "end_turn"


def test_done_ends_the_message_without_finish() -> None:
    translator, out = translate(TEXT_STREAM, end=False)
    assert types(events(out))[-1] == "message_stop"
    assert translator.finish() == b""


def test_stream_stop_sequence_and_length() -> None:
    stream = chunk({"content": "a"}) + chunk({}, "stop") + DONE
    stream = stream.replace(
        b'"finish_reason": "stop"', b'"finish_reason": "stop", "stop_reason": "###"'
    )
    evs = events(translate(stream)[1])
    assert evs[-2]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "###"}
    evs = events(translate(chunk({"content": "a"}) + chunk({}, "length") + DONE)[1])
    assert evs[-2]["delta"]["stop_reason"] == "max_tokens"


@pytest.mark.parametrize(
    ("error", "status_type", "message"),
    [
        # modelberth's own mid-stream error
        (
            b'event: error\ndata: {"error": {"message": "Upstream timed out", '
            b'"type": "server_error", "code": "upstream_timeout"}}\n\n',
            "timeout_error",
            "Upstream timed out",
        ),
        # llama.cpp's `error:` field
        (
            b'error: {"code": 400, "message": "the request exceeds the available context size",'
            b' "type": "exceed_context_size_error"}\n\n',
            "invalid_request_error",
            "the request exceeds the available context size",
        ),
        # an error object as a data chunk (vLLM and others)
        (
            b'data: {"error": {"message": "boom", "type": "internal_error"}}\n\n',
            "api_error",
            "boom",
        ),
        (
            b'data: {"object": "error", "message": "bad", "code": 400}\n\n',
            "invalid_request_error",
            "bad",
        ),
        (b"event: error\ndata: upstream went away\n\n", "api_error", "upstream went away"),
    ],
)
def test_stream_errors(error: bytes, status_type: str, message: str) -> None:
    translator = MessagesStream(MODEL)
    out = translator.feed(chunk({"content": "Hel"}))
    for piece in one_byte(error):
        out += translator.feed(piece)
    evs = events(out)
    assert types(evs) == ["message_start", "content_block_start", "content_block_delta", "error"]
    assert evs[-1] == {"type": "error", "error": {"type": status_type, "message": message}}
    assert translator.feed(chunk({"content": "lo"})) == b""  # an error ends the stream
    assert translator.finish() == b""


def test_caller_error_and_ping() -> None:
    translator = MessagesStream(MODEL)
    translator.feed(chunk({"content": "x"}))
    evs = events(translator.error(502, "Upstream for model 'm' failed during the response"))
    assert evs == [
        {
            "type": "error",
            "error": {
                "type": "api_error",
                "message": "Upstream for model 'm' failed during the response",
            },
        }
    ]
    assert translator.finish() == b"" and translator.error(500, "again") == b""
    assert events(PING) == [{"type": "ping"}]


def test_ignores_junk_and_extra_fields() -> None:
    stream = (
        b"data: not json\n\n"
        + b"retry: 100\n\n"
        + chunk({"content": "ok"}, None, system_fingerprint="fp", error=None)
        + DONE
    )
    evs = events(translate(stream)[1])
    assert types(evs)[:3] == ["message_start", "content_block_start", "content_block_delta"]


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (405, "invalid_request_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (502, "api_error"),
        (503, "overloaded_error"),
        (504, "timeout_error"),
        (529, "overloaded_error"),
    ],
)
def test_error_body(status: int, error_type: str) -> None:
    assert error_body(status, "why") == {
        "type": "error",
        "error": {"type": error_type, "message": "why"},
    }


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            b'{"error": {"message": "The model \'x\' does not exist", '
            b'"type": "invalid_request_error", "param": null, "code": "model_not_found"}}',
            "The model 'x' does not exist",
        ),
        (b'{"error": "model not loaded"}', "model not loaded"),
        (
            b'{"object": "error", "message": "too long", "type": "BadRequestError", "code": 400}',
            "too long",
        ),
        (b'{"detail": "Not Found"}', "Not Found"),
        (b'{"detail": [{"loc": ["body"], "msg": "bad"}]}', '[{"loc": ["body"], "msg": "bad"}]'),
        (b"<html>502 Bad Gateway</html>", "<html>502 Bad Gateway</html>"),
        (b"", "Upstream answered HTTP 404."),
    ],
)
def test_from_openai_error(body: bytes, message: str) -> None:
    assert from_openai_error(body, 404) == {
        "type": "error",
        "error": {"type": "not_found_error", "message": message},
    }


# --- a tool conversation, round trip ------------------------------------------------------


def test_tool_round_trip() -> None:
    """The tool_use blocks of a translated answer, sent back with their results, become the
    tool calls and tool messages the upstream made and expects."""
    answer = from_chat_response(
        completion(
            {
                "content": "On it.",
                "tool_calls": [
                    {
                        "id": "call_a",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Lyon"}'},
                    }
                ],
            },
            "tool_calls",
        ),
        MODEL,
    )
    follow_up = request(
        tools=[WEATHER_TOOL],
        messages=[
            {"role": "user", "content": "Weather in Lyon?"},
            {"role": answer["role"], "content": answer["content"]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": block["id"], "content": "21°C"}
                    for block in answer["content"]
                    if block["type"] == "tool_use"
                ],
            },
        ],
    )
    messages = to_chat_request(follow_up)["messages"]
    assert messages[1] == {
        "role": "assistant",
        "content": "On it.",
        "tool_calls": [
            {
                "id": "call_a",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Lyon"}'},
            }
        ],
    }
    assert messages[2:] == [{"role": "tool", "tool_call_id": "call_a", "content": "21°C"}]


# --- the anthropic SDK's own view ---------------------------------------------------------


def sdk_client(
    sdk: Any, httpx2: Any, answer: Callable[[dict[str, Any]], Any], seen: list[dict[str, Any]]
) -> Any:
    def handler(req: Any) -> Any:
        body = json.loads(req.content)
        seen.append(body)
        return answer(body)

    return sdk.Anthropic(
        api_key="test",
        base_url="http://modelberth.test",
        max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
    )


def test_sdk_parses_answers_and_stream_events() -> None:
    sdk = importlib.import_module("anthropic")
    pydantic = importlib.import_module("pydantic")
    answers = [
        completion({"content": "Hello!"}),
        completion(
            {
                "content": None,
                "reasoning_content": "r",
                "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}
                ],
            },
            "tool_calls",
        ),
    ]
    for chat in answers:
        sdk.types.Message.model_validate(from_chat_response(chat, MODEL), strict=True)
    adapter = pydantic.TypeAdapter(sdk.types.RawMessageStreamEvent)
    for stream in (TEXT_STREAM, TOOL_STREAM):
        for event in events(translate(stream, one_byte)[1]):
            adapter.validate_python(event, strict=True)
    error = events(MessagesStream(MODEL).error(529, "Overloaded"))[0]
    sdk.types.ErrorResponse.model_validate(error)


def test_sdk_client_end_to_end() -> None:
    """The SDK's own client, over a mock transport that plays modelberth: it sends its
    request, which is translated; the answer it gets back is translated from OpenAI."""
    sdk = importlib.import_module("anthropic")
    httpx2 = importlib.import_module("httpx2")  # the transport the anthropic SDK uses
    seen: list[dict[str, Any]] = []
    chats: list[dict[str, Any]] = []

    def answer(body: dict[str, Any]) -> Any:
        chat = to_chat_request(body)
        chats.append(chat)
        if chat.get("stream"):
            translator = MessagesStream(body["model"])
            data = b"".join(translator.feed(p) for p in odd_cuts(TOOL_STREAM))
            return httpx2.Response(
                200,
                content=data + translator.finish(),
                headers={"content-type": "text/event-stream"},
            )
        return httpx2.Response(
            200, json=from_chat_response(completion({"content": "Salut"}), body["model"])
        )

    client = sdk_client(sdk, httpx2, answer, seen)
    message = client.messages.create(
        model=MODEL,
        max_tokens=100,
        system="Be brief.",
        messages=TOOL_CONVERSATION,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "any"},
        stop_sequences=["END"],
    )
    assert message.content[0].text == "Salut" and message.usage.cache_read_input_tokens == 100
    assert chats[0]["tool_choice"] == "required" and chats[0]["stop"] == ["END"]
    assert [m["role"] for m in chats[0]["messages"]] == [
        "system",
        "user",
        "assistant",
        "tool",
        "tool",
        "user",
    ]

    with client.messages.stream(
        model=MODEL,
        max_tokens=100,
        tools=[WEATHER_TOOL],
        messages=[{"role": "user", "content": "Oslo?"}],
    ) as stream:
        final = stream.get_final_message()
    assert chats[1]["stream_options"] == {"include_usage": True}
    assert final.stop_reason == "tool_use" and final.usage.output_tokens == 21
    assert final.content[0].text == "Let me check."
    assert final.content[1].name == "get_weather"
    assert final.content[1].input == {"city": "Oslo", "unit": "°C"}
    assert final.content[2].input == {"tz": "UTC"}


def test_sdk_raises_translated_errors() -> None:
    sdk = importlib.import_module("anthropic")
    httpx2 = importlib.import_module("httpx2")  # the transport the anthropic SDK uses
    seen: list[dict[str, Any]] = []

    def answer(body: dict[str, Any]) -> Any:
        if body["model"] == "missing":
            upstream = b'{"error": {"message": "no such model", "code": "model_not_found"}}'
            return httpx2.Response(404, json=from_openai_error(upstream, 404))
        try:
            to_chat_request(body)
        except DialectError as exc:
            return httpx2.Response(exc.status, json=exc.body())
        translator = MessagesStream(body["model"])
        data = translator.feed(
            chunk({"content": "par"}) + b'error: {"code": 503, '
            b'"message": "Loading model", "type": "unavailable_error"}\n\n'
        )
        return httpx2.Response(200, content=data, headers={"content-type": "text/event-stream"})

    client = sdk_client(sdk, httpx2, answer, seen)
    with pytest.raises(sdk.NotFoundError) as not_found:
        client.messages.create(model="missing", max_tokens=5, messages=[])
    assert not_found.value.body["error"] == {"type": "not_found_error", "message": "no such model"}
    with pytest.raises(sdk.BadRequestError) as bad:
        client.messages.create(
            model=MODEL,
            max_tokens=5,
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "image", "source": {"type": "file", "file_id": "file_1"}}],
                }
            ],
        )
    assert bad.value.body["error"]["type"] == "invalid_request_error"
    with (
        pytest.raises(sdk.APIStatusError) as mid_stream,
        client.messages.stream(
            model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "x"}]
        ) as stream,
    ):
        for _ in stream:
            pass
    assert mid_stream.value.body["error"] == {
        "type": "overloaded_error",
        "message": "Loading model",
    }
