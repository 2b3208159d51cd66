"""The Ollama dialect (proxy/dialects/ollama*.py): pure translation, no servers. Where the
`ollama` SDK is installed, its pydantic response types parse every answer built here, and
its client talks to the translation through an httpx mock transport."""

from __future__ import annotations

import importlib
import json
import math
from typing import Any

import httpx
import pytest

from modelberth.errors import APIError
from modelberth.proxy.dialects import ollama
from modelberth.proxy.dialects.ollama import ChatStream, Timing

sdk: Any = importlib.import_module("ollama")  # the official SDK parses what we answer

PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJ"
    "RU5ErkJggg=="
)  # a 1x1 PNG


def parses(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """The body, after the SDK's `kind` model accepted it (when the SDK is there)."""
    if sdk is not None:
        getattr(sdk, kind).model_validate(body)
    return body


def timing() -> Timing:
    return Timing(start=100.0, ready=100.5, first_token=101.0, end=103.0)


def sse(*docs: dict[str, Any], done: bool = True) -> bytes:
    events = b"".join(b"data: " + json.dumps(d).encode() + b"\n\n" for d in docs)
    return events + (b"data: [DONE]\n\n" if done else b"")


def delta(**fields: Any) -> dict[str, Any]:
    finish = fields.pop("finish_reason", None)
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": fields, "finish_reason": finish}],
    }


def lines(data: bytes) -> list[dict[str, Any]]:
    assert data == b"" or data.endswith(b"\n")
    return [json.loads(line) for line in data.splitlines()]


def feed_bytewise(stream: ChatStream, data: bytes) -> list[dict[str, Any]]:
    out = b"".join(stream.feed(data[i : i + 1]) for i in range(len(data)))
    return lines(out)


# --- /api/chat request ----------------------------------------------------------------


def test_chat_request_messages_images_tools_and_defaults() -> None:
    body = {
        "model": "qwen3:latest",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "what is this?", "images": [PNG, "/9j/4AAQ"]},
            {
                "role": "assistant",
                "content": "",
                "thinking": "hmm",
                "tool_calls": [
                    {"function": {"name": "weather", "arguments": {"city": "Paris"}}},
                    {"function": {"name": "time", "arguments": {"tz": "CET"}}},
                ],
            },
            {"role": "tool", "content": "12:00", "tool_name": "time"},
            {"role": "tool", "content": "sunny", "tool_name": "weather"},
        ],
        "tools": [{"function": {"name": "weather", "parameters": {"type": "object"}}}],
    }
    out = ollama.chat_request(body)
    assert out["model"] == "qwen3:latest"
    assert out["stream"] is True  # Ollama's default when `stream` is absent
    assert out["stream_options"] == {"include_usage": True}
    system, user, assistant, tool1, tool2 = out["messages"]
    assert system == {"role": "system", "content": "be brief"}
    assert user["content"] == [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
    ]
    assert assistant["reasoning_content"] == "hmm"
    assert assistant["tool_calls"] == [
        {
            "id": "call_0",
            "type": "function",
            "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
        },
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "time", "arguments": '{"tz": "CET"}'},
        },
    ]
    # Matched by tool_name, whatever the order of the answers.
    assert tool1 == {"role": "tool", "content": "12:00", "tool_call_id": "call_1"}
    assert tool2 == {"role": "tool", "content": "sunny", "tool_call_id": "call_0"}
    assert out["tools"] == [
        {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
    ]
    assert "keep_alive" not in out and "options" not in out


def test_chat_request_tool_ids_kept_and_unnamed_answers_in_order() -> None:
    out = ollama.chat_request(
        {
            "model": "m",
            "messages": [
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "a1", "function": {"name": "f", "arguments": {}}},
                        {"id": "a2", "function": {"name": "f", "arguments": '{"x": 1}'}},
                    ],
                },
                {"role": "tool", "content": "second", "tool_call_id": "a2"},
                {"role": "tool", "content": "first"},
            ],
        }
    )
    calls = out["messages"][0]["tool_calls"]
    assert [c["id"] for c in calls] == ["a1", "a2"]
    assert calls[1]["function"]["arguments"] == '{"x": 1}'  # a string stays as it is
    assert out["messages"][0]["content"] == ""
    assert out["messages"][1]["tool_call_id"] == "a2"
    assert out["messages"][2]["tool_call_id"] == "a1"


