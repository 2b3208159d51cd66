"""Shared fixtures: a real modelberth server in a subprocess, fake and real upstreams."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml

from modelberth.demo import llama_server_path
from modelberth.models.learned import STATE_DIR_ENV
from modelberth.runtimes.process import OWNER_ENV
from modelberth.tinymodel import ensure_tiny_model

TESTS = Path(__file__).parent
FAKE = str(TESTS / "fake_upstream.py")


# In-process registries keep their learned footprints here, never in ~/.cache.
if STATE_DIR_ENV not in os.environ:
    os.environ[STATE_DIR_ENV] = tempfile.mkdtemp(prefix="modelberth-state-")
    atexit.register(shutil.rmtree, os.environ[STATE_DIR_ENV], ignore_errors=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def fake_model(events: Path | None = None, *extra: str, **settings: Any) -> dict[str, Any]:
    """Config of one model served by fake_upstream.py."""
    command = [sys.executable, FAKE, "--port", "${PORT}", *extra]
    if events is not None:
        command += ["--events", str(events)]
    return {"command": command, **settings}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated 0.5 MB llama GGUF with random weights (see modelberth.tinymodel)."""
    return ensure_tiny_model(tmp_path_factory.mktemp("models") / "tiny.gguf")


def llama_command(model: Path, *extra: str) -> list[str]:
    """The command of a real llama-server serving `model` on ${PORT}, kept small."""
    return [
        str(llama_server_path()),
        "-m",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        "${PORT}",
        "-t",
        "1",
        "-np",
        "1",
        "-c",
        "512",
        "--no-webui",
        *extra,
    ]


def upstreams_of(pid: int) -> list[psutil.Process]:
    """Every live process that the modelberth with this pid started (by its owner tag)."""
    found = []
    for proc in psutil.process_iter():
        try:
            tag = proc.environ().get(OWNER_ENV, "")
            if tag.startswith(f"{pid}:") and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def events_of(path: Path, kind: str) -> list[str]:
    if not path.exists():
        return []
    return [line for line in path.read_text().splitlines() if line.startswith(kind + " ")]


def process_gone(pid: int) -> bool:
    """Whether the process has exited (a zombie not yet reaped counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


class EventReader:
    """Reads /api/events in a thread until `until(kind, data)` says so: `events` holds
    (kind, data) for every event seen. `wait()` joins the thread."""

    def __init__(self, url: str, until: Callable[[str, dict[str, Any]], bool]) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._until = until
        self._thread = threading.Thread(target=self._read, args=(url,), daemon=True)
        self._thread.start()
        time.sleep(0.3)  # let the stream subscribe before the test acts

    def _read(self, url: str) -> None:
        with httpx.stream("GET", url + "/api/events", timeout=30) as resp:
            kind = ""
            for line in resp.iter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    self.events.append((kind, json.loads(line[6:])))
                    if self._until(kind, self.events[-1][1]):
                        return

    def wait(self, timeout: float = 20) -> list[tuple[str, dict[str, Any]]]:
        self._thread.join(timeout)
        return self.events


class Modelberth:
    """`modelberth serve` in a subprocess, on a free loopback port."""

    def __init__(self, tmp: Path, config: dict[str, Any]) -> None:
        self.port = free_port()
        config.setdefault("server", {})
        config["server"].setdefault("port", self.port)
        config["server"]["host"] = "127.0.0.1"
        self.config_path = tmp / "modelberth.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = tmp / "modelberth.log"
        self.url = f"http://127.0.0.1:{config['server']['port']}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(
        self,
        extra: list[str] | None = None,
        env: dict[str, str] | None = None,
        prefix: list[str] | None = None,
    ) -> Modelberth:
        """`prefix` runs the server under a command that execs it (such as prlimit)."""
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    *(prefix or []),
                    sys.executable,
                    "-m",
                    "modelberth",
                    "serve",
                    "-c",
                    str(self.config_path),
                    "--log-format",
                    "plain",
                    "--log-level",
                    "DEBUG",
                    *(extra or []),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its learned footprints stay with this server (kept across its restarts).
                env={
                    **os.environ,
                    "NO_PROXY": "*",
                    "MODELBERTH_STATE_DIR": str(self.config_path.parent / "state"),
                    **(env or {}),
                },
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"modelberth exited at start:\n{self.log()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code in (200, 401):
                    return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise AssertionError(f"modelberth did not come up:\n{self.log()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, **{"timeout": 30, **kwargs})

    def status(self, name: str) -> dict[str, Any]:
        data: dict[str, Any] = httpx.get(f"{self.url}/api/models/{name}", timeout=10).json()
        return data

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"modelberth ignored signal {sig}:\n{self.log()[-3000:]}"
            ) from None

    def kill_leftovers(self) -> list[int]:
        """Safety net for failed tests: end what this server started, report the pids."""
        left = upstreams_of(self.pid)
        for proc in left:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                proc.kill()
        return [p.pid for p in left]


@pytest.fixture
def modelberth(tmp_path: Path) -> Iterator[Any]:
    """Factory: modelberth(config_dict) starts a server; all are stopped and checked after."""
    servers: list[Modelberth] = []

    def make(config: dict[str, Any], start: bool = True) -> Modelberth:
        directory = tmp_path / f"mb{len(servers)}"
        directory.mkdir()
        server = Modelberth(directory, config)
        servers.append(server)
        return server.start() if start else server

    yield make
    leaks = []
    for server in servers:
        if server.proc is None:
            continue
        assert server.stop() in (0, -signal.SIGTERM, -signal.SIGKILL), server.log()[-3000:]
        leaks += server.kill_leftovers()
    assert not leaks, f"upstream processes outlived modelberth: {leaks}"
