"""The warm tier, vLLM's sleep mode (models/sleep.py): an idle model with `sleep` gives its
VRAM back but keeps its process, and the next request wakes it.

vLLM cannot run here (it needs a GPU): every test runs tests/fake_vllm.py instead, a real
process on 127.0.0.1 that serves vLLM's documented sleep endpoints (POST /sleep?level=N,
POST /wake_up, GET /is_sleeping, POST /collective_rpc, POST /reset_prefix_cache) and, like
vLLM, cannot generate while asleep. Its VRAM reaches modelberth through the fake NVML
(MODELBERTH_NVML_MODULE=fake_nvml): the full amount awake, nothing asleep. Every test but
the last drives a real modelberth subprocess over HTTP; the last calls Model.sleep, the
scheduler's entry point, on a Registry in the test's own loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import (
    TESTS,
    EventReader,
    Modelberth,
    events_of,
    fake_model,
    free_port,
    process_gone,
    upstreams_of,
    wait_for,
)
from modelberth.config import Config
from modelberth.models.model import Model
from modelberth.models.registry import Registry
from modelberth.models.state import TRANSITIONS, InvalidTransition, ModelState, check_transition
from modelberth.runtimes.logbuffer import LogBuffer
from modelberth.runtimes.process import ProcessRuntime

CHAT = "/v1/chat/completions"
FAKE_VLLM = str(TESTS / "fake_vllm.py")
MB = 1024 * 1024
VRAM_MB = 2000
BASE_USED_MB = 300


@pytest.fixture
def fake_gpu(tmp_path: Path) -> dict[str, str]:
    state = tmp_path / "gpus.json"
    state.write_text(
        json.dumps(
            {"gpus": [{"name": "Fake H100", "total_mb": 8000, "base_used_mb": BASE_USED_MB}]}
        )
    )
    return {
        "MODELBERTH_NVML_MODULE": "fake_nvml",
        "FAKE_NVML_STATE": str(state),
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }


def vllm_model(
    tmp_path: Path, level: int, *extra: str, gpu: bool = True, **settings: Any
) -> dict[str, Any]:
    """A model served by fake_vllm.py with `sleep: level`, on fake GPU 0 unless not `gpu`."""
    command = [
        sys.executable,
        FAKE_VLLM,
        "--port",
        "${PORT}",
        "--events",
        str(tmp_path / "events"),
        *extra,
    ]
    env = {"FAKE_VRAM_MB": str(VRAM_MB), "FAKE_VRAM_FILE": str(tmp_path / "vram")}
    placement: dict[str, Any] = {"gpus": [0], "vram_mb": VRAM_MB} if gpu else {}
    return {
        "command": command,
        "sleep": level,
        "env": env,
        "start_timeout": 20,
        **placement,
        **settings,
    }


def serve(
    modelberth: Any, fake_gpu: dict[str, str], model: dict[str, Any], **server: Any
) -> Modelberth:
    mb: Modelberth = modelberth(
        {"server": server, "resources": {"sample_interval": 0.2}, "models": {"m": model}},
        start=False,
    )
    return mb.start(env=fake_gpu)


def chat(mb: Modelberth, **body: Any) -> httpx.Response:
    with mb.client() as client:
        return client.post(CHAT, json={"model": "m", "messages": [], **body})


def kinds(events: Path) -> list[str]:
    """What the fake vLLM recorded, in order: start, request, sleep, wake_up, rpc..."""
    return [line.split()[0] for line in events.read_text().splitlines()]


def recorded_at(events: Path, kind: str) -> list[float]:
    return [float(line.split()[2]) for line in events_of(events, kind)]


def scrape(mb: Modelberth) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(mb.url + "/metrics", timeout=10).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def gpu_used(mb: Modelberth) -> int:
    (gpu,) = httpx.get(mb.url + "/api/resources", timeout=10).json()["gpus"]
    used: int = gpu["memory_used_bytes"]
    return used


def state_is(mb: Modelberth, wanted: str) -> bool:
    return bool(mb.status("m")["state"] == wanted)


def state(model: Model) -> ModelState:
    return model.state  # read anew each time (mypy would narrow `model.state`)


def test_the_warm_states_are_left_only_by_a_wake_a_stop_or_a_failure() -> None:
    S = ModelState
    assert TRANSITIONS[S.SLEEPING] == {S.WAKING, S.STOPPING, S.FAILED}
    assert TRANSITIONS[S.WAKING] == {S.READY, S.SLEEPING, S.STOPPING, S.FAILED}
    # Only a ready model goes to sleep, and only a wake makes it ready again.
    assert {old for old, new in TRANSITIONS.items() if S.SLEEPING in new} == {S.READY, S.WAKING}
    assert {old for old, new in TRANSITIONS.items() if S.READY in new} == {S.STARTING, S.WAKING}
    with pytest.raises(InvalidTransition, match="sleeping -> ready is not allowed"):
        check_transition("m", S.SLEEPING, S.SLEEPING, S.READY, "skip the wake")


def test_an_idle_model_sleeps_in_its_process_and_the_next_request_wakes_it(
    modelberth: Any, tmp_path: Path, fake_gpu: dict[str, str]
) -> None:
    events = tmp_path / "events"
    mb = serve(
        modelberth, fake_gpu, vllm_model(tmp_path, 1, "--weights-mb", "20", idle_timeout=1.5)
    )
    reader = EventReader(mb.url, lambda kind, data: kind == "state" and data["from"] == "waking")
    assert chat(mb).json()["choices"][0]["message"]["content"] == "hello"
    pid = int(mb.status("m")["runtime_id"])
    wait_for(lambda: mb.status("m")["vram_bytes"] == VRAM_MB * MB, timeout=5)
    awake_memory = mb.status("m")["memory_bytes"]

    wait_for(lambda: state_is(mb, "sleeping"), timeout=5)
    assert [line.split()[3] for line in events_of(events, "sleep")] == ["level=1"]
    assert mb.status("m")["runtime_id"] == str(pid)
    assert not process_gone(pid)
    # Its VRAM is given back, as the (fake) driver reports it ...
    wait_for(
        lambda: mb.status("m")["vram_bytes"] is None and gpu_used(mb) == BASE_USED_MB * MB,
        timeout=5,
    )
    # ... and at level 1 its weights went to host RAM: 20 MB more resident.
    wait_for(lambda: mb.status("m")["memory_bytes"] >= awake_memory + 15 * MB, timeout=5)
    samples = scrape(mb)
    here = (("model", "m"), ("node", "local"))
    assert samples[("modelberth_model_state", (*here, ("state", "sleeping")))] == 1
    assert samples[("modelberth_model_state", (*here, ("state", "ready")))] == 0
    assert samples[("modelberth_model_sleeps_total", (("model", "m"),))] == 1

    response = chat(mb)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "hello"
    status = mb.status("m")
    assert (status["state"], status["runtime_id"], status["starts"]) == ("ready", str(pid), 1)
    assert (status["sleep_level"], status["sleeps"], status["wakes"]) == (1, 1, 1)
    # The request reached the upstream only once it was awake: never while asleep.
    assert kinds(events) == ["start", "request", "sleep", "wake_up", "request"]
    assert recorded_at(events, "wake_up")[0] <= recorded_at(events, "request")[1]
    transitions = [(data["from"], data["to"]) for kind, data in reader.wait() if kind == "state"]
    assert transitions == [
        ("stopped", "starting"),
        ("starting", "ready"),
        ("ready", "sleeping"),
        ("sleeping", "waking"),
        ("waking", "ready"),
    ]
    wait_for(lambda: gpu_used(mb) == (BASE_USED_MB + VRAM_MB) * MB, timeout=5)
    samples = scrape(mb)
    assert samples[("modelberth_model_wakes_total", (("model", "m"),))] == 1
    assert samples[("modelberth_model_wake_duration_seconds_count", (("model", "m"),))] == 1


def test_level_2_reloads_the_weights_and_a_stream_waiting_for_the_wake_sees_it_load(
    modelberth: Any, tmp_path: Path, fake_gpu: dict[str, str]
) -> None:
    events = tmp_path / "events"
    # is_sleeping stays true for 0.8 s after wake_up: modelberth polls until it is false.
    mb = serve(
        modelberth,
        fake_gpu,
        vllm_model(tmp_path, 2, "--wake-delay", "0.8", idle_timeout=0.5),
        stream_keepalive=0.2,
    )
    assert chat(mb).status_code == 200
    pid = int(mb.status("m")["runtime_id"])
    wait_for(lambda: state_is(mb, "sleeping"), timeout=5)
    assert [line.split()[3] for line in events_of(events, "sleep")] == ["level=2"]

    began = time.monotonic()
    with (
        mb.client() as client,
        client.stream("POST", CHAT, json={"model": "m", "messages": [], "stream": True}) as stream,
    ):
        assert stream.status_code == 200
        body = b"".join(stream.iter_bytes()).decode()
    assert time.monotonic() - began >= 0.8
    assert ": loading m " in body  # the usual comments while it waits, as for a start
    assert body.count("tok") == 3
    assert body.endswith("data: [DONE]\n\n")
    assert kinds(events) == [
        "start",
        "request",
        "sleep",
        "wake_up",
        "rpc",
        "reset_prefix_cache",
        "request",
    ]
    assert events_of(events, "rpc")[0].split()[3] == "reload_weights"
    assert mb.status("m")["runtime_id"] == str(pid)

    # Stopped while asleep, it stops for real: no process left.
    wait_for(lambda: state_is(mb, "sleeping"), timeout=5)
    with mb.client() as client:
        stopped = client.post("/api/models/m/stop").json()
    assert (stopped["state"], stopped["runtime_id"]) == ("stopped", None)
    wait_for(lambda: process_gone(pid), timeout=5)
    assert not upstreams_of(mb.pid)


def test_a_request_during_the_sleep_call_waits_for_it_then_wakes_the_model(
    modelberth: Any, tmp_path: Path, fake_gpu: dict[str, str]
) -> None:
    events = tmp_path / "events"
    mb = serve(
        modelberth, fake_gpu, vllm_model(tmp_path, 1, "--sleep-delay", "1", idle_timeout=0.5)
    )
    assert chat(mb).status_code == 200
    # `sleeping` from the moment the call is sent: the request below arrives during it.
    wait_for(lambda: events_of(events, "sleep"), timeout=5)
    assert state_is(mb, "sleeping")
    response = chat(mb)
    assert response.json()["choices"][0]["message"]["content"] == "hello"
    assert kinds(events) == ["start", "request", "sleep", "wake_up", "request"]
    assert recorded_at(events, "wake_up")[0] >= recorded_at(events, "sleep")[0] + 1.0


def test_a_failed_wake_fails_the_model_and_the_next_request_starts_it_afresh(
    modelberth: Any, tmp_path: Path, fake_gpu: dict[str, str]
) -> None:
    events = tmp_path / "events"
    mb = serve(modelberth, fake_gpu, vllm_model(tmp_path, 1, "--fail-wake", idle_timeout=0.5))
    assert chat(mb).status_code == 200
    pid = int(mb.status("m")["runtime_id"])
    wait_for(lambda: state_is(mb, "sleeping"), timeout=5)

    failed = chat(mb)
    assert failed.status_code == 503
    error = failed.json()["error"]
    assert error["code"] == "model_start_failed"
    assert "wake failed: POST /wake_up answered 500" in error["message"]
    assert "simulated wake failure" in error["message"]
    status = mb.status("m")
    assert status["state"] == "failed"
    assert "wake failed: POST /wake_up answered 500" in status["last_error"]
    wait_for(lambda: process_gone(pid), timeout=5)

    again = chat(mb)
    assert again.status_code == 200
    status = mb.status("m")
    assert status["state"] == "ready"
    assert status["starts"] == 2
    assert int(status["runtime_id"]) != pid
    assert kinds(events) == ["start", "request", "sleep", "wake_up", "start", "request"]


def test_a_stop_during_the_wake_calls_it_off_and_the_waiting_request_gets_a_fresh_start(
    modelberth: Any, tmp_path: Path, fake_gpu: dict[str, str]
) -> None:
    events = tmp_path / "events"
    mb = serve(
        modelberth, fake_gpu, vllm_model(tmp_path, 1, "--wake-delay", "30", idle_timeout=0.5)
    )
    assert chat(mb).status_code == 200
    pid = int(mb.status("m")["runtime_id"])
    wait_for(lambda: state_is(mb, "sleeping"), timeout=5)
    answers: list[httpx.Response] = []
    waiting = threading.Thread(target=lambda: answers.append(chat(mb)))
    waiting.start()
    try:
        wait_for(lambda: state_is(mb, "waking"), timeout=5)
        with mb.client() as client:
            assert client.post("/api/models/m/stop").status_code == 200
        wait_for(lambda: process_gone(pid), timeout=5)
    finally:
        waiting.join(30)
    assert answers[0].status_code == 200
    assert int(mb.status("m")["runtime_id"]) != pid
    assert kinds(events) == ["start", "request", "sleep", "wake_up", "start", "request"]


def test_an_upstream_killed_while_asleep_fails_the_model(
    modelberth: Any, tmp_path: Path, fake_gpu: dict[str, str]
) -> None:
    mb = serve(modelberth, fake_gpu, vllm_model(tmp_path, 1, idle_timeout=0.5))
    assert chat(mb).status_code == 200
    pid = int(mb.status("m")["runtime_id"])
    wait_for(lambda: state_is(mb, "sleeping"), timeout=5)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: state_is(mb, "failed"), timeout=3)
    assert "upstream exited unexpectedly (killed by signal 9)" in mb.status("m")["last_error"]
    assert chat(mb).status_code == 200
    assert int(mb.status("m")["runtime_id"]) != pid


def test_a_failed_sleep_fails_the_model_and_ends_its_process(
    modelberth: Any, tmp_path: Path, fake_gpu: dict[str, str]
) -> None:
    mb = serve(modelberth, fake_gpu, vllm_model(tmp_path, 1, "--fail-sleep", idle_timeout=0.5))
    assert chat(mb).status_code == 200
    pid = int(mb.status("m")["runtime_id"])
    wait_for(lambda: state_is(mb, "failed"), timeout=5)
    assert "sleep failed: POST /sleep?level=1 answered 500" in mb.status("m")["last_error"]
    wait_for(lambda: process_gone(pid), timeout=5)
    assert chat(mb).status_code == 200


async def answers_health(http: httpx.AsyncClient) -> bool:
    try:
        return (await http.get("/health")).status_code == 200
    except httpx.TransportError:
        return False


@contextlib.asynccontextmanager
async def booted(models: dict[str, dict[str, Any]]) -> AsyncIterator[Registry]:
    """A Registry booted in the test's own loop; shut down after, and no upstream left."""
    registry = Registry(Config.model_validate({"models": models}))
    await registry.boot()
    try:
        yield registry
    finally:
        await asyncio.wait_for(registry.shutdown(), 60)
        left = upstreams_of(os.getpid())
        for proc in left:
            proc.kill()
        assert not left, f"upstream processes outlived the registry: {left}"


