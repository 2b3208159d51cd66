"""The Docker runtime on a real engine (started by scripts/ensure-docker-engine.sh)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import socket
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx
import openai
import pytest

from conftest import FAKE, Modelberth, events_of, llama_command, wait_for
from modelberth.config import parse_config
from modelberth.demo import llama_server_path
from modelberth.runtimes.docker import DockerRuntime
from modelberth.runtimes.ownership import (
    LABEL_INSTANCE,
    LABEL_MANAGED,
    container_name,
    default_instance_id,
)
from modelberth.tinymodel import ensure_tiny_model

IMAGE = "modelberth-test/host:1"
REPO = Path(__file__).resolve().parent.parent
CHAT = "/v1/chat/completions"
# The image holds almost nothing: host binaries and Python come in read-only.
HOST_MOUNTS = [
    "/usr:/usr:ro",
    f"{sys.base_prefix}:{sys.base_prefix}:ro",
    f"{REPO}:{REPO}:ro",
    # The venv too when it lives outside the repository (a git worktree run with
    # another checkout's venv): the fake upstream runs on its Python.
    *([] if Path(sys.prefix).is_relative_to(REPO) else [f"{sys.prefix}:{sys.prefix}:ro"]),
]


@pytest.fixture(scope="session")
def engine() -> Iterator[docker.DockerClient]:
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(
            f"no Docker engine: {exc}. `make test` starts one with "
            "scripts/ensure-docker-engine.sh (Debian's docker.io).",
            pytrace=False,
        )
    yield client
    client.close()


def _rootfs() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for directory in ("etc", "tmp", "usr", "sbin", "proc", "sys", "dev", "root"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if directory == "tmp" else 0o755
            tar.addfile(info)
        for link, target in (("bin", "usr/bin"), ("lib", "usr/lib"), ("lib64", "usr/lib64")):
            info = tarfile.TarInfo(link)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
        passwd = b"root:x:0:0:root:/root:/bin/sh\n"
        info = tarfile.TarInfo("etc/passwd")
        info.size = len(passwd)
        tar.addfile(info, io.BytesIO(passwd))
    return buffer.getvalue()


@pytest.fixture(scope="session")
def image(engine: docker.DockerClient) -> str:
    try:
        engine.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        repository, tag = IMAGE.split(":")
        engine.api.import_image_from_data(_rootfs(), repository=repository, tag=tag)
    return IMAGE


@pytest.fixture
def containers(engine: docker.DockerClient) -> Iterator[Any]:
    """Lists this engine's modelberth containers; after the test, asserts none is left."""

    def listing() -> list[Any]:
        return list(engine.containers.list(all=True, filters={"label": f"{LABEL_MANAGED}=true"}))

    yield listing
    left = listing()
    for container in left:
        container.remove(force=True)
    assert not left, f"containers outlived modelberth: {[c.name for c in left]}"


def fake_container(base_image: str, tmp: Path, *extra: str, **settings: Any) -> dict[str, Any]:
    return {
        "runtime": "docker",
        "image": base_image,
        "pull": "never",
        "command": [
            sys.executable,
            FAKE,
            "--port",
            "${PORT}",
            "--events",
            str(tmp / "events"),
            *extra,
        ],
        "volumes": [*HOST_MOUNTS, f"{tmp}:{tmp}"],
        "stop_timeout": 2,
        **settings,
    }


def post_chat(mb: Modelberth, model: str = "m", **body: Any) -> httpx.Response:
    with mb.client() as client:
        return client.post(CHAT, json={"model": model, "messages": [], **body})


def instance_of(mb: Modelberth) -> str:
    """The default instance id of a test server (no `server.instance_id` set)."""
    return default_instance_id(socket.gethostname(), int(mb.url.rsplit(":", 1)[1]))


def model_logs(mb: Modelberth, model: str = "m") -> str:
    with mb.client() as client:
        return client.get(f"/api/models/{model}/logs").text