def test_options_mapping() -> None:
    out = ollama.chat_request(
        {
            "model": "m",
            "messages": [],
            "stream": False,
            "options": {
                "temperature": 0.2,
                "top_p": 0.9,
                "top_k": 40,
                "min_p": 0.05,
                "seed": 7,
                "num_predict": 128,
                "stop": ["\n\n", "User:"],
                "frequency_penalty": 0.1,
                "presence_penalty": 0.3,
                "repeat_penalty": 1.1,
                "repeat_last_n": 64,
                "typical_p": 0.8,
                "mirostat": 2,
                "num_ctx": 8192,
                "num_gpu": 99,
                "num_thread": 8,
                "use_mmap": True,
                "penalize_newline": True,
                "num_keep": 4,
                "unknown": 1,
            },
        }
    )
    assert out == {
        "model": "m",
        "messages": [],
        "stream": False,
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "min_p": 0.05,
        "seed": 7,
        "max_tokens": 128,
        "stop": ["\n\n", "User:"],
        "frequency_penalty": 0.1,
        "presence_penalty": 0.3,
        "repeat_penalty": 1.1,
        "repeat_last_n": 64,
        "typical_p": 0.8,
        "mirostat": 2,
    }


@pytest.mark.parametrize("predict", [-1, -2, 0])
def test_num_predict_without_a_limit_sends_no_max_tokens(predict: int) -> None:
    out = ollama.chat_request({"model": "m", "messages": [], "options": {"num_predict": predict}})
    assert "max_tokens" not in out


def test_stop_string_becomes_a_list() -> None:
    out = ollama.chat_request({"model": "m", "messages": [], "options": {"stop": "END"}})
    assert out["stop"] == ["END"]


def test_format_json_and_schema() -> None:
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}}
    assert ollama.chat_request({"model": "m", "messages": [], "format": "json"})[
        "response_format"
    ] == {"type": "json_object"}
    assert ollama.chat_request({"model": "m", "messages": [], "format": schema})[
        "response_format"
    ] == {"type": "json_schema", "json_schema": {"name": "response", "schema": schema}}
    assert "response_format" not in ollama.chat_request(
        {"model": "m", "messages": [], "format": ""}
    )


def test_think_and_logprobs() -> None:
    base = {"model": "m", "messages": []}
    assert ollama.chat_request({**base, "think": False})["chat_template_kwargs"] == {
        "enable_thinking": False
    }
    assert ollama.chat_request({**base, "think": True})["chat_template_kwargs"] == {
        "enable_thinking": True
    }
    assert ollama.chat_request({**base, "think": "high"})["reasoning_effort"] == "high"
    assert ollama.chat_request({**base, "think": "max"})["reasoning_effort"] == "high"
    out = ollama.chat_request({**base, "logprobs": True, "top_logprobs": 3})
    assert (out["logprobs"], out["top_logprobs"]) == (True, 3)


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"model": "m", "messages": "hi"},
        {"model": "m", "messages": [{"content": "x"}]},
        {"model": "m", "messages": [{"role": "user", "content": 3}]},
        {"model": "m", "messages": [{"role": "user", "content": "x", "images": [1]}]},
        {"model": "m", "messages": [], "format": "xml"},
        {"model": "m", "messages": [], "options": {"temperature": "hot"}},
        {"model": "m", "messages": [], "options": {"stop": [1]}},
        {"model": "m", "messages": [], "options": []},
        {"model": "m", "messages": [], "think": "very"},
        {"model": "m", "messages": [{"role": "assistant", "tool_calls": ["x"]}]},
    ],
)
def test_malformed_chat_requests_are_400(body: Any) -> None:
    with pytest.raises(APIError) as caught:
        ollama.chat_request(body)
    assert caught.value.status == 400
    assert ollama.error_body(caught.value.message) == {"error": caught.value.message}


# --- /api/generate request --------------------------------------------------------------


def test_generate_request_system_prompt_images() -> None:
    body = {
        "model": "llava",
        "system": "sys",
        "prompt": "describe",
        "images": [PNG],
        "stream": False,
        "options": {"temperature": 0},
        "template": "{{ .Prompt }}",
        "context": [1, 2, 3],
        "keep_alive": "10m",
    }
    assert ollama.generate_path(body) == ollama.CHAT_PATH
    out = ollama.generate_request(body)
    assert out == {
        "model": "llava",
        "stream": False,
        "temperature": 0,
        "messages": [
            {"role": "system", "content": "sys"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "describe"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                ],
            },
        ],
    }


