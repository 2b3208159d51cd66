"""The Responses API passed through (issue #18 item 3) with the `openai` SDK's Responses
client, and token accounting for every format (item 5): the tokens modelberth counts equal
what the upstream reported, for Responses and Anthropic answers, streamed and not. Against
the real tiny llama-server, which speaks both."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from conftest import Modelberth, llama_command
from test_telemetry import scrape


@pytest.fixture
def mb(modelberth: Any, tiny_model: Path) -> Iterator[Modelberth]:
    yield modelberth(
        {"models": {"tiny": {"command": llama_command(tiny_model), "anthropic": "native"}}}
    )


def tokens(mb: Modelberth) -> tuple[float, float]:
    samples = scrape(mb)
    return (
        samples.get(("modelberth_tokens_total", (("model", "tiny"), ("type", "input"))), 0),
        samples.get(("modelberth_tokens_total", (("model", "tiny"), ("type", "output"))), 0),
    )


def test_responses_pass_through_and_their_tokens_are_counted(mb: Modelberth) -> None:
    client = openai.OpenAI(base_url=mb.url + "/v1", api_key="unused", max_retries=0)
    before = tokens(mb)
    answer = client.responses.create(model="tiny", input="Hello", max_output_tokens=8)
    assert answer.model == "tiny" and answer.usage is not None
    assert answer.usage.output_tokens > 0
    after = tokens(mb)
    assert after[0] - before[0] == answer.usage.input_tokens
    assert after[1] - before[1] == answer.usage.output_tokens

    completed = None
    for event in client.responses.create(
        model="tiny", input="Hello", max_output_tokens=8, stream=True
    ):
        if event.type == "response.completed":
            completed = event.response
    assert completed is not None and completed.model == "tiny"
    assert completed.usage is not None
    streamed = tokens(mb)
    assert streamed[0] - after[0] == completed.usage.input_tokens
    assert streamed[1] - after[1] == completed.usage.output_tokens

    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="nope", input="Hello")
    assert client.responses.create(model="tiny", input="again", max_output_tokens=4).model == "tiny"


def test_anthropic_answers_tokens_are_counted(mb: Modelberth) -> None:
    client = anthropic.Anthropic(base_url=mb.url, api_key="unused", max_retries=0)
    before = tokens(mb)
    message = client.messages.create(
        model="tiny", max_tokens=8, messages=[{"role": "user", "content": "Hello"}]
    )
    usage = message.usage
    prompt = (
        usage.input_tokens
        + (usage.cache_read_input_tokens or 0)
        + (usage.cache_creation_input_tokens or 0)
    )
    after = tokens(mb)
    assert (after[0] - before[0], after[1] - before[1]) == (prompt, usage.output_tokens)

    with client.messages.stream(
        model="tiny", max_tokens=8, messages=[{"role": "user", "content": "Hello"}]
    ) as stream:
        final = stream.get_final_message()
    streamed = tokens(mb)
    prompt = (
        final.usage.input_tokens
        + (final.usage.cache_read_input_tokens or 0)
        + (final.usage.cache_creation_input_tokens or 0)
    )
    assert (streamed[0] - after[0], streamed[1] - after[1]) == (prompt, final.usage.output_tokens)