async def test_model_sleep_only_puts_an_idle_sleep_capable_model_to_sleep(
    tmp_path: Path,
) -> None:
    """Model.sleep, what the scheduler calls to make room: whether the model is asleep."""
    async with booted(
        {
            "v": vllm_model(tmp_path, 1, gpu=False, idle_timeout=0),
            "plain": fake_model(None, idle_timeout=0),
        }
    ) as registry:
        v, plain = registry.require("v"), registry.require("plain")
        await plain.start()
        assert not await plain.sleep("make room")  # no `sleep`: it stays as it is
        assert state(plain) is ModelState.READY

        await v.start()
        async with v.use():  # a request in flight: not idle
            assert not await v.sleep("make room")
            assert state(v) is ModelState.READY
        pid = v.upstream.runtime_id if v.upstream else None
        assert await v.sleep("make room")
        assert state(v) is ModelState.SLEEPING
        assert v.holds_upstream  # its process lives on: the scheduler counts what it holds
        assert await v.sleep("again")  # asleep already
        async with v.use():  # a request wakes it
            assert state(v) is ModelState.READY
        assert (v.upstream.runtime_id if v.upstream else None) == pid
        assert (v.status()["sleeps"], v.status()["wakes"]) == (1, 1)


async def test_an_upstream_adopted_asleep_is_sleeping_until_a_request_wakes_it(
    tmp_path: Path,
) -> None:
    """What a restarted modelberth finds of a container an earlier run put to sleep (only
    containers are adopted; a process stands in for one here)."""
    events = tmp_path / "events"
    async with booted({"v": vllm_model(tmp_path, 2, gpu=False, idle_timeout=0)}) as registry:
        v = registry.require("v")
        port = free_port()
        upstream = await ProcessRuntime().start(v.spec, port, LogBuffer())
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                while not await answers_health(http):
                    await asyncio.sleep(0.02)
                assert (await http.post("/sleep", params={"level": 2})).status_code == 200
        except BaseException:
            await upstream.stop(5)
            raise
        assert await v.adopt(upstream, port)
        assert state(v) is ModelState.SLEEPING
        async with v.use():
            assert state(v) is ModelState.READY
        assert kinds(events) == ["start", "sleep", "wake_up", "rpc", "reset_prefix_cache"]