def test_generate_raw_and_suffix_go_to_text_completions() -> None:
    raw = {
        "model": "m",
        "prompt": "[INST] hi [/INST]",
        "raw": True,
        "think": True,
        "logprobs": True,
        "options": {"num_predict": 5},
    }
    assert ollama.generate_path(raw) == ollama.COMPLETIONS_PATH
    assert ollama.generate_request(raw) == {
        "model": "m",
        "prompt": "[INST] hi [/INST]",
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 5,
    }
    fim = {"model": "m", "prompt": "def f(a, b):", "suffix": "    return r", "stream": False}
    assert ollama.generate_path(fim) == ollama.COMPLETIONS_PATH
    assert ollama.generate_request(fim)["suffix"] == "    return r"


def test_is_preload() -> None:
    assert ollama.is_preload({"model": "m"})
    assert ollama.is_preload({"model": "m", "prompt": ""})
    assert ollama.is_preload({"model": "m", "messages": [], "keep_alive": 0})
    assert ollama.is_preload({"model": "m", "input": []})
    assert ollama.is_preload({"model": "m", "input": ""})
    assert not ollama.is_preload({"model": "m", "prompt": "hi"})
    assert not ollama.is_preload({"model": "m", "messages": [{"role": "user", "content": ""}]})
    assert not ollama.is_preload({"model": "m", "input": ["a"]})
    load = parses("GenerateResponse", ollama.preload_response("m", generate=True))
    assert (load["done"], load["done_reason"], load["response"]) == (True, "load", "")
    unload = parses("ChatResponse", ollama.preload_response("m", unload=True))
    assert unload["done_reason"] == "unload" and unload["message"]["role"] == "assistant"


def test_stream_wanted() -> None:
    assert ollama.stream_wanted({"model": "m"})
    assert ollama.stream_wanted({"model": "m", "stream": None})
    assert not ollama.stream_wanted({"model": "m", "stream": False})


# --- keep_alive -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("300ms", 0.3),
        ("1.5h", 5400.0),
        ("2m30s", 150.0),
        ("0", 0.0),
        (0, 0.0),
        (0.0, 0.0),
        (60, 60.0),
        (2.5, 2.5),
        ("3600", 3600.0),
        (-1, math.inf),
        ("-1", math.inf),
        ("-5m", math.inf),
        ("-1s", math.inf),
    ],
)
def test_keep_alive_seconds(value: Any, seconds: float | None) -> None:
    assert ollama.keep_alive_seconds(value) == seconds


@pytest.mark.parametrize("value", ["soon", "5 minutes", "5d", "m", "", True, [], "nan"])
def test_keep_alive_invalid(value: Any) -> None:
    with pytest.raises(APIError):
        ollama.keep_alive_seconds(value)


# --- whole answers ----------------------------------------------------------------------


def completion(message: dict[str, Any], finish: str = "stop", **extra: Any) -> dict[str, Any]:
    return {
        "id": "x",
        "object": "chat.completion",
        "created": 1,
        "model": "upstream",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 34, "total_tokens": 46},
        **extra,
    }


def test_chat_response_fields_and_nanosecond_durations() -> None:
    answer = completion(
        {"role": "assistant", "content": "Hi!", "reasoning_content": "think"}, finish="length"
    )
    out = parses("ChatResponse", ollama.chat_response(answer, "qwen3:latest", timing()))
    assert out["model"] == "qwen3:latest"
    assert out["message"] == {"role": "assistant", "content": "Hi!", "thinking": "think"}
    assert (out["done"], out["done_reason"]) == (True, "length")
    assert out["created_at"].endswith("Z") and out["created_at"][:2] == "20"
    assert {
        k: out[k]
        for k in (
            "total_duration",
            "load_duration",
            "prompt_eval_count",
            "prompt_eval_duration",
            "eval_count",
            "eval_duration",
        )
    } == {
        "total_duration": 3_000_000_000,
        "load_duration": 500_000_000,
        "prompt_eval_count": 12,
        "prompt_eval_duration": 500_000_000,
        "eval_count": 34,
        "eval_duration": 2_000_000_000,
    }
    assert all(type(out[k]) is int for k in ("total_duration", "eval_duration"))


