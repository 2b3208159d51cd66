"""The container image: the Dockerfile built for real on a local Debian base, then run.

The base is `modelberth-base:bookworm` from scripts/debian-base.sh (no image can be pulled
here). The build uses BuildKit (the Dockerfile mounts an optional CA bundle for pip as a
secret): `docker` itself where it has buildx, else Debian's docker.io CLI, whose 20.10
`docker build` still carries BuildKit. The image is run with host networking, bound to
127.0.0.1 on a free port, with a config whose one model is tests/fake_upstream.py run by
the image's own Python. Every container and the image tag made here are removed, also when
a test fails; pip's and BuildKit's caches stay, so a second run builds in seconds.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx
import psutil
import pytest
import yaml
from docker.models.containers import Container

# tests/ is on sys.path through tests/conftest.py; `mypy` over the whole tree finds it, mypy
# given this file alone does not.
import test_docker  # type: ignore[import-not-found, unused-ignore]
from conftest import free_port, wait_for  # type: ignore[import-not-found, unused-ignore]

engine = test_docker.engine  # fixture: the engine, checked once

REPO = Path(__file__).resolve().parents[2]
BASE = os.environ.get("MODELBERTH_BASE_IMAGE", "modelberth-base:bookworm")
CONFIG = "/etc/modelberth/modelberth.yaml"
FAKE_DIR = "/opt/fake"  # tests/fake_upstream.py and the module it imports, read-only
UID = 10001
BUILD_TIMEOUT = 1500.0
SECOND = 1_000_000_000  # Docker's durations are in nanoseconds

# A first build downloads every dependency: more than pytest's default timeout allows.
pytestmark = pytest.mark.timeout(BUILD_TIMEOUT + 300)


@dataclass
class Served:
    container: Container
    url: str

    def logs(self) -> str:
        return self.container.logs().decode("utf-8", "replace")[-4000:]

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, trust_env=False)  # loopback only


@pytest.fixture(scope="module")
def base(engine: docker.DockerClient) -> str:
    try:
        engine.images.get(BASE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"no base image {BASE}: make it with scripts/debian-base.sh.", pytrace=False)
    return BASE


def _buildkit_cli() -> str:
    """A docker CLI whose `docker build` runs BuildKit (it knows --secret)."""
    for cli in dict.fromkeys(filter(None, (shutil.which("docker"), "/usr/bin/docker"))):
        if not os.access(cli, os.X_OK):
            continue
        probe = subprocess.run(
            [cli, "build", "--help"],
            capture_output=True,
            text=True,
            env={**os.environ, "DOCKER_BUILDKIT": "1"},
            timeout=60,
            check=False,
        )
        if probe.returncode == 0 and "--secret" in probe.stdout:
            return cli
    pytest.fail(
        "no docker CLI that builds with BuildKit (docker buildx, or Debian's docker.io)",
        pytrace=False,
    )


def _pip_cert() -> str | None:
    """The CA bundle pip uses on this machine ($PIP_CERT or pip's config), if any: the build
    gets it as the secret pip_cert, so its pip trusts the same proxy this machine's does."""
    cert = os.environ.get("PIP_CERT")
    if not cert:
        got = subprocess.run(
            ["python3", "-m", "pip", "config", "get", "global.cert"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        cert = got.stdout.strip() if got.returncode == 0 else None
    return cert if cert and Path(cert).is_file() else None


@pytest.fixture(scope="module")
def image(
    engine: docker.DockerClient, base: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    tag = f"modelberth-test/image:{os.getpid()}"
    cert = _pip_cert()
    command = [
        _buildkit_cli(),
        "build",
        "--progress",
        "plain",
        "--network",
        "host",
        "--build-arg",
        f"BASE={base}",
        "--tag",
        tag,
        *(["--secret", f"id=pip_cert,src={cert}"] if cert else []),
        str(REPO),
    ]
    log = tmp_path_factory.mktemp("build") / "build.log"
    began = time.monotonic()
    try:
        with log.open("wb") as out:
            done = subprocess.run(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "DOCKER_BUILDKIT": "1"},
                timeout=BUILD_TIMEOUT,
                check=False,
            )
        text = log.read_text(errors="replace")
        assert done.returncode == 0, f"docker build failed:\n{text[-6000:]}"
        print(f"\nimage {tag} built in {time.monotonic() - began:.1f}s")
        yield tag
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            engine.images.remove(tag, force=True)


def _run(engine: docker.DockerClient, image: str, config: Path, **settings: Any) -> Container:
    """The image in a detached container that checks its health every second (the image's
    own HEALTHCHECK command, only its interval shortened)."""
    volumes = {
        str(config): {"bind": CONFIG, "mode": "ro"},
        str(REPO / "tests" / "fake_upstream.py"): {
            "bind": f"{FAKE_DIR}/fake_upstream.py",
            "mode": "ro",
        },
        str(REPO / "tests" / "load_lines.py"): {"bind": f"{FAKE_DIR}/load_lines.py", "mode": "ro"},
    }
    return engine.containers.run(
        image,
        ["--log-format", "plain"],
        detach=True,
        init=True,
        volumes=volumes,
        healthcheck={"test": None, "interval": SECOND, "start_period": 60 * SECOND},
        labels={"modelberth.test": "image"},
        **settings,
    )


def _remove(container: Container) -> None:
    with contextlib.suppress(docker.errors.NotFound):
        container.remove(force=True, v=True)


def _exec(container: Container, *argv: str, check: bool = True) -> str:
    """Run argv in the container (as its user); its output, or an AssertionError (with
    check=False, "" when it fails)."""
    result = container.exec_run(list(argv))
    output = result.output
    text = output.decode("utf-8", "replace") if isinstance(output, bytes) else ""
    if result.exit_code != 0 and not check:
        return ""
    assert result.exit_code == 0, f"{argv}: exit {result.exit_code}: {text}"
    return text.strip()


def _config(directory: Path, **server: Any) -> Path:
    """A config with one model, fake_upstream.py run by the image's Python."""
    path = directory / "modelberth.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "server": server,
                "models": {
                    "m": {
                        "command": ["python", f"{FAKE_DIR}/fake_upstream.py", "--port", "${PORT}"],
                        "aliases": ["gpt-4o-mini"],
                    }
                },
            }
        )
    )
    path.chmod(0o644)  # read by the image's user through the bind mount
    return path


