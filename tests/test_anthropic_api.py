"""POST /v1/messages and /v1/messages/count_tokens (issue #18) with the official `anthropic`
SDK as the client, against a real modelberth: translated for an OpenAI-only upstream
(tests/fake_upstream.py), and passed through to the real tiny llama-server, which speaks
Anthropic's API itself."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from conftest import Modelberth, fake_model, llama_command
from test_telemetry import scrape

WEATHER: Any = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def client(mb: Modelberth, key: str = "unused") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=mb.url, api_key=key, max_retries=0, timeout=60)


def text(message: anthropic.types.Message, index: int = 0) -> str:
    block = message.content[index]
    assert isinstance(block, anthropic.types.TextBlock), block
    return block.text


@pytest.fixture
def translated(modelberth: Any) -> Modelberth:
    mb: Modelberth = modelberth({"models": {"m": fake_model(aliases=["claude-local"])}})
    return mb


def test_messages_are_translated_for_an_openai_only_upstream(translated: Modelberth) -> None:
    message = client(translated).messages.create(
        model="claude-local",
        max_tokens=64,
        system="Be brief.",
        messages=[{"role": "user", "content": "Hi"}],
    )
    assert message.model == "claude-local"  # the name as the client sent it
    assert message.role == "assistant" and message.stop_reason == "end_turn"
    assert text(message) == "hello"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (3, 1)

    with client(translated).messages.stream(
        model="m", max_tokens=64, messages=[{"role": "user", "content": "Hi"}]
    ) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert texts == [f"tok{i} " for i in range(5)]
    assert final.model == "m" and text(final) == "tok0 tok1 tok2 tok3 tok4 "
    assert final.stop_reason == "end_turn"
    samples = scrape(translated)
    assert samples[("modelberth_tokens_total", (("model", "m"), ("type", "input")))] == 3
    assert samples[("modelberth_tokens_total", (("model", "m"), ("type", "output")))] == 6


@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_call_round_trip(translated: Modelberth, stream: bool) -> None:
    sdk = client(translated)
    ask: list[Any] = [{"role": "user", "content": "Weather in Oslo?"}]
    first: anthropic.types.Message
    if stream:
        with sdk.messages.stream(model="m", max_tokens=64, tools=[WEATHER], messages=ask) as events:
            first = events.get_final_message()
    else:
        first = sdk.messages.create(model="m", max_tokens=64, tools=[WEATHER], messages=ask)
    assert first.stop_reason == "tool_use"
    (call,) = [b for b in first.content if isinstance(b, anthropic.types.ToolUseBlock)]
    assert call.name == "get_weather" and call.input == {"city": "Oslo"}
    assert first.usage.output_tokens == 5

    turns: list[Any] = [
        *ask,
        {"role": "assistant", "content": [block.model_dump() for block in first.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "12 degrees"}],
        },
    ]
    answer = sdk.messages.create(model="m", max_tokens=64, tools=[WEATHER], messages=turns)
    assert text(answer) == "the tool said: 12 degrees"


def test_errors_have_anthropics_shape_and_the_server_keeps_serving(translated: Modelberth) -> None:
    sdk = client(translated)
    with pytest.raises(anthropic.NotFoundError) as missing:
        sdk.messages.create(model="nope", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    assert missing.value.body == {
        "type": "error",
        "error": {
            "type": "not_found_error",
            "message": "The model 'nope' does not exist or is not configured in modelberth.",
        },
    }
    raw = httpx.post(
        translated.url + "/v1/messages",
        timeout=10,
        json={"model": "m", "messages": [{"role": "user", "content": "no max_tokens"}]},
    )
    assert raw.status_code == 400
    assert raw.json()["type"] == "error"
    assert raw.json()["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in raw.json()["error"]["message"]
    broken = httpx.post(translated.url + "/v1/messages", content=b"{not json", timeout=10)
    assert broken.status_code == 400 and broken.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.APIStatusError) as no_tokenizer:
        sdk.messages.count_tokens(model="m", messages=[{"role": "user", "content": "x"}])
    assert no_tokenizer.value.status_code == 501
    assert no_tokenizer.value.body["error"]["type"] == "api_error"  # type: ignore[index]
    assert "/tokenize" in no_tokenizer.value.body["error"]["message"]  # type: ignore[index]
    # OpenAI routes keep OpenAI's error shape.
    openai_404 = httpx.post(
        translated.url + "/v1/chat/completions", timeout=10, json={"model": "nope", "messages": []}
    )
    assert openai_404.json()["error"]["code"] == "model_not_found"
    assert (
        text(
            sdk.messages.create(
                model="m", max_tokens=8, messages=[{"role": "user", "content": "still there?"}]
            )
        )
        == "hello"
    )


def test_anthropic_clients_keys_are_accepted(modelberth: Any) -> None:
    mb = modelberth({"server": {"api_keys": ["secret"]}, "models": {"m": fake_model()}})
    with pytest.raises(anthropic.AuthenticationError) as refused:
        client(mb, "wrong").messages.create(
            model="m", max_tokens=8, messages=[{"role": "user", "content": "x"}]
        )
    assert refused.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    # The SDK sends x-api-key and anthropic-version.
    message = client(mb, "secret").messages.create(
        model="m", max_tokens=8, messages=[{"role": "user", "content": "x"}]
    )
    assert text(message) == "hello"


@pytest.fixture
def llama(modelberth: Any, tiny_model: Path) -> Iterator[Modelberth]:
    yield modelberth(
        {
            "models": {
                "tiny": {"command": llama_command(tiny_model), "anthropic": "native"},
                "tiny-translated": {"command": llama_command(tiny_model), "anthropic": "translate"},
            }
        }
    )


def test_llama_server_speaks_messages_itself_and_counts_tokens(llama: Modelberth) -> None:
    sdk = client(llama)
    message = sdk.messages.create(
        model="tiny", max_tokens=8, messages=[{"role": "user", "content": "Hello"}]
    )
    assert message.type == "message" and isinstance(text(message), str)
    assert message.usage.output_tokens > 0
    with sdk.messages.stream(
        model="tiny", max_tokens=8, messages=[{"role": "user", "content": "Hello"}]
    ) as stream:
        final = stream.get_final_message()
    assert final.usage.output_tokens > 0
    native = sdk.messages.count_tokens(
        model="tiny", messages=[{"role": "user", "content": "Hello there"}]
    )
    assert native.input_tokens > 2

    # Translated, against the same server: chat completions and /tokenize.
    translated = sdk.messages.create(
        model="tiny-translated", max_tokens=8, messages=[{"role": "user", "content": "Hello"}]
    )
    assert translated.model == "tiny-translated" and translated.usage.output_tokens > 0
    counted = sdk.messages.count_tokens(
        model="tiny-translated", messages=[{"role": "user", "content": "Hello there"}]
    )
    assert counted.input_tokens > 2
