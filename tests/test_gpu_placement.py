"""GPU placement, learned footprints and eviction by cost, against a real modelberth.

This machine has no GPU: NVML is the tests' fake (tests/fake_nvml.py, the same functions and
shapes as pynvml), showing two GPUs of different sizes. Like the driver it reports each
upstream process's memory on the GPUs its CUDA_VISIBLE_DEVICES names, so what the scheduler
measures is what the placement really gave the process.
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker
import httpx
import psutil
import yaml

import test_docker
from conftest import TESTS, Modelberth, fake_model, wait_for
from modelberth.config import Config
from modelberth.runtimes.docker import DockerRuntime
from modelberth.runtimes.ownership import LABEL_GPUS

CHAT = "/v1/chat/completions"
MB = 1024 * 1024
# test_docker's fixtures: the engine, and the test image made for it.
engine, image = test_docker.engine, test_docker.image


def gpus_env(tmp_path: Path, *gpus: dict[str, Any]) -> dict[str, str]:
    state = tmp_path / "gpus.json"
    state.write_text(json.dumps({"gpus": list(gpus)}))
    return {
        "MODELBERTH_NVML_MODULE": "fake_nvml",
        "FAKE_NVML_STATE": str(state),
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }


BIG_AND_SMALL = ({"name": "Fake 24G", "total_mb": 24000}, {"name": "Fake 8G", "total_mb": 8000})


def gpu_model(
    tmp_path: Path, name: str, vram: int, gpus: Any = "auto", per_gpu: int | None = None, *argv: str
) -> dict[str, Any]:
    env = {"FAKE_VRAM_MB": str(per_gpu or vram)}
    return fake_model(tmp_path / f"{name}.events", *argv, gpus=gpus, vram_mb=vram, env=env)


def chat(mb: Modelberth, model: str) -> httpx.Response:
    with mb.client(timeout=60) as client:
        return client.post(CHAT, json={"model": model, "messages": []})


def environ_of(mb: Modelberth, model: str) -> dict[str, str]:
    pid = int(mb.status(model)["runtime_id"])
    return dict(psutil.Process(pid).environ())


def evictions(mb: Modelberth) -> list[str]:
    return [line for line in mb.log().splitlines() if "] evicting " in line]


def test_auto_placement_binpacks_and_evicts_only_on_the_chosen_gpu(
    modelberth: Any, tmp_path: Path
) -> None:
    mb = modelberth(
        {
            "resources": {"vram_margin_mb": 0, "sample_interval": 0.3},
            "models": {
                "a": gpu_model(tmp_path, "a", 6000),
                "b": gpu_model(tmp_path, "b", 6000),
                "big": gpu_model(tmp_path, "big", 20000),
                "pair": gpu_model(tmp_path, "pair", 8000, {"count": 2}, per_gpu=4000),
                "three": gpu_model(tmp_path, "three", 300, {"count": 3}),
            },
        },
        start=False,
    )
    mb.start(env=gpus_env(tmp_path, *BIG_AND_SMALL))

    assert chat(mb, "a").status_code == 200  # fits both GPUs: binpack takes the 8 GB one
    assert mb.status("a")["gpus"] == [1]
    assert mb.status("a")["gpu_request"] == "auto"
    env = environ_of(mb, "a")
    assert env["CUDA_VISIBLE_DEVICES"] == "1" and env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    wait_for(lambda: mb.status("a")["vram_bytes"] == 6000 * MB, timeout=5)

    assert chat(mb, "b").status_code == 200  # 6 + 6 > 8 on GPU 1: GPU 0, and a stays
    assert mb.status("b")["gpus"] == [0]
    assert environ_of(mb, "b")["CUDA_VISIBLE_DEVICES"] == "0"
    assert mb.status("a")["state"] == "ready"
    assert not evictions(mb)
    assert "placing b on GPU 0 (binpack" in mb.log()

    assert chat(mb, "big").status_code == 200  # only GPU 0 can hold 20 GB: b goes, a stays
    assert mb.status("big")["gpus"] == [0]
    assert mb.status("b")["state"] == "stopped"
    assert mb.status("a")["state"] == "ready"
    (line,) = evictions(mb)
    assert "evicting b (stop; priority 0, score" in line and "on GPU 0 (binpack" in line

    # {count: 2}: 4 GB on each GPU. GPU 0: 20 + 4 fits 24; GPU 1: 6 + 4 > 8, so a goes.
    assert chat(mb, "pair").status_code == 200
    assert mb.status("pair")["gpus"] == [0, 1]
    assert environ_of(mb, "pair")["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert mb.status("a")["state"] == "stopped"
    assert mb.status("big")["state"] == "ready"
    wait_for(lambda: mb.status("pair")["vram_bytes"] == 8000 * MB, timeout=5)

    three = chat(mb, "three")
    assert three.status_code == 503
    assert three.json()["error"]["message"].endswith("needs 3 GPUs but found 2")
    assert mb.status("big")["state"] == "ready"  # a start that cannot be never evicts


def test_spread_takes_the_emptiest_gpu_and_other_programs_shrink_the_room(
    modelberth: Any, tmp_path: Path
) -> None:
    mb = modelberth(
        {
            "resources": {"vram_margin_mb": 0, "placement": "spread"},
            "models": {"a": gpu_model(tmp_path, "a", 3000)},
        },
        start=False,
    )
    mb.start(env=gpus_env(tmp_path, *BIG_AND_SMALL))
    assert chat(mb, "a").status_code == 200
    assert mb.status("a")["gpus"] == [0]
    mb.stop()

    # Another program holds 22 of GPU 0's 24 GB: only 2 GB are really free there.
    busy = (
        {"name": "Fake 24G", "total_mb": 24000, "base_used_mb": 22000},
        {"name": "Fake 8G", "total_mb": 8000},
    )
    mb.start(env=gpus_env(tmp_path, *busy))
    assert chat(mb, "a").status_code == 200
    assert mb.status("a")["gpus"] == [1]


def test_fixed_gpus_are_kept_and_named_in_the_environment(modelberth: Any, tmp_path: Path) -> None:
    mb = modelberth({"models": {"m": gpu_model(tmp_path, "m", 1000, [1])}}, start=False)
    mb.start(env=gpus_env(tmp_path, *BIG_AND_SMALL))
    assert chat(mb, "m").status_code == 200
    assert mb.status("m")["gpus"] == [1]
    assert mb.status("m")["gpu_request"] == [1]
    assert environ_of(mb, "m")["CUDA_VISIBLE_DEVICES"] == "1"


def test_learned_footprints_survive_a_restart(modelberth: Any, tmp_path: Path) -> None:
    # No vram_mb and nothing to estimate from: until measured, it needs a GPU to itself.
    model = fake_model(tmp_path / "m.events", gpus="auto", env={"FAKE_VRAM_MB": "3000"})
    mb = modelberth({"resources": {"sample_interval": 0.3}, "models": {"m": model}}, start=False)
    env = gpus_env(tmp_path, *BIG_AND_SMALL)
    mb.start(env=env)
    assert mb.status("m")["plan_vram_bytes"] is None
    assert chat(mb, "m").status_code == 200
    wait_for(lambda: mb.status("m")["plan_vram_bytes"] == 3000 * MB, timeout=5)
    took = mb.status("m")["start_seconds"]
    assert len(took) == 1 and took[0] > 0
    mb.stop()
    state = mb.config_path.parent / "state"
    (saved,) = state.glob("footprints-*.json")
    entry = json.loads(saved.read_text())["models"]["m"]
    assert entry["peak_vram_bytes"] == 3000 * MB and entry["start_seconds"] == took

    mb.start(env=env)  # planned from what was learned, before any start
    status = mb.status("m")
    assert status["state"] == "stopped"
    assert status["plan_vram_bytes"] == 3000 * MB and status["start_seconds"] == took
    mb.stop()

    saved.write_text("{not json")
    mb.start(env=env)
    assert mb.status("m")["plan_vram_bytes"] is None
    assert "learned footprints: ignoring" in mb.log()
    assert chat(mb, "m").status_code == 200  # and it serves as before
    wait_for(lambda: mb.status("m")["plan_vram_bytes"] == 3000 * MB, timeout=5)
    mb.stop()

    # Another config (here another command line) is another model: what was learned stays
    # with the old config hash.
    config = yaml.safe_load(mb.config_path.read_text())
    config["models"]["m"]["command"] += ["--chunks", "3"]
    mb.config_path.write_text(yaml.safe_dump(config))
    mb.start(env=env)
    assert mb.status("m")["plan_vram_bytes"] is None
    assert "was measured with another config" in mb.log()


def test_eviction_prefers_the_model_cheapest_to_bring_back(modelberth: Any, tmp_path: Path) -> None:
    one = ({"name": "Fake 8G", "total_mb": 8000},)
    mb = modelberth(
        {
            "resources": {"vram_margin_mb": 0},
            "models": {
                "slow": gpu_model(tmp_path, "slow", 4000, [0], None, "--start-delay", "1.5"),
                "fast": gpu_model(tmp_path, "fast", 4000, [0]),
                "third": gpu_model(tmp_path, "third", 4000, [0]),
            },
        },
        start=False,
    )
    mb.start(env=gpus_env(tmp_path, *one))
    # slow is used first: least recently used alone would evict it.
    assert chat(mb, "slow").status_code == 200
    assert chat(mb, "fast").status_code == 200
    assert chat(mb, "third").status_code == 200
    assert mb.status("fast")["state"] == "stopped"
    assert mb.status("slow")["state"] == "ready"
    (line,) = evictions(mb)
    assert "evicting fast (stop; priority 0, score" in line and "reload" in line


def test_docker_receives_the_placement_as_a_device_request(
    engine: docker.DockerClient, image: str
) -> None:
    """The real engine takes the request (this engine has no NVIDIA runtime to start the
    container: creating it shows what Docker was asked for)."""
    spec = Config.model_validate(
        {
            "models": {
                "m": {
                    "runtime": "docker",
                    "image": image,
                    "pull": "never",
                    "gpus": {"count": 2},
                    "command": ["serve", "--port", "${PORT}", "--gpus", "${GPUS}"],
                }
            }
        }
    ).specs()["m"]
    runtime = DockerRuntime(None, instance=f"placement-{os.getpid()}")
    args = runtime._create_args(spec.placed_on((0, 2)), 8123, image)
    container = engine.containers.create(**args)
    try:
        attrs = engine.api.inspect_container(str(container.id))
        (request,) = attrs["HostConfig"]["DeviceRequests"]
        assert request["DeviceIDs"] == ["0", "2"] and request["Capabilities"] == [["gpu"]]
        assert attrs["Config"]["Labels"][LABEL_GPUS] == "0,2"
        assert attrs["Config"]["Cmd"] == ["serve", "--port", "8123", "--gpus", "0,2"]
        # Inside the container the GPUs are renumbered: no host indexes in its environment.
        assert not any(e.startswith("CUDA_") for e in attrs["Config"]["Env"] or [])
    finally:
        container.remove(force=True)


def vllm(tmp_path: Path, name: str, vram: int) -> dict[str, Any]:
    """A fake vLLM (tests/fake_vllm.py: vLLM's sleep endpoints, VRAM through the fake NVML)
    with sleep level 1 on GPU 0."""
    return {
        "command": [
            sys.executable,
            str(TESTS / "fake_vllm.py"),
            "--port",
            "${PORT}",
            "--events",
            str(tmp_path / f"{name}.events"),
        ],
        "sleep": 1,
        "gpus": [0],
        "vram_mb": vram,
        "start_timeout": 20,
        "env": {"FAKE_VRAM_MB": str(vram), "FAKE_VRAM_FILE": str(tmp_path / f"{name}.vram")},
    }


def two_vllms_on_8g(modelberth: Any, tmp_path: Path, **resources: Any) -> Modelberth:
    """v1 and v2, 5 GB each, on one 8 GB GPU: they never fit together."""
    mb: Modelberth = modelberth(
        {
            "resources": {"vram_margin_mb": 0, **resources},
            "models": {"v1": vllm(tmp_path, "v1", 5000), "v2": vllm(tmp_path, "v2", 5000)},
        },
        start=False,
    )
    return mb.start(env=gpus_env(tmp_path, {"name": "Fake 8G", "total_mb": 8000}))


def test_eviction_puts_a_sleep_capable_model_to_sleep_and_wakes_it_back(
    modelberth: Any, tmp_path: Path
) -> None:
    mb = two_vllms_on_8g(modelberth, tmp_path, sample_interval=0.3)
    assert chat(mb, "v1").status_code == 200
    pid = mb.status("v1")["runtime_id"]
    assert chat(mb, "v2").status_code == 200  # 5 + 5 > 8: v1 sleeps instead of stopping
    assert mb.status("v1")["state"] == "sleeping"
    assert mb.status("v1")["runtime_id"] == pid
    (line,) = evictions(mb)
    assert "evicting v1 (to sleep;" in line
    assert "sleep" in (tmp_path / "v1.events").read_text()

    assert chat(mb, "v1").status_code == 200  # the wake needs the GPU back: v2 sleeps
    assert mb.status("v1")["state"] == "ready" and mb.status("v1")["runtime_id"] == pid
    assert mb.status("v2")["state"] == "sleeping"


def test_a_sleeping_model_is_stopped_when_ram_is_what_is_short(
    modelberth: Any, tmp_path: Path
) -> None:
    # Level 1 keeps the weights in host RAM: 5 GB asleep do not fit a 4 GB RAM budget.
    mb = two_vllms_on_8g(modelberth, tmp_path, memory_budget_mb=4000)
    assert chat(mb, "v1").status_code == 200
    assert chat(mb, "v2").status_code == 200
    assert mb.status("v1")["state"] == "stopped"
    (line,) = evictions(mb)
    assert "evicting v1 (stop;" in line


def test_an_upstream_being_stopped_counts_as_ours_not_another_program_s(
    modelberth: Any, tmp_path: Path
) -> None:
    """An evicted upstream that takes its time to stop still holds its VRAM. The scheduler
    counts it for its model until it is gone, so the GPU's reading must not count it as
    another program's as well: that would shrink the room twice (and, in a reading taken
    just before it went, for a sample interval after)."""
    slow = {
        **gpu_model(tmp_path, "slow", 6000, [0], None, "--ignore-sigterm"),
        "stop_timeout": 3,  # SIGTERM is ignored: SIGKILL comes after 3 s
    }
    mb = modelberth(
        {
            "resources": {"vram_margin_mb": 0, "sample_interval": 0.2},
            "models": {"slow": slow, "next": gpu_model(tmp_path, "next", 6000, [0])},
        },
        start=False,
    )
    mb.start(env=gpus_env(tmp_path, {"name": "Fake 8G", "total_mb": 8000}))
    assert chat(mb, "slow").status_code == 200
    leader = psutil.Process(int(mb.status("slow")["runtime_id"]))
    wait_for(lambda: mb.status("slow")["vram_bytes"] == 6000 * MB, timeout=5)

    def gpu() -> dict[str, Any]:
        with mb.client() as client:
            reading: dict[str, Any] = client.get("/api/resources").json()["gpus"][0]
            return reading

    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(chat, mb, "next")  # 6 + 6 > 8: slow is evicted, slowly
        wait_for(lambda: mb.status("slow")["state"] == "stopping", timeout=10)
        seen = []
        while mb.status("slow")["state"] == "stopping":
            reading = gpu()
            if leader.is_running() and reading["memory_used_bytes"] == 6000 * MB:
                seen.append(reading["other_used_bytes"])
            time.sleep(0.1)
        assert answer.result(timeout=30).status_code == 200
    assert len(seen) >= 5  # readings while it was being stopped, still holding 6 GB
    assert set(seen) == {0}
    assert mb.status("next")["gpus"] == [0]
    assert gpu()["other_used_bytes"] == 0