def test_on_demand_start_stream_ttl_and_labels(
    containers: Any, modelberth: Any, image: str, tmp_path: Path
) -> None:
    mb = modelberth({"models": {"m": fake_container(image, tmp_path, idle_timeout=2)}})
    assert post_chat(mb).status_code == 200
    status = mb.status("m")
    assert status["state"] == "ready"
    assert status["runtime"] == "docker"
    (container,) = containers()
    assert container.id.startswith(status["runtime_id"])
    assert container.name == f"modelberth-{instance_of(mb)}-m"
    assert container.labels["modelberth.model"] == "m"
    assert container.labels[LABEL_INSTANCE] == instance_of(mb)
    assert len(container.labels["modelberth.config"]) == 16
    host_config = container.attrs["HostConfig"]
    assert host_config["Init"] is True
    assert host_config["NetworkMode"] == "host"

    streamed = post_chat(mb, stream=True, chunks=4, chunk_delay=0.05)
    assert streamed.text.count("tok") == 4
    with mb.client() as client:
        assert "fake upstream starting" in client.get("/api/models/m/logs").text

    wait_for(lambda: mb.status("m")["state"] == "stopped", timeout=10)
    wait_for(lambda: not containers(), timeout=5)


def test_manual_start_stop_restart(
    containers: Any, modelberth: Any, image: str, tmp_path: Path
) -> None:
    mb = modelberth({"models": {"m": fake_container(image, tmp_path)}})
    with mb.client() as client:
        first = client.post("/api/models/m/start").json()
        assert first["state"] == "ready"
        second = client.post("/api/models/m/restart").json()
        assert second["state"] == "ready"
        assert second["runtime_id"] != first["runtime_id"]
        assert len(containers()) == 1
        assert client.post("/api/models/m/stop").json()["state"] == "stopped"
        assert not containers()


def test_memory_is_sampled_in_the_background(
    containers: Any, modelberth: Any, image: str, tmp_path: Path
) -> None:
    mb = modelberth({"models": {"m": fake_container(image, tmp_path)}})
    assert post_chat(mb).status_code == 200
    assert wait_for(lambda: mb.status("m")["memory_bytes"], timeout=15) > 2**20
    # The container's cgroup holds only what it allocated (the Python it runs is the host's,
    # mounted, whose pages are charged elsewhere): some MiB, growing as it starts up; a later
    # background sample agrees with what the engine itself reads then.
    (container,) = containers()

    def agrees() -> bool:
        stats = container.stats(stream=False)
        assert isinstance(stats, dict)
        engine_says = int(stats["memory_stats"]["usage"])
        ours = int(mb.status("m")["memory_bytes"])
        return engine_says / 1.5 < ours < engine_says * 1.5

    wait_for(agrees, timeout=20, interval=0.5)
    assert mb.status("m")["memory_bytes"] < 500 * 2**20


def test_exit_during_start_reports_code_and_log_tail(
    containers: Any, modelberth: Any, image: str, tmp_path: Path
) -> None:
    mb = modelberth({"models": {"m": fake_container(image, tmp_path, "--exit-code", "7")}})
    response = post_chat(mb)
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "model_start_failed"
    assert "exit code 7" in error["message"]
    assert "cannot load model weights (simulated)" in error["message"]
    wait_for(lambda: not containers(), timeout=5)


def test_crash_while_ready_is_noticed_at_once(
    containers: Any, modelberth: Any, image: str, tmp_path: Path, engine: docker.DockerClient
) -> None:
    mb = modelberth({"models": {"m": fake_container(image, tmp_path)}})
    assert post_chat(mb).status_code == 200
    engine.containers.get(container_name(instance_of(mb), "m")).kill()
    wait_for(lambda: mb.status("m")["state"] == "failed", timeout=3)
    assert "signal 9" in mb.status("m")["last_error"]
    assert post_chat(mb).status_code == 200
    assert len(events_of(tmp_path / "events", "start")) == 2


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"image": "modelberth-test/absent:1", "pull": "never"},
            ["image 'modelberth-test/absent:1' is not present locally (pull: never)"],
        ),
        (
            {"image": "modelberth-test/absent:1", "pull": "missing"},
            ["image 'modelberth-test/absent:1' is missing and could not be pulled"],
        ),
        (
            {"command": ["/no/such/binary", "${PORT}"]},
            ["exited during start (exit code 127)", "exec /no/such/binary failed"],
        ),
    ],
    ids=["pull-never", "pull-fails", "bad-command"],
)
def test_start_errors_are_503_with_the_cause(
    containers: Any,
    modelberth: Any,
    image: str,
    tmp_path: Path,
    settings: dict[str, Any],
    message: list[str],
) -> None:
    mb = modelberth(
        {
            "models": {
                "m": {**fake_container(image, tmp_path), **settings},
                "ok": fake_container(image, tmp_path),
            }
        }
    )
    response = post_chat(mb)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "model_start_failed"
    for fragment in message:
        assert fragment in response.json()["error"]["message"]
    # The failed container is removed in the background (the 503 does not wait for it).
    wait_for(
        lambda: not [c for c in containers() if c.labels["modelberth.model"] == "m"], timeout=10
    )
    assert post_chat(mb, "ok").status_code == 200


