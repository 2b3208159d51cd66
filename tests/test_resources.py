"""Resources and scheduling: readings, estimates, budgets, eviction, waiting, priorities."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from conftest import TESTS, Modelberth, events_of, fake_model, upstreams_of, wait_for
from modelberth.demo import llama_server_path
from modelberth.models.estimate import estimate_gguf
from modelberth.runtimes.process import MODEL_ENV
from modelberth.tinymodel import write_tiny_gguf

CHAT = "/v1/chat/completions"
MB = 1024 * 1024


def chat(mb: Modelberth, model: str, **body: Any) -> httpx.Response:
    with mb.client(timeout=60) as client:
        return client.post(CHAT, json={"model": model, "messages": [], **body})


def resources(mb: Modelberth) -> dict[str, Any]:
    data: dict[str, Any] = httpx.get(mb.url + "/api/resources", timeout=10).json()
    return data


def running_models(mb: Modelberth) -> set[str]:
    names = set()
    for proc in upstreams_of(mb.pid):
        try:
            names.add(proc.environ()[MODEL_ENV])
        except (psutil.Error, KeyError):
            continue
    return names


def meminfo() -> dict[str, int]:
    fields = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, value = line.split(":", 1)
        fields[key] = int(value.split()[0]) * 1024
    return fields


def test_resources_report_host_gpus_and_model_usage(modelberth: Any) -> None:
    mb = modelberth(
        {
            "resources": {"sample_interval": 0.5},
            "models": {"m": fake_model(None, "--alloc-mb", "60")},
        }
    )
    assert chat(mb, "m").status_code == 200
    pid = int(mb.status("m")["runtime_id"])
    # The upstream is loaded (it allocates before it answers health), but the last sample may
    # be from while it loaded: let three sample intervals pass, so the report holds a later one.
    time.sleep(3 * 0.5 + 0.2)
    report = resources(mb)
    assert set(report) == {"host", "gpus", "models", "budgets", "nodes"}
    assert report["nodes"] == []  # only this machine: no multi-node runtime in use
    assert report["budgets"] == {"memory_bytes": report["host"]["memory_total_bytes"], "gpus": []}
    assert set(report["host"]) == {"memory_total_bytes", "memory_available_bytes", "cpu_percent"}
    info = meminfo()
    assert report["host"]["memory_total_bytes"] == info["MemTotal"]
    assert (
        abs(report["host"]["memory_available_bytes"] - info["MemAvailable"])
        < 0.1 * info["MemTotal"]
    )
    assert report["gpus"] == []  # the real NVML path on a machine without a GPU
    model = report["models"]["m"]
    assert set(model) == {
        "state",
        "memory_bytes",
        "vram_bytes",
        "estimate_memory_bytes",
        "estimate_vram_bytes",
    }
    assert model["state"] == "ready"
    rss = psutil.Process(pid).memory_info().rss
    assert abs(model["memory_bytes"] - rss) <= 0.2 * rss
    # Both views read the same sample (retried: a new one may land between the two reads).
    wait_for(
        lambda: mb.status("m")["memory_bytes"] == resources(mb)["models"]["m"]["memory_bytes"],
        timeout=5,
    )


def test_gguf_estimate_counts_weights_kv_cache_and_overhead(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "m.gguf")
    estimate = estimate_gguf(path, context=256, cache_k="f16", cache_v="q8_0", overhead_mb=10)
    n_vocab, n_embd, n_ff, layers = 269, 64, 128, 2
    weights = 4 * (
        2 * n_vocab * n_embd
        + n_embd
        + layers * (4 * n_embd * n_embd + 3 * n_embd * n_ff + 2 * n_embd)
    )
    assert estimate.weights_bytes == weights
    # 2 layers x 4 kv heads x 16 dims x (2 bytes for f16 K + 34/32 for q8_0 V) x 256 tokens
    assert estimate.kv_cache_bytes == int(2 * 4 * (16 * 2 + 16 * 34 / 32) * 256)
    assert estimate.overhead_bytes == 10 * MB
    assert estimate.total_bytes == weights + estimate.kv_cache_bytes + 10 * MB
    assert estimate_gguf(path).context == 512  # the trained context when none is given


def test_estimate_from_a_llama_server_command(modelberth: Any, tmp_path: Path) -> None:
    model = write_tiny_gguf(tmp_path / "tiny.gguf")
    mb = modelberth(
        {
            "resources": {"estimate_overhead_mb": 100},
            "models": {
                "tiny": {
                    "command": [
                        str(llama_server_path()),
                        "-m",
                        str(model),
                        "--port",
                        "${PORT}",
                        "-c",
                        "256",
                        "-t",
                        "1",
                    ]
                }
            },
        }
    )
    expected = estimate_gguf(model, 256, overhead_mb=100).total_bytes
    report = resources(mb)["models"]["tiny"]
    assert report["estimate_memory_bytes"] == expected
    assert report["estimate_vram_bytes"] is None


def budget_config(tmp_path: Path, **models: dict[str, Any]) -> dict[str, Any]:
    return {
        "resources": {"memory_budget_mb": 250, "sample_interval": 0.5},
        "defaults": {"start_timeout": 20},
        "models": {
            name: fake_model(
                tmp_path / f"{name}.events", "--alloc-mb", "120", memory_mb=150, **settings
            )
            for name, settings in models.items()
        },
    }


def test_idle_model_is_evicted_and_a_busy_one_is_waited_for(
    modelberth: Any, tmp_path: Path
) -> None:
    mb = modelberth(budget_config(tmp_path, a={}, b={}))
    assert chat(mb, "a").status_code == 200
    assert chat(mb, "b").status_code == 200  # a is idle: evicted
    assert mb.status("a")["state"] == "stopped"
    assert "evicting a" in mb.log()
    assert running_models(mb) == {"b"}

    # b streams; a request for a waits for the stream to finish, which arrives intact.
    results: dict[str, httpx.Response] = {}
    streaming = threading.Thread(
        target=lambda: results.update(b=chat(mb, "b", stream=True, chunks=6, chunk_delay=0.25))
    )
    streaming.start()
    wait_for(lambda: mb.status("b")["in_flight"] == 1, timeout=5)
    began = time.monotonic()
    assert chat(mb, "a").status_code == 200
    streaming.join(10)
    assert time.monotonic() - began >= 1.0
    assert results["b"].text.count("tok") == 6
    assert results["b"].text.endswith("data: [DONE]\n\n")
    b_done = float(events_of(tmp_path / "b.events", "finished")[-1].split()[2])
    a_started = float(events_of(tmp_path / "a.events", "start")[-1].split()[2])
    assert b_done <= a_started
    assert running_models(mb) == {"a"}


def test_model_that_can_never_fit_fails_at_once(modelberth: Any, tmp_path: Path) -> None:
    config = budget_config(tmp_path, big={})
    config["models"]["big"]["memory_mb"] = 400
    mb = modelberth(config)
    began = time.monotonic()
    response = chat(mb, "big")
    assert time.monotonic() - began < 2
    assert response.status_code == 503
    assert "can never fit" in response.json()["error"]["message"]
    assert not events_of(tmp_path / "big.events", "start")


def test_pinned_model_is_never_evicted(modelberth: Any, tmp_path: Path) -> None:
    config = budget_config(tmp_path, keep={"pinned": True}, other={"start_timeout": 2}, busy={})
    mb = modelberth(config)
    assert chat(mb, "keep").status_code == 200
    response = chat(mb, "other")
    assert response.status_code == 503
    assert "beside pinned keep: it can never fit" in response.json()["error"]["message"]
    assert mb.status("keep")["state"] == "ready"


def test_start_behind_a_busy_model_gives_up_after_start_timeout(
    modelberth: Any, tmp_path: Path
) -> None:
    mb = modelberth(budget_config(tmp_path, busy={}, other={"start_timeout": 1}))
    assert chat(mb, "busy").status_code == 200
    slow = threading.Thread(target=chat, args=(mb, "busy"), kwargs={"sleep": 3})
    slow.start()
    wait_for(lambda: mb.status("busy")["in_flight"] == 1, timeout=5)
    response = chat(mb, "other")
    slow.join(10)
    assert response.status_code == 503
    assert "no room within start_timeout: busy (1 in flight)" in response.json()["error"]["message"]
    assert mb.status("busy")["state"] == "ready"


def test_models_that_cannot_coexist_never_run_together(modelberth: Any, tmp_path: Path) -> None:
    mb = modelberth(budget_config(tmp_path, a={"max_queue": 100}, b={"max_queue": 100}))
    seen: list[set[str]] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.append(running_models(mb))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    results: list[int] = []

    def client(model: str) -> None:
        for _ in range(3):
            results.append(chat(mb, model, sleep=0.1).status_code)

    threads = [threading.Thread(target=client, args=(m,)) for m in "abab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    done.set()
    watcher.join()
    assert results == [200] * 12
    assert {"a", "b"} not in [s for s in seen]
    assert len(events_of(tmp_path / "a.events", "start")) >= 1
    assert len(events_of(tmp_path / "b.events", "start")) >= 1


def test_higher_priority_start_goes_first(modelberth: Any, tmp_path: Path) -> None:
    mb = modelberth(budget_config(tmp_path, busy={}, low={}, high={"priority": 5}))
    results: dict[str, int] = {}
    streaming = threading.Thread(
        target=lambda: results.update(busy=chat(mb, "busy", sleep=1.5).status_code)
    )
    streaming.start()
    wait_for(lambda: mb.status("busy")["in_flight"] == 1, timeout=5)
    low = threading.Thread(target=lambda: results.update(low=chat(mb, "low").status_code))
    low.start()
    wait_for(lambda: mb.status("low")["state"] == "starting", timeout=5)
    high = threading.Thread(target=lambda: results.update(high=chat(mb, "high").status_code))
    high.start()
    for thread in (streaming, low, high):
        thread.join(30)
    assert results == {"busy": 200, "low": 200, "high": 200}
    high_start = float(events_of(tmp_path / "high.events", "start")[0].split()[2])
    low_start = float(events_of(tmp_path / "low.events", "start")[0].split()[2])
    assert high_start < low_start


def test_max_concurrency_queues_extra_requests(modelberth: Any, tmp_path: Path) -> None:
    events = tmp_path / "events"
    mb = modelberth({"models": {"m": fake_model(events, max_concurrency=1)}})
    assert chat(mb, "m").status_code == 200
    threads = [
        threading.Thread(target=chat, args=(mb, "m"), kwargs={"sleep": 0.5}) for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    starts = sorted(float(line.split()[2]) for line in events_of(events, "request")[1:])
    assert starts[1] - starts[0] >= 0.45


@pytest.fixture
def fake_gpu(tmp_path: Path) -> dict[str, str]:
    state = tmp_path / "gpus.json"
    state.write_text(
        json.dumps(
            {
                "gpus": [
                    {"name": "Fake A100", "total_mb": 8000, "base_used_mb": 300, "utilization": 7}
                ]
            }
        )
    )
    return {
        "MODELBERTH_NVML_MODULE": "fake_nvml",
        "FAKE_NVML_STATE": str(state),
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }


def test_vram_budget_with_fake_nvml(
    modelberth: Any, tmp_path: Path, fake_gpu: dict[str, str]
) -> None:
    def gpu_model(name: str, vram: int, **extra: Any) -> dict[str, Any]:
        settings = {"gpus": [0], "vram_mb": vram, "env": {"FAKE_VRAM_MB": str(vram)}, **extra}
        return fake_model(tmp_path / f"{name}.events", **settings)

    mb = modelberth(
        {
            "resources": {"vram_margin_mb": 500, "sample_interval": 0.5},
            "models": {
                "g1": gpu_model("g1", 4000),
                "g2": gpu_model("g2", 4000),
                "huge": gpu_model("huge", 9000),
                "nowhere": gpu_model("nowhere", 100, gpus=[1]),
            },
        },
        start=False,
    )
    mb.start(env=fake_gpu)
    assert chat(mb, "g1").status_code == 200
    wait_for(lambda: resources(mb)["models"]["g1"]["vram_bytes"], timeout=5)
    report = resources(mb)
    (gpu,) = report["gpus"]
    assert gpu == {
        "index": 0,
        "name": "Fake A100",
        "memory_total_bytes": 8000 * MB,
        "memory_used_bytes": 4300 * MB,
        "utilization_percent": 7.0,
        "other_used_bytes": 300 * MB,  # the fake's base use: another program's, not g1's
    }
    assert report["models"]["g1"]["vram_bytes"] == 4000 * MB
    assert report["models"]["g1"]["estimate_vram_bytes"] == 4000 * MB

    assert chat(mb, "g2").status_code == 200  # 4000 + 4000 > 8000 - 500: g1 goes
    assert mb.status("g1")["state"] == "stopped"
    assert running_models(mb) == {"g2"}

    huge = chat(mb, "huge")
    assert huge.status_code == 503
    assert (
        "on GPU 0 but its budget leaves 7500 MiB: it can never fit"
        in huge.json()["error"]["message"]
    )
    nowhere = chat(mb, "nowhere")
    assert nowhere.status_code == 503
    assert "GPU 1 does not exist" in nowhere.json()["error"]["message"]