def test_chat_response_tool_calls_have_object_arguments() -> None:
    answer = completion(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_9",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                },
                {
                    "id": "call_10",
                    "type": "function",
                    "function": {"name": "bad", "arguments": "{"},
                },
            ],
        },
        finish="tool_calls",
    )
    out = parses("ChatResponse", ollama.chat_response(answer, "m", timing()))
    assert out["message"]["content"] == ""
    assert out["message"]["tool_calls"] == [
        {
            "id": "call_9",
            "function": {"index": 0, "name": "weather", "arguments": {"city": "Paris"}},
        },
        {"id": "call_10", "function": {"index": 1, "name": "bad", "arguments": {}}},
    ]
    assert out["done_reason"] == "stop"  # Ollama's word after tool calls


def test_llama_cpp_timings_split_prompt_and_generation() -> None:
    answer = completion(
        {"role": "assistant", "content": "ok"},
        timings={"prompt_n": 3, "prompt_ms": 12.5, "predicted_n": 30, "predicted_ms": 1500.0},
    )
    out = ollama.chat_response(answer, "m", Timing(start=1.0, ready=1.0, end=3.0))
    assert (out["prompt_eval_duration"], out["eval_duration"]) == (12_500_000, 1_500_000_000)
    assert (out["prompt_eval_count"], out["eval_count"]) == (12, 34)  # usage wins for counts
    without_usage = {**answer, "usage": None}
    out = ollama.chat_response(without_usage, "m", Timing(start=1.0, end=3.0))
    assert (out["prompt_eval_count"], out["eval_count"]) == (3, 30)


def test_whole_answer_without_first_token_counts_all_as_generation() -> None:
    out = ollama.chat_response(
        completion({"role": "assistant", "content": "ok"}),
        "m",
        Timing(start=10.0, ready=11.0, end=14.0),
    )
    assert (out["load_duration"], out["prompt_eval_duration"], out["eval_duration"]) == (
        1_000_000_000,
        0,
        3_000_000_000,
    )


def test_generate_response_from_chat_and_text_completions() -> None:
    chat = completion({"role": "assistant", "content": "blue", "reasoning": "because"})
    out = parses("GenerateResponse", ollama.generate_response(chat, "m", timing()))
    assert (out["response"], out["thinking"], out["done"]) == ("blue", "because", True)
    assert "message" not in out and "context" not in out
    text = {
        "object": "text_completion",
        "choices": [{"index": 0, "text": " world", "finish_reason": "length"}],
    }
    out = parses("GenerateResponse", ollama.generate_response(text, "m", timing()))
    assert (out["response"], out["done_reason"], out["eval_count"]) == (" world", "length", 0)


def test_created_at_is_rfc3339_nano_like_go() -> None:
    assert ollama.created_at(1_690_000_000_123_456_789) == "2023-07-22T04:26:40.123456789Z"
    assert ollama.created_at(1_690_000_000_120_000_000) == "2023-07-22T04:26:40.12Z"
    assert ollama.created_at(1_690_000_000_000_000_000) == "2023-07-22T04:26:40Z"


# --- streams ----------------------------------------------------------------------------


def test_stream_split_one_byte_at_a_time() -> None:
    upstream = sse(
        delta(role="assistant", content=""),
        delta(reasoning_content="let me see"),
        delta(content="Hé"),
        delta(content="llo 🦙"),
        delta(finish_reason="stop"),
        {"id": "c1", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3}},
    )
    stream = ChatStream("llama3:latest", timing())
    out = feed_bytewise(stream, upstream)
    assert [line["message"] for line in out] == [
        {"role": "assistant", "content": "", "thinking": "let me see"},
        {"role": "assistant", "content": "Hé"},
        {"role": "assistant", "content": "llo 🦙"},
    ]
    for line in out:
        assert (line["model"], line["done"]) == ("llama3:latest", False)
        parses("ChatResponse", line)
    [done] = lines(stream.finish(104.0))
    parses("ChatResponse", done)
    assert done["message"] == {"role": "assistant", "content": ""}
    assert (done["done"], done["done_reason"]) == (True, "stop")
    assert (
        done["total_duration"],
        done["load_duration"],
        done["prompt_eval_duration"],
        done["eval_duration"],
    ) == (4_000_000_000, 500_000_000, 500_000_000, 3_000_000_000)
    assert (done["prompt_eval_count"], done["eval_count"]) == (9, 3)
    assert stream.usage == ollama.Counts(prompt_tokens=9, completion_tokens=3, counted=False)
    assert stream.finish(105.0) == b""  # once only