def _health(container: Container) -> str:
    container.reload()
    state: dict[str, Any] = container.attrs["State"]
    if state["Status"] != "running":
        raise AssertionError(f"container {state['Status']} (exit {state['ExitCode']})")
    status: str = state.get("Health", {}).get("Status", "none")
    return status


@pytest.fixture(scope="module")
def served(
    engine: docker.DockerClient, image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """The image on the host's network, bound to 127.0.0.1 on a free port."""
    port = free_port()
    config = _config(tmp_path_factory.mktemp("served"))
    container = _run(
        engine,
        image,
        config,
        network_mode="host",
        environment={"MODELBERTH_HOST": "127.0.0.1", "MODELBERTH_PORT": str(port)},
    )
    try:
        server = Served(container, f"http://127.0.0.1:{port}")

        def up() -> bool:
            _health(container)  # fails at once if it exited
            try:
                with server.client() as client:
                    return client.get("/health").status_code == 200
            except httpx.HTTPError:
                return False

        try:
            wait_for(up, timeout=60, interval=0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the container's output:\n{server.logs()}") from None
        yield server
    finally:
        _remove(container)


def test_health_answers_on_loopback(served: Served) -> None:
    with served.client() as client:
        response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok", body
    assert body["models"] == {"stopped": 1}


def test_docker_healthcheck_becomes_healthy(served: Served) -> None:
    try:
        wait_for(lambda: _health(served.container) == "healthy", timeout=60, interval=0.5)
    except AssertionError:
        log = served.container.attrs["State"].get("Health", {}).get("Log", [])
        raise AssertionError(
            f"health {_health(served.container)}: {log[-3:]}\n{served.logs()}"
        ) from None


def test_dashboard_is_served_from_the_installed_package(served: Served) -> None:
    with served.client() as client:
        root = client.get("/")
        page = client.get("/ui")
        style = client.get("/ui/style.css")
    assert (root.status_code, root.headers["location"]) == (307, "/ui")
    assert page.status_code == 200, page.text[:500]
    assert page.headers["content-type"].startswith("text/html")
    assert "<html" in page.text.lower()
    assert style.status_code == 200 and style.text.strip()
    # From site-packages of the venv (a wheel's install), not from a source tree.
    code = (
        "import pathlib; from modelberth.ui.router import STATIC; "
        "print(STATIC, (STATIC / 'index.html').is_file(), pathlib.Path('/src').exists())"
    )
    static, index, source = _exec(served.container, "python", "-c", code).split()
    assert static.startswith("/opt/modelberth/lib/python3") and "site-packages" in static
    assert (index, source) == ("True", "False")


def test_proxied_chat_completion(served: Served) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello!"}]}
    with served.client() as client:
        response = client.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, f"{response.text}\n{served.logs()}"
        answer = response.json()
        assert answer["choices"][0]["message"]["content"] == "hello"
        assert answer["model"] == "gpt-4o-mini"
        with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as stream:
            assert stream.status_code == 200
            text = "".join(stream.iter_text())
        assert "tok0" in text and text.rstrip().endswith("data: [DONE]")
        assert client.get("/api/models/m").json()["state"] == "ready"


def _container_processes(container: Container) -> list[psutil.Process]:
    container.reload()
    init = psutil.Process(container.attrs["State"]["Pid"])  # this host sees its pid space
    return [init, *init.children(recursive=True)]


def test_no_process_runs_as_root(served: Served) -> None:
    with served.client() as client:  # the upstream is running too
        assert client.post("/api/models/m/start").status_code == 200
    procs = _container_processes(served.container)
    commands = [" ".join(p.cmdline()) for p in procs]
    assert any("modelberth serve" in c for c in commands), commands
    assert any(f"{FAKE_DIR}/fake_upstream.py" in c for c in commands), commands
    for proc, command in zip(procs, commands, strict=True):
        uids, gids = proc.uids(), proc.gids()
        assert (uids.real, uids.effective, uids.saved) == (UID, UID, UID), command
        assert 0 not in (gids.real, gids.effective), command
    assert _exec(served.container, "id", "-u") == str(UID)


KEY = "image-test-key"


@pytest.fixture(scope="module")
def isolated(
    engine: docker.DockerClient, image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Container]:
    """The image with its defaults (0.0.0.0:8080) on no network at all, where 0.0.0.0 is a
    network namespace of its own; /health wants a key there (server.protect_health)."""
    config = _config(tmp_path_factory.mktemp("isolated"), protect_health=True, api_keys=[KEY])
    container = _run(engine, image, config, network_mode="none")
    try:
        yield container
    finally:
        _remove(container)


def _in(container: Container, method: str, path: str, check: bool = True) -> str:
    """A request from inside the container, to its server on the default port, with the key."""
    code = (
        "import sys, urllib.request as u; r = u.Request('http://127.0.0.1:8080' + "
        "sys.argv[2], method=sys.argv[1], headers={'Authorization': 'Bearer ' + sys.argv[3]});"
        " print(u.urlopen(r, timeout=30).read().decode())"
    )
    return _exec(container, "python", "-c", code, method, path, KEY, check=check)


def test_defaults_listen_on_all_addresses(
    engine: docker.DockerClient, image: str, isolated: Container
) -> None:
    settings = engine.images.get(image).attrs["Config"]
    env = dict(item.split("=", 1) for item in settings["Env"])
    assert env["MODELBERTH_CONFIG"] == CONFIG
    assert (env["MODELBERTH_HOST"], env["MODELBERTH_PORT"]) == ("0.0.0.0", "8080")
    assert settings["User"] == f"{UID}:{UID}"
    assert "http://127.0.0.1:{port}/health" in " ".join(settings["Healthcheck"]["Test"])
    listening = (
        "import pathlib; print(any(l.split()[1] == '00000000:1F90' "
        "and l.split()[3] == '0A' for l in "
        "pathlib.Path('/proc/net/tcp').read_text().splitlines()[1:]))"
    )
    try:
        wait_for(
            lambda: '"status":"ok"' in _in(isolated, "GET", "/health", check=False),
            timeout=60,
            interval=0.5,
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{isolated.logs().decode(errors='replace')[-3000:]}") from None
    assert _exec(isolated, "python", "-c", listening) == "True"


def test_healthcheck_counts_a_key_wanted_as_alive(isolated: Container) -> None:
    """With server.protect_health, /health answers 401 to the healthcheck: up all the same."""
    try:
        wait_for(lambda: _health(isolated) == "healthy", timeout=60, interval=0.5)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {isolated.attrs['State'].get('Health')}") from None


def test_sigterm_stops_the_models_and_the_server(isolated: Container) -> None:
    assert '"state":"ready"' in _in(isolated, "POST", "/api/models/m/start")
    began = time.monotonic()
    isolated.stop(timeout=30)  # SIGTERM through docker-init, SIGKILL after 30 s
    took = time.monotonic() - began
    isolated.reload()
    state = isolated.attrs["State"]
    logs = isolated.logs().decode("utf-8", "replace")
    assert took < 20, f"stopped after {took:.1f}s:\n{logs[-3000:]}"
    assert state["ExitCode"] in (0, 128 + 15), logs[-3000:]  # uvicorn re-raises SIGTERM
    assert "[m] stopping -> stopped (shutdown)" in logs
    assert "Application shutdown complete" in logs


# deploy/compose.yaml: `docker compose config` where the compose plugin exists; everywhere
# its structure, read with yaml, and what it points at.

COMPOSE = REPO / "deploy" / "compose.yaml"


def _dotenv(path: Path) -> dict[str, str]:
    values = {}
    for raw in path.read_text().splitlines():
        line = raw.strip().removeprefix("export ").strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def test_compose_file_structure() -> None:
    data = yaml.safe_load(COMPOSE.read_text())
    known = {"name", "include", "services", "volumes", "networks", "configs", "secrets"}
    assert set(data) <= known, set(data) - known
    here = COMPOSE.parent
    included = [
        here / (item["path"] if isinstance(item, dict) else item) for item in data["include"]
    ]
    assert included == [here / "signoz" / "docker-compose.yaml"]
    assert included[0].is_file()  # SigNoz's setup reused, not copied
    service = data["services"]["modelberth"]
    assert service["network_mode"] == "host" and service["init"] is True
    assert (
        here / service["build"]["context"] / service["build"]["dockerfile"]
    ).resolve() == REPO / "Dockerfile"
    mounts = {volume["target"]: volume for volume in service["volumes"]}
    assert mounts[CONFIG]["type"] == "bind" and mounts[CONFIG]["read_only"] is True
    assert mounts["/var/run/docker.sock"]["source"] == "/var/run/docker.sock"
    state = mounts["/var/lib/modelberth"]
    assert state["type"] == "volume" and state["source"] in data["volumes"]
    (env_file,) = service["env_file"]
    otel = _dotenv(here / env_file)
    assert otel["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://127.0.0.1:4317"  # SigNoz's collector
    assert "otel-collector" in service["depends_on"]
    assert set(service["environment"]) == {"MODELBERTH_HOST", "MODELBERTH_PORT"}
