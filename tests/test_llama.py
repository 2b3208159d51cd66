"""End to end through a real llama-server serving a generated GGUF, with the openai client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from conftest import Modelberth, llama_command


@pytest.fixture
def served(modelberth: Any, tiny_model: Path) -> Iterator[tuple[Modelberth, openai.OpenAI]]:
    mb: Modelberth = modelberth(
        {
            "models": {
                "tiny": {
                    "command": llama_command(tiny_model, "--embeddings", "--pooling", "mean"),
                    "aliases": ["gpt-4o-mini"],
                },
            }
        }
    )
    with openai.OpenAI(base_url=mb.url + "/v1", api_key="unused", max_retries=0) as client:
        yield mb, client


def test_chat_completion(served: tuple[Modelberth, openai.OpenAI]) -> None:
    mb, client = served
    reply = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hello"}], max_tokens=12
    )
    assert reply.choices[0].message.role == "assistant"
    assert isinstance(reply.choices[0].message.content, str)
    assert reply.usage is not None
    assert reply.usage.completion_tokens > 0
    assert mb.status("tiny")["state"] == "ready"


def test_streamed_chat_arrives_in_many_chunks(served: tuple[Modelberth, openai.OpenAI]) -> None:
    _, client = served
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Tell me a story"}],
        max_tokens=16,
        stream=True,
    )
    chunks = list(stream)
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(texts) >= 4
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)


def test_text_completion(served: tuple[Modelberth, openai.OpenAI]) -> None:
    _, client = served
    reply = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=8)
    assert isinstance(reply.choices[0].text, str)
    assert reply.usage is not None
    assert reply.usage.completion_tokens > 0


def test_embeddings(served: tuple[Modelberth, openai.OpenAI]) -> None:
    _, client = served
    result = client.embeddings.create(model="tiny", input=["hello", "world"])
    assert [item.index for item in result.data] == [0, 1]
    assert len(result.data[0].embedding) == 64
    assert result.data[0].embedding != result.data[1].embedding


def test_model_list_and_unknown_model(served: tuple[Modelberth, openai.OpenAI]) -> None:
    _, client = served
    ids = {model.id for model in client.models.list()}
    assert ids == {"tiny", "gpt-4o-mini"}
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert caught.value.code == "model_not_found"
    assert caught.value.status_code == 404


def test_restart_keeps_serving(served: tuple[Modelberth, openai.OpenAI]) -> None:
    mb, client = served
    client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "a"}], max_tokens=4
    )
    first = mb.status("tiny")["runtime_id"]
    with mb.client() as admin:
        assert admin.post("/api/models/tiny/restart").json()["state"] == "ready"
    assert mb.status("tiny")["runtime_id"] != first
    reply = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "b"}], max_tokens=4
    )
    assert reply.choices
