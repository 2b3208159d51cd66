"""Reading token usage from answers as they stream past, without holding them."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from modelberth.telemetry.observe import Usage, UsageReader, usage_of_answer


def feed(reader: UsageReader, body: bytes, size: int = 4096) -> None:
    for start in range(0, len(body), size):
        reader.feed(body[start : start + size])


def test_a_small_body_is_read_whole() -> None:
    body = json.dumps(
        {
            "id": "c1",
            "model": "tiny",
            "choices": [],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3},
        }
    ).encode()
    reader = UsageReader(streaming=False)
    feed(reader, body, size=10)
    usage = reader.result()
    assert (usage.model, usage.input_tokens, usage.output_tokens) == ("tiny", 7, 3)


def test_a_large_body_is_read_from_its_tail_in_bounded_memory() -> None:
    rows = [
        {"object": "embedding", "index": i, "embedding": [random.random() for _ in range(1536)]}
        for i in range(20)
    ]
    body = json.dumps(
        {
            "object": "list",
            "data": rows,
            "model": "embedder",
            "usage": {"prompt_tokens": 120, "total_tokens": 120},
        }
    ).encode()
    assert len(body) > 500_000
    reader = UsageReader(streaming=False)
    largest = 0
    for start in range(0, len(body), 4096):
        reader.feed(body[start : start + 4096])
        largest = max(largest, len(reader._kept))
    assert largest <= 64 * 1024 + 4096  # never the whole body
    usage = reader.result()
    assert (usage.model, usage.input_tokens, usage.output_tokens) == ("embedder", 120, None)


def test_llama_cpp_timings_are_found_in_a_large_body() -> None:
    text = "word " * 40_000
    body = json.dumps(
        {
            "choices": [{"message": {"content": text}}],
            "model": "m",
            "timings": {"prompt_n": 5, "predicted_n": 9, "predicted_per_second": 41.5},
        }
    ).encode()
    reader = UsageReader(streaming=False)
    feed(reader, body)
    usage = reader.result()
    assert (usage.input_tokens, usage.output_tokens, usage.tokens_per_second) == (5, 9, 41.5)


def test_a_quoted_key_inside_content_is_not_taken_for_the_field() -> None:
    text = 'he said "usage": 1 and "model": "x" ' * 3000
    body = json.dumps(
        {
            "choices": [{"message": {"content": text}}],
            "model": "real",
            "usage": {"prompt_tokens": 2, "completion_tokens": 4},
        }
    ).encode()
    reader = UsageReader(streaming=False)
    feed(reader, body)
    usage = reader.result()
    assert (usage.model, usage.input_tokens, usage.output_tokens) == ("real", 2, 4)


def test_a_body_that_is_not_json_gives_no_usage() -> None:
    for body in (b"not json", b"x" * 200_000):
        reader = UsageReader(streaming=False)
        feed(reader, body)
        usage = reader.result()
        assert (usage.model, usage.input_tokens, usage.output_tokens) == (None, None, None)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ({"model": "m", "usage": {"prompt_tokens": 3, "completion_tokens": 1}}, Usage(3, 1, "m")),
        (
            {
                "model": "m",
                "usage": {"prompt_tokens": 3, "completion_tokens": 1},
                "timings": {"prompt_n": 9, "predicted_n": 9, "predicted_per_second": 40},
            },
            Usage(3, 1, "m", 40.0),
        ),
        (
            {"model": "", "usage": None, "timings": {"prompt_n": 5, "predicted_n": 7}},
            Usage(5, 7, None),
        ),
        ({"usage": {"prompt_tokens": 0, "completion_tokens": 0}}, Usage()),
        # Unusual types take the general path and give what it always gave.
        (
            {
                "model": "m",
                "usage": {"prompt_tokens": "3", "completion_tokens": True},
                "timings": {"prompt_n": 4},
            },
            Usage(4, None, "m"),
        ),
        (
            {
                "model": "m",
                "usage": {"prompt_tokens": 2.0, "completion_tokens": 1},
                "timings": {"predicted_per_second": "fast"},
            },
            Usage(None, 1, "m"),
        ),
        ({"model": 5, "usage": [1], "timings": [2]}, Usage(model=5)),  # type: ignore[arg-type]
    ],
)
def test_usage_is_read_alike_from_answers_of_any_shape(
    answer: dict[str, Any], expected: Usage
) -> None:
    assert usage_of_answer(json.dumps(answer).encode()) == expected


def stream(count: int, usage: bool) -> bytes:
    events = [
        f'data: {{"model": "m", "choices": [{{"delta": {{"content": "t{i}"}}}}]}}\n\n'
        for i in range(count)
    ]
    if usage:
        events.append(
            'data: {"model": "m", "choices": [], "usage": '
            f'{{"prompt_tokens": 4, "completion_tokens": {count}}}}}\n\n'
        )
    return ("".join(events) + "data: [DONE]\n\n").encode()


def test_a_stream_reads_the_final_usage_event() -> None:
    reader = UsageReader(streaming=True)
    feed(reader, stream(3000, usage=True), size=100)
    usage = reader.result()
    assert (usage.model, usage.input_tokens, usage.output_tokens) == ("m", 4, 3000)


def test_stream_events_are_counted_however_the_chunks_split_them() -> None:
    for size in (1, 7, 100, 65536):
        reader = UsageReader(streaming=True)
        feed(reader, stream(300, usage=False), size=size)
        assert reader.content_events == 300, size
        assert reader.result().output_tokens == 300  # no usage reported: one per event


def test_usage_of_every_format() -> None:
    """Responses and Anthropic report input_tokens/output_tokens; Anthropic counts cached
    prompt tokens apart (cache_read_input_tokens), and they were processed too."""
    anthropic_answer = json.dumps(
        {
            "type": "message",
            "model": "m",
            "usage": {
                "input_tokens": 5,
                "cache_read_input_tokens": 100,
                "cache_creation_input_tokens": 2,
                "output_tokens": 7,
            },
        }
    ).encode()
    usage = usage_of_answer(anthropic_answer)
    assert (usage.input_tokens, usage.output_tokens) == (107, 7)
    responses = json.dumps(
        {
            "object": "response",
            "usage": {"input_tokens": 22, "output_tokens": 8, "total_tokens": 30},
        }
    ).encode()
    assert (usage_of_answer(responses).input_tokens, usage_of_answer(responses).output_tokens) == (
        22,
        8,
    )

    reader = UsageReader(True)
    events = [{"type": "response.created", "response": {"usage": None}}]
    events += [{"type": "response.output_text.delta", "delta": "x" * 2000}] * 40
    events += [
        {
            "type": "response.completed",
            "response": {"usage": {"input_tokens": 22, "output_tokens": 40}},
        }
    ]
    for event in events:
        reader.feed(b"event: e\ndata: " + json.dumps(event).encode() + b"\n\n")
    assert (reader.result().input_tokens, reader.result().output_tokens) == (22, 40)

    # A long Anthropic stream: input in message_start (its first event), output at the end.
    reader = UsageReader(True)
    start = {
        "type": "message_start",
        "message": {
            "model": "m",
            "usage": {"input_tokens": 9, "cache_read_input_tokens": 3, "output_tokens": 1},
        },
    }
    reader.feed(b"event: message_start\ndata: " + json.dumps(start).encode() + b"\n\n")
    delta = {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": "y" * 1000},
    }
    for _ in range(60):
        reader.feed(b"event: content_block_delta\ndata: " + json.dumps(delta).encode() + b"\n\n")
    end = {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn"},
        "usage": {"output_tokens": 60},
    }
    reader.feed(b"event: message_delta\ndata: " + json.dumps(end).encode() + b"\n\n")
    assert (reader.result().input_tokens, reader.result().output_tokens) == (12, 60)
