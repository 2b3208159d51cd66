"""Ollama's API (issue #18) with the official `ollama` SDK as the client, against a real
modelberth: translated for the OpenAI-only fake upstream (tests/fake_upstream.py) and for
the real tiny llama-server; its catalog, keep_alive, preloads, errors, keys, metrics, and
server.ollama_port."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

from conftest import Modelberth, fake_model, free_port, llama_command, wait_for
from test_telemetry import scrape

WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def client(mb: Modelberth | str, key: str | None = None) -> ollama.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return ollama.Client(host=mb if isinstance(mb, str) else mb.url, headers=headers, timeout=60)


@pytest.fixture
def fake(modelberth: Any) -> Modelberth:
    mb: Modelberth = modelberth(
        {"models": {"m": fake_model(aliases=["local"]), "other": fake_model()}}
    )
    return mb


def test_chat_and_generate_whole_and_streamed(fake: Modelberth) -> None:
    sdk = client(fake)
    answer = sdk.chat(
        model="m",
        messages=[{"role": "user", "content": "Hi"}],
        stream=False,
        options={"temperature": 0.2, "num_predict": 16},
    )
    assert answer.model == "m" and answer.message.content == "hello"
    assert answer.done and answer.done_reason == "stop"
    assert (answer.prompt_eval_count, answer.eval_count) == (3, 1)
    assert answer.total_duration and answer.total_duration > 0
    assert answer.load_duration is not None

    parts = list(sdk.chat(model="m", messages=[{"role": "user", "content": "Hi"}], stream=True))
    assert [p.message.content for p in parts[:-1]] == [f"tok{i} " for i in range(5)]
    assert all(not p.done for p in parts[:-1])
    last = parts[-1]
    assert last.done and last.done_reason == "stop" and last.eval_count == 5
    assert last.total_duration and last.eval_duration is not None
    assert all(p.model == "m" for p in parts)

    made = sdk.generate(model="local", prompt="Hi", system="Be brief.", stream=False)
    assert made.model == "local" and made.response == "hello" and made.done
    pieces = list(sdk.generate(model="m", prompt="Hi", stream=True))
    assert "".join(p.response or "" for p in pieces) == "tok0 tok1 tok2 tok3 tok4 "
    assert pieces[-1].done and pieces[-1].done_reason == "stop"

    samples = scrape(fake)
    assert samples[("modelberth_tokens_total", (("model", "m"), ("type", "input")))] == 6
    assert samples[("modelberth_tokens_total", (("model", "m"), ("type", "output")))] == 12


@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_call_round_trip(fake: Modelberth, stream: bool) -> None:
    sdk = client(fake)
    ask: list[Any] = [{"role": "user", "content": "Weather in Oslo?"}]
    if stream:
        parts = list(sdk.chat(model="m", messages=ask, tools=[WEATHER], stream=True))
        calls = [c for p in parts for c in p.message.tool_calls or []]
        first = parts[-1]
    else:
        first = sdk.chat(model="m", messages=ask, tools=[WEATHER])
        calls = list(first.message.tool_calls or [])
    (call,) = calls
    assert call.function.name == "get_weather" and call.function.arguments == {"city": "Oslo"}
    assert first.done and first.eval_count == 5
    turns = [
        *ask,
        {"role": "assistant", "content": "", "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_name": "get_weather", "content": "12 degrees"},
    ]
    answer = sdk.chat(model="m", messages=turns, tools=[WEATHER])
    assert answer.message.content == "the tool said: 12 degrees"


def test_embeddings(fake: Modelberth) -> None:
    sdk = client(fake)
    embedded = sdk.embed(model="m", input=["one", "three words here"])
    assert embedded.model == "m"
    assert [list(v) for v in embedded.embeddings] == [[3.0, 1.0, 0.5], [16.0, 1.0, 0.5]]
    assert embedded.prompt_eval_count == 4
    legacy = sdk.embeddings(model="m", prompt="abc")
    assert list(legacy.embedding) == [3.0, 1.0, 0.5]


def test_catalog(fake: Modelberth) -> None:
    sdk = client(fake)
    assert httpx.get(fake.url + "/api/version", timeout=10).json()["version"]
    assert httpx.head(fake.url + "/api/version", timeout=10).status_code == 200
    assert [m.model for m in sdk.list().models] == ["m", "other"]
    assert sdk.ps().models == []
    sdk.chat(model="m:latest", messages=[{"role": "user", "content": "Hi"}], keep_alive="1h")
    (running,) = sdk.ps().models
    assert running.model == "m" and running.expires_at is not None
    expires = running.expires_at - datetime.now(UTC)
    assert timedelta(minutes=59) < expires <= timedelta(hours=1)
    assert fake.status("m")["idle_stop_at"] is not None
    shown = sdk.show("m:latest")
    assert shown.capabilities == ["completion"] and shown.modelfile
    with pytest.raises(ollama.ResponseError) as missing:
        sdk.show("nope")
    assert missing.value.status_code == 404 and missing.value.error == "model 'nope' not found"


def test_keep_alive_zero_stops_the_model_after_the_answer(fake: Modelberth) -> None:
    sdk = client(fake)
    answer = sdk.chat(model="m", messages=[{"role": "user", "content": "Hi"}], keep_alive=0)
    assert answer.message.content == "hello"
    wait_for(lambda: fake.status("m")["state"] == "stopped")
    # The next start goes back to idle_timeout: the keep_alive was for that upstream.
    sdk.chat(model="m", messages=[{"role": "user", "content": "Hi"}])
    time.sleep(0.3)
    assert fake.status("m")["state"] == "ready"


def test_an_empty_prompt_preloads_and_keep_alive_zero_unloads(fake: Modelberth) -> None:
    sdk = client(fake)
    loaded = sdk.generate(model="m", prompt="")
    assert loaded.done and loaded.done_reason == "load" and loaded.response == ""
    assert fake.status("m")["state"] == "ready"
    chat_loaded = sdk.chat(model="other", messages=[])
    assert chat_loaded.done_reason == "load" and fake.status("other")["state"] == "ready"
    unloaded = sdk.generate(model="m", prompt="", keep_alive=0)
    assert unloaded.done_reason == "unload"
    wait_for(lambda: fake.status("m")["state"] == "stopped")
    # Unloading a model that is not running does not start it.
    assert sdk.generate(model="m", keep_alive=0).done_reason == "unload"
    time.sleep(0.2)
    assert fake.status("m")["state"] == "stopped"
    assert fake.status("other")["state"] == "ready"


def test_errors_have_ollamas_shape_and_the_server_keeps_serving(fake: Modelberth) -> None:
    sdk = client(fake)
    with pytest.raises(ollama.ResponseError) as missing:
        sdk.chat(model="nope", messages=[{"role": "user", "content": "x"}])
    assert missing.value.status_code == 404
    assert (
        missing.value.error == "The model 'nope' does not exist or is not configured in modelberth."
    )
    with pytest.raises(ollama.ResponseError) as streamed_missing:
        list(sdk.generate(model="nope", prompt="x", stream=True))
    assert streamed_missing.value.status_code == 404
    refusals: list[Callable[[], Any]] = [
        lambda: sdk.pull("m"),
        lambda: sdk.push("m"),
        lambda: sdk.delete("m"),
        lambda: sdk.copy("m", "n"),
        lambda: sdk.create("n", from_="m"),
    ]
    for call in refusals:
        with pytest.raises(ollama.ResponseError) as refused:
            call()
        assert refused.value.status_code == 501
        assert "models come from modelberth's config file" in refused.value.error
    bad = httpx.post(
        fake.url + "/api/chat", timeout=10, json={"model": "m", "messages": "not a list"}
    )
    assert bad.status_code == 400 and isinstance(bad.json()["error"], str)
    broken = httpx.post(fake.url + "/api/generate", content=b"{not json", timeout=10)
    assert broken.status_code == 400 and isinstance(broken.json()["error"], str)
    wrong = httpx.get(fake.url + "/api/chat", timeout=10)
    assert wrong.status_code == 405 and isinstance(wrong.json()["error"], str)
    # The management API keeps its own routes and shape.
    assert httpx.get(fake.url + "/api/models/m", timeout=10).json()["name"] == "m"
    assert sdk.chat(model="m", messages=[{"role": "user", "content": "x"}]).done


def test_inference_keys_and_the_ollama_port(modelberth: Any) -> None:
    port = free_port()
    mb = modelberth(
        {"server": {"api_keys": ["secret"], "ollama_port": port}, "models": {"m": fake_model()}}
    )
    calls: list[Callable[[ollama.Client], Any]] = [
        lambda sdk: sdk.list(),
        lambda sdk: sdk.chat(model="m", messages=[{"role": "user", "content": "x"}]),
    ]
    for call in calls:
        with pytest.raises(ollama.ResponseError) as refused:
            call(client(mb, "wrong"))
        assert refused.value.status_code == 401 and isinstance(refused.value.error, str)
    assert (
        client(mb, "secret")
        .chat(model="m", messages=[{"role": "user", "content": "x"}])
        .message.content
        == "hello"
    )
    other = client(f"http://127.0.0.1:{port}", "secret")
    assert [m.model for m in other.list().models] == ["m"]
    assert other.generate(model="m", prompt="x", stream=False).response == "hello"
    assert f"127.0.0.1:{port}" in wait_for(
        lambda: next(
            (line for line in mb.log().splitlines() if "modelberth listening on" in line), None
        )
    )


@pytest.fixture
def llama(modelberth: Any, tiny_model: Path) -> Iterator[Modelberth]:
    yield modelberth(
        {
            "models": {
                "tiny": {"command": llama_command(tiny_model)},
                "tiny-embed": {
                    "command": llama_command(tiny_model, "--embeddings", "--pooling", "mean")
                },
            }
        }
    )


def test_against_llama_server(llama: Modelberth) -> None:
    sdk = client(llama)
    answer = sdk.chat(
        model="tiny",
        messages=[{"role": "user", "content": "Hello"}],
        options={"num_predict": 8, "temperature": 0, "stop": ["\n\n"]},
    )
    assert answer.done and answer.eval_count and 0 < answer.eval_count <= 8
    assert answer.prompt_eval_count and answer.prompt_eval_duration is not None
    parts = list(
        sdk.generate(model="tiny:latest", prompt="Hello", options={"num_predict": 8}, stream=True)
    )
    assert parts[-1].done and parts[-1].done_reason in ("stop", "length")
    assert parts[-1].eval_count and parts[-1].model == "tiny"
    embedded = sdk.embed(model="tiny-embed", input=["Hello", "there"])
    assert len(embedded.embeddings) == 2 and len(embedded.embeddings[0]) > 0
    assert len(sdk.embeddings(model="tiny-embed", prompt="Hello").embedding) > 0
    running = {m.model: m for m in sdk.ps().models}
    assert set(running) == {"tiny", "tiny-embed"}
    details = sdk.show("tiny").details
    assert details is not None and details.format == "gguf"
    assert ({m.model: m.size for m in sdk.list().models}["tiny"] or 0) > 0