def test_stream_tool_call_fragments_are_sent_whole() -> None:
    upstream = sse(
        delta(
            role="assistant",
            tool_calls=[
                {
                    "index": 0,
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "weather", "arguments": ""},
                }
            ],
        ),
        delta(tool_calls=[{"index": 0, "function": {"arguments": '{"ci'}}]),
        delta(tool_calls=[{"index": 0, "function": {"arguments": 'ty": "Paris"}'}}]),
        delta(
            tool_calls=[
                {"index": 1, "id": "call_b", "function": {"name": "time", "arguments": "{}"}}
            ]
        ),
        delta(finish_reason="tool_calls"),
    )
    stream = ChatStream("m", timing())
    [line] = feed_bytewise(stream, upstream)
    parses("ChatResponse", line)
    assert line["done"] is False
    assert line["message"] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call_a",
                "function": {"index": 0, "name": "weather", "arguments": {"city": "Paris"}},
            },
            {"id": "call_b", "function": {"index": 1, "name": "time", "arguments": {}}},
        ],
    }
    [done] = lines(stream.finish(103.0))
    assert (done["done"], done["done_reason"]) == (True, "stop")


def test_stream_tool_calls_still_sent_when_the_stream_ends_early() -> None:
    stream = ChatStream("m", timing())
    assert (
        stream.feed(
            sse(
                delta(tool_calls=[{"id": "x", "function": {"name": "f", "arguments": '{"a": 1}'}}]),
                done=False,
            )
        )
        == b""
    )
    tool, done = lines(stream.finish(103.0))
    assert tool["message"]["tool_calls"][0]["function"] == {
        "index": 0,
        "name": "f",
        "arguments": {"a": 1},
    }
    assert done["done"] is True


def test_stream_without_usage_counts_deltas_and_reads_an_unended_tail() -> None:
    stream = ChatStream("m", Timing(start=0.0, ready=0.0, first_token=1.0))
    body = sse(delta(content="a"), delta(content="b"), delta(content="c"), done=False)
    out = lines(stream.feed(body[:-2]))  # the last event lacks its blank line
    assert [line["message"]["content"] for line in out] == ["a", "b"]
    last, done = lines(stream.finish(2.0))
    assert last["message"]["content"] == "c"
    assert (done["eval_count"], done["prompt_eval_count"]) == (3, 0)
    assert stream.usage.counted and stream.usage.completion_tokens == 3


def test_stream_reads_llama_cpp_timings_and_skips_comments() -> None:
    final = delta(finish_reason="length")
    final["timings"] = {"prompt_n": 5, "prompt_ms": 20.0, "predicted_n": 2, "predicted_ms": 80.0}
    body = b": keep-alive\n\n" + sse(delta(content="x"), final)
    stream = ChatStream("m", timing())
    stream.feed(body.replace(b"\n", b"\r\n"))
    [done] = lines(stream.finish(103.0))
    assert (done["done_reason"], done["prompt_eval_count"], done["eval_count"]) == ("length", 5, 2)
    assert (done["prompt_eval_duration"], done["eval_duration"]) == (20_000_000, 80_000_000)


def test_stream_error_event_becomes_an_error_line_and_no_done_line() -> None:
    stream = ChatStream("m", timing())
    out = lines(
        stream.feed(
            sse(delta(content="par"), done=False)
            + b"event: error\ndata: "
            + json.dumps({"error": {"message": "upstream died"}}).encode()
            + b"\n\n"
        )
    )
    assert out[1] == {"error": "upstream died"}
    assert stream.error == "upstream died"
    assert stream.feed(sse(delta(content="more"))) == b""
    assert stream.finish(103.0) == b""


