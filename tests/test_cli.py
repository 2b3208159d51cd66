"""The command line: the demo end to end, and the client commands against a live server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import free_port, upstreams_of, wait_for


def modelberth_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelberth", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str], Path]]:
    port = free_port()
    log = tmp_path / "demo.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "modelberth",
                "demo",
                "--port",
                str(port),
                "--log-format",
                "plain",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "MODELBERTH_CACHE_DIR": str(tmp_path / "cache")},
        )
    try:
        yield f"http://127.0.0.1:{port}", proc, log
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        left = upstreams_of(proc.pid)
        for leftover in left:
            leftover.kill()
        assert not left, "the demo left llama-server running"


def test_demo_answers_a_chat_request_within_seconds(
    demo: tuple[str, subprocess.Popen[str], Path],
) -> None:
    url, proc, log = demo
    began = time.monotonic()
    wait_for(lambda: "modelberth demo is ready" in log.read_text(), timeout=30)
    text = log.read_text()
    assert f"{url}/v1/chat/completions" in text  # the ready-to-paste curl
    assert f"Dashboard:       {url}/ui" in text
    assert httpx.get(f"{url}/ui", timeout=10).status_code == 200
    response = httpx.post(
        f"{url}/v1/chat/completions",
        timeout=30,
        json={
            "model": "tiny",
            "max_tokens": 24,
            "messages": [{"role": "user", "content": "Hello!"}],
        },
    )
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"]
    assert time.monotonic() - began < 15
    assert (Path(log).parent / "cache" / "tiny-llama.gguf").exists()

    # The client commands against the live demo.
    env = {"MODELBERTH_URL": url}
    listing = modelberth_cli("ps", env=env)
    assert listing.returncode == 0
    assert "tiny" in listing.stdout
    assert "ready" in listing.stdout
    assert modelberth_cli("stop", "tiny", env=env).stdout.strip() == "tiny: stopped"
    assert modelberth_cli("start", "tiny", env=env).stdout.strip() == "tiny: ready"
    assert modelberth_cli("restart", "tiny", env=env).stdout.strip() == "tiny: ready"
    logs = modelberth_cli("logs", "tiny", "-n", "500", env=env)
    assert "llama" in logs.stdout.lower()
    missing = modelberth_cli("start", "nope", env=env)
    assert missing.returncode == 1
    assert "error 404" in missing.stderr
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) in (0, -signal.SIGTERM)


def test_client_commands_say_when_no_server_answers() -> None:
    result = modelberth_cli("ps", "--url", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert "cannot reach modelberth" in result.stderr


def test_serve_with_an_invalid_config_exits_with_the_errors(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("models:\n  m:\n    comand: [x]\n")
    result = modelberth_cli("serve", "-c", str(config))
    assert result.returncode == 2
    assert "line 3" in result.stderr
    assert "unknown key 'comand'" in result.stderr


def test_json_log_format(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    port = free_port()
    config.write_text(f"server: {{port: {port}}}\nmodels: {{}}\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelberth", "serve", "-c", str(config), "--log-format", "json"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: _up(port), timeout=20)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any("modelberth listening on" in r["message"] for r in records)
    assert all({"time", "level", "message"} <= set(r) for r in records)


def _up(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