def test_port_already_taken(containers: Any, modelberth: Any, image: str, tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        mb = modelberth({"models": {"m": fake_container(image, tmp_path, port=port)}})
        response = post_chat(mb)
    assert response.status_code == 503
    assert "exited during start" in response.json()["error"]["message"]
    assert "address already in use" in response.json()["error"]["message"].lower()


def test_daemon_down_keeps_modelberth_up_and_it_recovers(
    containers: Any, modelberth: Any, image: str, tmp_path: Path
) -> None:
    sock = tmp_path / "engine.sock"  # absent at first: the daemon is unreachable
    mb = modelberth(
        {
            "docker": {"url": f"unix://{sock}"},
            "models": {
                "m": fake_container(image, tmp_path),
                "local": {"command": [sys.executable, FAKE, "--port", "${PORT}"]},
            },
        }
    )
    response = post_chat(mb)
    assert response.status_code == 503
    assert "Docker daemon unreachable" in response.json()["error"]["message"]
    health = httpx.get(mb.url + "/health").json()
    assert health["status"] == "degraded"
    assert health["runtimes"]["docker"].startswith("degraded")
    assert health["runtimes"]["process"] == "ok"
    assert post_chat(mb, "local").status_code == 200

    sock.symlink_to("/var/run/docker.sock")  # the daemon "returns"
    assert post_chat(mb).status_code == 200
    assert httpx.get(mb.url + "/health").json()["status"] == "ok"


def test_kill_9_then_restart_adopts_the_running_container(
    containers: Any, modelberth: Any, image: str, tmp_path: Path
) -> None:
    config = {"models": {"m": fake_container(image, tmp_path)}}
    first = modelberth(config)
    assert post_chat(first).status_code == 200
    container_id = first.status("m")["runtime_id"]
    first.stop(signal.SIGKILL)
    assert len(containers()) == 1  # containers do not die with their manager

    # The same server again (same host, same port: the same default instance id).
    second = modelberth(
        {"server": {"port": first.port}, "models": {"m": fake_container(image, tmp_path)}}
    )
    status = second.status("m")
    assert status["state"] == "ready"
    assert status["runtime_id"] == container_id
    assert post_chat(second).status_code == 200
    assert len(events_of(tmp_path / "events", "start")) == 1
    assert len(containers()) == 1


def test_boot_removes_containers_that_do_not_match(
    containers: Any, modelberth: Any, image: str, tmp_path: Path, engine: docker.DockerClient
) -> None:
    first = modelberth({"models": {"m": fake_container(image, tmp_path)}})
    assert post_chat(first).status_code == 200
    first.stop(signal.SIGKILL)
    own = instance_of(first)
    stale = engine.containers.create(
        image,
        ["true"],
        name=container_name(own, "gone"),
        labels={LABEL_MANAGED: "true", "modelberth.model": "gone", LABEL_INSTANCE: own},
    )
    assert stale.status == "created"
    foreign = engine.containers.create(  # another instance's: none of this one's business
        image,
        ["true"],
        name=container_name("other", "m"),
        labels={LABEL_MANAGED: "true", "modelberth.model": "m", LABEL_INSTANCE: "other"},
    )
    try:
        changed = fake_container(image, tmp_path, "--chunks", "3")  # another config hash
        second = modelberth({"server": {"port": first.port}, "models": {"m": changed}})
        assert second.status("m")["state"] == "stopped"
        wait_for(lambda: [c.id for c in containers()] == [foreign.id], timeout=5)
        assert post_chat(second).status_code == 200
        assert len(containers()) == 2
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            foreign.remove(force=True)


def test_gpu_device_requests_reach_the_engine(
    image: str, engine: docker.DockerClient, tmp_path: Path
) -> None:
    yaml_text = f"""
models:
  some: {{runtime: docker, image: "{image}", gpus: [0, 1], command: [x, "${{PORT}}"]}}
  every: {{runtime: docker, image: "{image}", gpus: all, command: [x, "${{PORT}}"]}}
"""
    specs = parse_config(yaml_text).specs()
    runtime = DockerRuntime(instance="gpu-test")
    for name, expected in (
        ("some", {"Count": 0, "DeviceIDs": ["0", "1"]}),
        ("every", {"Count": -1, "DeviceIDs": []}),
    ):
        args = runtime._create_args(specs[name], 9999, image)
        args["name"] = f"modelberth-gpu-test-{name}"
        container = engine.containers.create(**args)
        try:
            (request,) = container.attrs["HostConfig"]["DeviceRequests"]
            assert request["Capabilities"] == [["gpu"]]
            assert {k: request[k] for k in expected} == expected
        finally:
            container.remove(force=True)


def test_bridge_network_publishes_the_port_on_loopback_only(
    image: str, engine: docker.DockerClient
) -> None:
    yaml_text = f"""
models:
  vl: {{runtime: docker, template: vllm, image: "{image}", model_path: org/m, network: bridge}}
"""
    spec = parse_config(yaml_text).specs()["vl"]
    args = DockerRuntime(instance="bridge-test")._create_args(spec, 9999, image)
    assert args["network_mode"] == "bridge"
    assert args["command"] == ["--model", "org/m", "--host", "0.0.0.0", "--port", "8000"]
    args["name"] = "modelberth-bridge-test"
    args.pop("network_mode")  # this engine runs with --bridge=none; the binding is what counts
    container = engine.containers.create(**args)
    try:
        bindings = container.attrs["HostConfig"]["PortBindings"]
        assert bindings == {"8000/tcp": [{"HostIp": "127.0.0.1", "HostPort": "9999"}]}
    finally:
        container.remove(force=True)


def test_gpu_model_without_nvidia_runtime_fails_clearly(
    containers: Any, modelberth: Any, image: str, tmp_path: Path
) -> None:
    mb = modelberth({"models": {"m": fake_container(image, tmp_path, gpus="all")}})
    response = post_chat(mb)
    assert response.status_code == 503
    assert "gpu" in response.json()["error"]["message"].lower()
    assert not containers()


def test_real_llama_server_in_a_container(
    containers: Any, modelberth: Any, image: str, tmp_path: Path
) -> None:
    model = ensure_tiny_model(tmp_path / "tiny.gguf")
    binary = llama_server_path()
    mb = modelberth(
        {
            "models": {
                "tiny": {
                    "runtime": "docker",
                    "image": image,
                    "pull": "never",
                    "command": llama_command(model),
                    "volumes": [*HOST_MOUNTS, f"{tmp_path}:{tmp_path}:ro"],
                }
            }
        }
    )
    began = time.monotonic()
    with openai.OpenAI(base_url=mb.url + "/v1", api_key="x", max_retries=0) as client:
        reply = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=8
        )
        assert reply.usage is not None
        assert reply.usage.completion_tokens > 0
        chunks = list(
            client.chat.completions.create(
                model="tiny",
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=8,
                stream=True,
            )
        )
        assert len(chunks) >= 3
    assert time.monotonic() - began < 30
    assert len(containers()) == 1
    assert os.path.exists(binary)