def test_generate_stream_lines_carry_response() -> None:
    stream = ChatStream("m", timing(), generate=True)
    out = lines(stream.feed(sse(delta(content="The"), delta(content=" sky"))))
    assert [(line["response"], line["done"]) for line in out] == [("The", False), (" sky", False)]
    [done] = lines(stream.finish(103.0))
    parses("GenerateResponse", done)
    assert (done["response"], done["done"], done["done_reason"]) == ("", True, "stop")
    assert "message" not in done
    text = ChatStream("m", timing(), generate=True)  # raw: text completion chunks
    [line] = lines(
        text.feed(sse({"choices": [{"index": 0, "text": "raw!", "finish_reason": None}]}))
    )
    assert line["response"] == "raw!"


# --- embeddings -------------------------------------------------------------------------


def test_embed_request_and_response() -> None:
    assert ollama.embed_request({"model": "e", "input": "hi", "truncate": False}) == {
        "model": "e",
        "input": "hi",
        "encoding_format": "float",
    }
    assert ollama.embed_request({"model": "e", "input": ["a", "b"], "dimensions": 64}) == {
        "model": "e",
        "input": ["a", "b"],
        "encoding_format": "float",
        "dimensions": 64,
    }
    for bad in (
        {"model": "e"},
        {"model": "e", "input": [1]},
        {"model": "e", "input": "x", "dimensions": "8"},
    ):
        with pytest.raises(APIError):
            ollama.embed_request(bad)
    answer = {
        "object": "list",
        "model": "upstream",
        "usage": {"prompt_tokens": 4, "total_tokens": 4},
        "data": [
            {"object": "embedding", "index": 1, "embedding": [0.3, 0.4]},
            {"object": "embedding", "index": 0, "embedding": [0.1, 0.2]},
        ],
    }
    out = parses("EmbedResponse", ollama.embed_response(answer, "e:latest", timing()))
    assert out == {
        "model": "e:latest",
        "embeddings": [[0.1, 0.2], [0.3, 0.4]],
        "total_duration": 3_000_000_000,
        "load_duration": 500_000_000,
        "prompt_eval_count": 4,
    }


def test_legacy_embeddings() -> None:
    assert ollama.embeddings_request({"model": "e", "prompt": "text"}) == {
        "model": "e",
        "input": "text",
        "encoding_format": "float",
    }
    answer = {"data": [{"index": 0, "embedding": [0.5, -0.5]}]}
    assert parses("EmbeddingsResponse", ollama.embeddings_response(answer)) == {
        "embedding": [0.5, -0.5]
    }
    assert ollama.embeddings_response({"data": []}) == {"embedding": []}


# --- catalog ----------------------------------------------------------------------------


def status(name: str, state: str = "ready", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "state": state,
        "aliases": [],
        "memory_bytes": 1_000,
        "vram_bytes": 4_000,
        "idle_stop_at": None,
        "started_at": 1_700_000_000.5,
        "runtime": "process",
        **extra,
    }


def test_resolve_name() -> None:
    known = ["qwen3-8b", "llama3:8b", "Embed", "gemma", "Gemma"]
    assert ollama.resolve_name("qwen3-8b", known) == "qwen3-8b"
    assert ollama.resolve_name("qwen3-8b:latest", known) == "qwen3-8b"
    assert ollama.resolve_name("llama3:8b", known) == "llama3:8b"
    assert ollama.resolve_name("llama3", known) is None
    assert ollama.resolve_name("embed:latest", known) == "Embed"
    assert ollama.resolve_name("GEMMA", known) is None  # two names differ only by case
    assert ollama.resolve_name("x:latest", ["x:latest"]) == "x:latest"
    assert ollama.resolve_name("x", ["x:latest"]) == "x:latest"


def test_tags() -> None:
    out = parses(
        "ListResponse",
        ollama.tags(
            [
                status(
                    "qwen3-8b",
                    size_bytes=5_000_000_000,
                    modified_at=1_700_000_000,
                    family="qwen3",
                    parameter_size="8.2B",
                    quantization_level="Q4_K_M",
                ),
                status(
                    "cold", state="stopped", memory_bytes=None, vram_bytes=None, started_at=None
                ),
            ]
        ),
    )
    first, cold = out["models"]
    assert first["name"] == first["model"] == "qwen3-8b"
    assert first["size"] == 5_000_000_000
    assert first["modified_at"] == "2023-11-14T22:13:20Z"
    assert len(first["digest"]) == 64 and first["digest"] != cold["digest"]
    assert first["details"] == {
        "parent_model": "",
        "format": "gguf",
        "family": "qwen3",
        "families": ["qwen3"],
        "parameter_size": "8.2B",
        "quantization_level": "Q4_K_M",
    }
    assert (cold["size"], cold["modified_at"]) == (0, "1970-01-01T00:00:00Z")


