"""Answers carry the model name the client sent (issue #18 item 1), alias included, on every
route, in JSON and in every SSE event; `use_upstream_model_name: true` keeps the upstream's.
A real modelberth over loopback; the fake upstream reports a file path as its model, as
llama-server does, and the real tiny llama-server is checked too."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from conftest import Modelberth, fake_model, llama_command
from modelberth.proxy.naming import ModelNamer

SERVED = "/models/weights-Q4_K_M.gguf"


@pytest.fixture
def mb(modelberth: Any) -> Modelberth:
    server: Modelberth = modelberth(
        {
            "models": {
                "m": fake_model(None, "--served-name", SERVED, aliases=["gpt-4o-mini"]),
                "raw": fake_model(None, "--served-name", SERVED, use_upstream_model_name=True),
            }
        }
    )
    return server


def test_answers_carry_the_name_sent_json_and_every_sse_event(mb: Modelberth) -> None:
    client = openai.OpenAI(base_url=mb.url + "/v1", api_key="unused", max_retries=0)
    chat = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    assert chat.model == "gpt-4o-mini"  # the alias stays the alias
    assert client.chat.completions.create(model="m", messages=[]).model == "m"
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=[], stream=True)
    models = {event.model for event in stream}
    assert models == {"gpt-4o-mini"}
    assert client.completions.create(model="m", prompt="x").model == "m"
    assert client.chat.completions.create(model="raw", messages=[]).model == SERVED
    raw_stream = client.chat.completions.create(model="raw", messages=[], stream=True)
    assert {event.model for event in raw_stream} == {SERVED}


def test_the_raw_passthrough_is_left_alone(mb: Modelberth) -> None:
    with mb.client() as client:
        answer = client.post("/upstream/m/v1/chat/completions", json={"model": "m", "messages": []})
    assert answer.json()["model"] == SERVED


def test_renaming_survives_any_split_of_the_stream() -> None:
    body = (
        b'data: {"id":"1","model":"/a/b.gguf","choices":[]}\n\n'
        b'data: {"response":{"model" : "x\\"y","output":[]},"model":"z"}\n\n'
        b"data: [DONE]\n\n"
    )
    expected = (
        body.replace(b'"model":"/a/b.gguf"', b'"model":"tiny"')
        .replace(b'"model" : "x\\"y"', b'"model":"tiny"')
        .replace(b'"model":"z"', b'"model":"tiny"')
    )
    for sse in (True, False):
        for size in (1, 2, 7, 1000):
            namer = ModelNamer("tiny", sse)
            out = b"".join(namer.feed(body[i : i + size]) for i in range(0, len(body), size))
            assert out + namer.finish() == expected, (sse, size)
    # A quote inside a string is escaped: text that mentions "model" is not a key.
    text = json.dumps({"content": 'say "model": "x"', "model": "up"}).encode()
    assert json.loads(ModelNamer("tiny", False).whole(text)) == {
        "content": 'say "model": "x"',
        "model": "tiny",
    }


def test_llama_server_answers_under_the_configured_name(modelberth: Any, tiny_model: Path) -> None:
    mb = modelberth(
        {
            "models": {
                "tiny": {
                    "command": llama_command(tiny_model),
                    "anthropic": "native",
                    "aliases": ["claude-3-haiku"],
                }
            }
        }
    )
    client = openai.OpenAI(base_url=mb.url + "/v1", api_key="unused", max_retries=0)
    assert (
        client.chat.completions.create(
            model="tiny", max_tokens=4, messages=[{"role": "user", "content": "hi"}]
        ).model
        == "tiny"
    )
    events = client.chat.completions.create(
        model="tiny", max_tokens=4, stream=True, messages=[{"role": "user", "content": "hi"}]
    )
    assert {event.model for event in events} == {"tiny"}
    messages = anthropic.Anthropic(base_url=mb.url, api_key="unused", max_retries=0)
    native = messages.messages.create(
        model="claude-3-haiku", max_tokens=4, messages=[{"role": "user", "content": "hi"}]
    )
    assert native.model == "claude-3-haiku"
    with messages.messages.stream(
        model="claude-3-haiku", max_tokens=4, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        assert stream.get_final_message().model == "claude-3-haiku"


def test_loading_shows_as_reasoning_when_asked(modelberth: Any) -> None:
    """`loading_status: reasoning`: a streamed chat waiting for a cold model gets the
    progress as reasoning_content deltas (what chat UIs show as thinking), then the answer;
    the default stays SSE comments, which SDKs skip."""
    mb = modelberth(
        {
            "server": {"stream_keepalive": 0.3},
            "models": {
                "slow": fake_model(
                    None, "--start-delay", "1.2", loading_status="reasoning", aliases=["gpt-slow"]
                ),
                "plain": fake_model(None, "--start-delay", "1.2"),
            },
        }
    )
    client = openai.OpenAI(base_url=mb.url + "/v1", api_key="unused", max_retries=0)
    reasoning: list[str] = []
    content: list[str] = []
    models = set()
    for event in client.chat.completions.create(model="gpt-slow", messages=[], stream=True):
        models.add(event.model)
        delta = event.choices[0].delta
        thought = getattr(delta, "reasoning_content", None)  # an extra field of the SDK's
        if thought:
            reasoning.append(thought)
        if delta.content:
            content.append(delta.content)
    assert len(reasoning) >= 2 and reasoning[0].startswith("Loading slow... 0.")
    assert "".join(content) == "tok0 tok1 tok2 tok3 tok4 " and models == {"gpt-slow"}
    plain = client.chat.completions.create(model="plain", messages=[], stream=True)
    deltas = [event.choices[0].delta for event in plain]
    assert not any(getattr(d, "reasoning_content", None) for d in deltas)
    assert "".join(d.content or "" for d in deltas) == "tok0 tok1 tok2 tok3 tok4 "