DOCKER_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
INSTANCE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")  # server.instance_id


def test_instance_ids_and_container_names_follow_the_rules() -> None:
    assert default_instance_id("GPU-Box.example.com", 8080) == "gpu-box.example.com-8080"
    assert default_instance_id("", 0) == "host-0"
    assert default_instance_id("-weird host!_", 80) == "weird-host-80"
    long = default_instance_id("h" * 300, 65535)
    assert len(long) == 63 and long.endswith("-65535")
    for made in (long, default_instance_id("..", 1), default_instance_id("a" * 57 + ".b", 9)):
        assert INSTANCE_ID.fullmatch(made), made
    assert container_name("alpha", "m") == "modelberth-alpha-m"
    colon, underscore = container_name("alpha", "llama3:8b"), container_name("alpha", "llama3_8b")
    assert colon != underscore
    for name in (colon, underscore, container_name("a", "x@y+z")):
        assert DOCKER_NAME.fullmatch(name), name


def test_two_instances_on_one_engine_leave_each_other_alone(
    containers: Any, modelberth: Any, image: str, tmp_path: Path, engine: docker.DockerClient
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = modelberth(
        {"server": {"instance_id": "alpha"}, "models": {"m": fake_container(image, tmp_path / "a")}}
    )
    assert post_chat(a).status_code == 200
    (a_container,) = containers()
    assert a_container.labels[LABEL_INSTANCE] == "alpha"

    # Another config (another hash for "m"), another instance, on the same engine.
    b = modelberth(
        {
            "server": {"instance_id": "beta"},
            "models": {"m": fake_container(image, tmp_path / "b", "--chunks", "3")},
        }
    )
    assert b.status("m")["state"] == "stopped"  # nothing of its own to adopt
    assert post_chat(b).status_code == 200
    time.sleep(1)  # what removed A's container before did so within a second
    a_container.reload()  # NotFound if B removed it
    assert a_container.status == "running"
    by_instance = {c.labels.get(LABEL_INSTANCE): c.id for c in containers()}
    assert by_instance == {"alpha": a_container.id, "beta": by_instance["beta"]}
    assert a.status("m")["state"] == "ready"
    assert a.status("m")["runtime_id"] == a_container.id[:12]
    assert post_chat(a).status_code == 200
    assert len(events_of(tmp_path / "a" / "events", "start")) == 1

    b.stop()  # B's shutdown removes B's container only
    (left,) = containers()
    assert left.id == a_container.id and left.status == "running"
    assert post_chat(a).status_code == 200
    a.stop()
    assert not containers()


def test_a_foreign_container_holding_the_name_is_an_error_not_removed(
    containers: Any, modelberth: Any, image: str, tmp_path: Path, engine: docker.DockerClient
) -> None:
    squatters = [  # a container of another program, and one of an instance with another id
        engine.containers.create(image, ["true"], name=container_name("alpha", "m")),
        engine.containers.create(
            image,
            ["true"],
            name=container_name("beta", "m"),
            labels={LABEL_MANAGED: "true", "modelberth.model": "m", LABEL_INSTANCE: "gamma"},
        ),
    ]
    try:
        for instance, squatter, owner in (
            ("alpha", squatters[0], "something else"),
            ("beta", squatters[1], "modelberth instance 'gamma'"),
        ):
            mb = modelberth(
                {
                    "server": {"instance_id": instance},
                    "models": {"m": fake_container(image, tmp_path)},
                }
            )
            response = post_chat(mb)
            assert response.status_code == 503
            message = response.json()["error"]["message"]
            assert f"container name '{container_name(instance, 'm')}' is taken" in message
            assert owner in message
            squatter.reload()  # still there
            mb.stop()
    finally:
        for squatter in squatters:
            with contextlib.suppress(docker.errors.NotFound):
                squatter.remove(force=True)


def test_adopted_container_keeps_its_earlier_output(
    containers: Any, modelberth: Any, image: str, tmp_path: Path, engine: docker.DockerClient
) -> None:
    settings = fake_container(image, tmp_path)
    settings["command"] = [
        "/bin/sh",
        "-c",
        'echo "loading weights (on stderr)" >&2; exec "$@"',
        "sh",
        *settings["command"],
    ]
    first = modelberth({"models": {"m": settings}})
    assert post_chat(first).status_code == 200
    assert "fake upstream starting" in model_logs(first)
    first.stop(signal.SIGKILL)

    second = modelberth({"server": {"port": first.port}, "models": {"m": settings}})
    assert second.status("m")["state"] == "ready"  # adopted
    logs = model_logs(second)
    assert logs.count("loading weights (on stderr)") == 1
    assert logs.count("fake upstream starting") == 1
    assert logs.index("loading weights") < logs.index("fake upstream starting")

    # What the container prints from now on lands in the same buffer, once.
    (container,) = containers()
    container.exec_run(["/bin/sh", "-c", "echo after adoption > /proc/1/fd/1"])
    wait_for(lambda: "after adoption" in model_logs(second), timeout=5)
    time.sleep(0.5)
    logs = model_logs(second)
    assert logs.count("after adoption") == 1
    assert logs.count("fake upstream starting") == 1

    container.kill()  # a crash after adoption quotes the output from before it
    wait_for(lambda: second.status("m")["state"] == "failed", timeout=5)
    last_error = second.status("m")["last_error"]
    assert "signal 9" in last_error
    assert "fake upstream starting" in last_error
    assert "after adoption" in last_error
    assert post_chat(second).status_code == 200  # a new container replaces the dead one
    assert [c.id for c in containers()] != [container.id]