def test_ps_lists_ready_models_with_expiry() -> None:
    out = parses(
        "ProcessResponse",
        ollama.ps(
            [
                status("busy"),
                status("idle", idle_stop_at=1_700_000_300.25, context_length=4096),
                status("off", state="stopped"),
                status("coming", state="starting"),
            ],
            now=1_700_000_000.0,
        ),
    )
    busy, idle = out["models"]
    assert (busy["name"], busy["size"], busy["size_vram"]) == ("busy", 5_000, 4_000)
    assert busy["expires_at"].startswith("2316-")  # now + Go's longest duration: "never"
    assert idle["expires_at"] == "2023-11-14T22:18:20.25Z"
    assert idle["context_length"] == 4096 and "context_length" not in busy


def test_show_and_version() -> None:
    out = parses(
        "ShowResponse",
        ollama.show(
            status(
                "qwen3-8b",
                model_path="/models/qwen3.gguf",
                architecture="qwen3",
                parameter_count=8_190_000_000,
                context_length=40960,
                embedding_length=4096,
                capabilities=["completion", "tools"],
            )
        ),
    )
    assert out["modelfile"].splitlines()[-1] == "FROM /models/qwen3.gguf"
    assert out["model_info"] == {
        "general.architecture": "qwen3",
        "general.parameter_count": 8_190_000_000,
        "qwen3.context_length": 40960,
        "qwen3.embedding_length": 4096,
    }
    assert out["capabilities"] == ["completion", "tools"]
    assert out["details"]["family"] == "qwen3"
    bare = parses("ShowResponse", ollama.show({"name": "e", "embedding": True}))
    assert bare["capabilities"] == ["embedding"]
    assert bare["model_info"] == {"general.architecture": ""}
    assert ollama.show({"name": "c"})["capabilities"] == ["completion"]
    assert ollama.version() == {"version": ollama.VERSION}
    assert tuple(map(int, ollama.VERSION.split("."))) >= (0, 6, 4)


def test_errors() -> None:
    assert ollama.error_body("nope") == {"error": "nope"}
    assert ollama.openai_error({"error": {"message": "bad", "type": "x"}}) == {"error": "bad"}
    assert ollama.openai_error({"error": "plain"}) == {"error": "plain"}
    assert ollama.openai_error("junk") == {"error": "upstream error"}
    for route in ollama.MANAGEMENT_ROUTES:
        message = ollama.management_error(route)["error"]
        assert message.startswith(
            f"{route} is not supported: models come from modelberth's config file"
        )


# --- the SDK's client, end to end through a mock transport --------------------------------


def fake_upstream(path: str, body: dict[str, Any]) -> bytes:
    """What an OpenAI server would answer the translated request with."""
    if path == ollama.EMBED_PATH:
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        return json.dumps(
            {
                "data": [{"index": i, "embedding": [float(i), 1.0]} for i in range(len(inputs))],
                "usage": {"prompt_tokens": 2},
            }
        ).encode()
    if body.get("tools"):
        message = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c",
                    "type": "function",
                    "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'},
                }
            ],
        }
        if body["stream"]:
            return sse(
                delta(
                    tool_calls=[
                        {
                            "index": 0,
                            "id": "c",
                            "function": {"name": "add", "arguments": '{"a": 1,'},
                        }
                    ]
                ),
                delta(tool_calls=[{"index": 0, "function": {"arguments": ' "b": 2}'}}]),
                delta(finish_reason="tool_calls"),
            )
        return json.dumps(completion(message, "tool_calls")).encode()
    if body["stream"]:
        return sse(
            delta(content="Hello"),
            delta(content=" there"),
            delta(finish_reason="stop"),
            {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}},
        )
    return json.dumps(completion({"role": "assistant", "content": "Hello there"})).encode()


def handler(request: httpx.Request) -> httpx.Response:
    path = request.url.path
    body = json.loads(request.content) if request.content else {}
    model = body.get("model") or body.get("name") or ""
    catalog = [
        status("qwen3-8b", capabilities=["completion", "tools"]),
        status("embed", embedding=True),
    ]
    if path == "/api/tags":
        return httpx.Response(200, json=ollama.tags(catalog))
    if path == "/api/ps":
        return httpx.Response(200, json=ollama.ps(catalog))
    if path == "/api/version":
        return httpx.Response(200, json=ollama.version())
    name = ollama.resolve_name(model, [m["name"] for m in catalog])
    if name is None:
        return httpx.Response(404, json=ollama.error_body(f"model '{model}' not found"))
    if path == "/api/show":
        return httpx.Response(200, json=ollama.show(next(m for m in catalog if m["name"] == name)))
    if path in ("/api/embed", "/api/embeddings"):
        legacy = path == "/api/embeddings"
        request_body = ollama.embeddings_request(body) if legacy else ollama.embed_request(body)
        answer = json.loads(fake_upstream(ollama.EMBED_PATH, request_body))
        return httpx.Response(
            200,
            json=ollama.embeddings_response(answer)
            if legacy
            else ollama.embed_response(answer, model, timing()),
        )
    generate = path == "/api/generate"
    translated = ollama.generate_request(body) if generate else ollama.chat_request(body)
    assert ollama.keep_alive_seconds(body.get("keep_alive")) in (None, 300.0)
    upstream = fake_upstream(ollama.CHAT_PATH, translated)
    if not translated["stream"]:
        build = ollama.generate_response if generate else ollama.chat_response
        return httpx.Response(200, json=build(json.loads(upstream), model, timing()))
    stream = ChatStream(model, timing(), generate=generate)
    out = b"".join(stream.feed(upstream[i : i + 7]) for i in range(0, len(upstream), 7))
    return httpx.Response(
        200, content=out + stream.finish(103.0), headers={"content-type": "application/x-ndjson"}
    )


def test_the_sdk_client_against_the_translation() -> None:
    client = sdk.Client(host="http://ollama.test", transport=httpx.MockTransport(handler))
    assert [m.model for m in client.list().models] == ["qwen3-8b", "embed"]
    assert [m.model for m in client.ps().models] == ["qwen3-8b", "embed"]
    assert client.show("qwen3-8b:latest").capabilities == ["completion", "tools"]
    answer = client.chat(
        model="qwen3-8b:latest",
        keep_alive="5m",
        messages=[{"role": "user", "content": "hi", "images": [PNG]}],
    )
    assert (answer.message.content, answer.done_reason, answer.eval_count) == (
        "Hello there",
        "stop",
        34,
    )
    parts = list(
        client.chat(model="qwen3-8b", stream=True, messages=[{"role": "user", "content": "hi"}])
    )
    assert "".join(p.message.content or "" for p in parts) == "Hello there"
    assert parts[-1].done and parts[-1].eval_count == 2 and parts[-1].prompt_eval_count == 5
    tools = [
        {
            "type": "function",
            "function": {
                "name": "add",
                "parameters": {
                    "type": "object",
                    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                },
            },
        }
    ]
    for streamed in (False, True):
        result = client.chat(
            model="qwen3-8b",
            tools=tools,
            stream=streamed,
            messages=[{"role": "user", "content": "1+2?"}],
        )
        parts = list(result) if streamed else [result]
        calls = [c for p in parts for c in (p.message.tool_calls or [])]
        assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [
            ("add", {"a": 1, "b": 2})
        ]
    follow_up = client.chat(
        model="qwen3-8b",
        messages=[
            {"role": "user", "content": "1+2?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"function": {"name": "add", "arguments": {"a": 1, "b": 2}}}],
            },
            {"role": "tool", "content": "3", "tool_name": "add"},
        ],
    )
    assert follow_up.message.content == "Hello there"
    generated = client.generate(model="qwen3-8b", prompt="hi", system="sys")
    assert generated.response == "Hello there"
    assert (
        "".join(p.response for p in client.generate(model="qwen3-8b", prompt="hi", stream=True))
        == "Hello there"
    )
    embedded = client.embed(model="embed", input=["a", "b"])
    assert [list(e) for e in embedded.embeddings] == [[0.0, 1.0], [1.0, 1.0]]
    assert list(client.embeddings(model="embed", prompt="a").embedding) == [0.0, 1.0]
    with pytest.raises(sdk.ResponseError) as caught:
        client.chat(model="missing", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 404 and "missing" in caught.value.error
