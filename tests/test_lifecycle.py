"""Lifecycle on real processes: on-demand start, failures, TTL, manual control, crashes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from conftest import Modelberth, events_of, fake_model, process_gone, upstreams_of, wait_for
from modelberth.runtimes.process import MODEL_ENV, OWNER_ENV

CHAT = "/v1/chat/completions"


async def _burst(url: str, model: str, n: int, **body: Any) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=n)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        return await asyncio.gather(
            *(client.post(CHAT, json={"model": model, "messages": [], **body}) for _ in range(n))
        )


def burst(mb: Modelberth, model: str, n: int, **body: Any) -> list[httpx.Response]:
    return asyncio.run(_burst(mb.url, model, n, **body))


def test_cold_start_with_50_concurrent_requests_starts_one_process(
    modelberth: Any, tmp_path: Path
) -> None:
    events = tmp_path / "events"
    mb = modelberth({"models": {"m": fake_model(events, "--start-delay", "0.5")}})
    assert mb.status("m")["state"] == "stopped"

    responses = burst(mb, "m", 50)

    assert [r.status_code for r in responses] == [200] * 50
    assert len(events_of(events, "start")) == 1
    assert len(events_of(events, "request")) == 50
    status = mb.status("m")
    assert status["state"] == "ready"
    assert status["starts"] == 1
    assert status["in_flight"] == 0
    assert status["queue"] == 0


def test_start_failure_reaches_every_waiter_and_the_next_request_retries(
    modelberth: Any, tmp_path: Path
) -> None:
    events = tmp_path / "events"
    mb = modelberth(
        {
            "models": {
                "broken": fake_model(events, "--exit-code", "7"),
                "good": fake_model(None),
            }
        }
    )

    responses = burst(mb, "broken", 10)

    assert {r.status_code for r in responses} == {503}
    assert len(events_of(events, "start")) == 1
    error = responses[0].json()["error"]
    assert error["code"] == "model_start_failed"
    assert error["type"] == "server_error"
    assert "exit code 7" in error["message"]
    assert "cannot load model weights (simulated)" in error["message"]
    status = mb.status("broken")
    assert status["state"] == "failed"
    assert "exit code 7" in status["last_error"]

    with mb.client() as client:
        again = client.post(CHAT, json={"model": "broken", "messages": []})
        assert again.status_code == 503
        assert len(events_of(events, "start")) == 2
        assert client.post(CHAT, json={"model": "good", "messages": []}).status_code == 200


def test_missing_executable_is_a_clear_start_failure(modelberth: Any) -> None:
    mb = modelberth(
        {"models": {"ghost": {"command": ["/nonexistent/llama-server", "--port", "${PORT}"]}}}
    )
    with mb.client() as client:
        response = client.post(CHAT, json={"model": "ghost", "messages": []})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "model_start_failed"
    assert "/nonexistent/llama-server" in response.json()["error"]["message"]


def test_start_timeout_is_504_and_the_process_is_killed(modelberth: Any, tmp_path: Path) -> None:
    events = tmp_path / "events"
    mb = modelberth(
        {
            "models": {
                "slow": fake_model(events, "--start-delay", "30", start_timeout=1, stop_timeout=1)
            }
        }
    )
    began = time.monotonic()
    with mb.client() as client:
        response = client.post(CHAT, json={"model": "slow", "messages": []})
    assert response.status_code == 504
    assert 0.9 < time.monotonic() - began < 5
    assert response.json()["error"]["code"] == "model_start_timeout"
    assert mb.status("slow")["state"] == "failed"
    wait_for(lambda: not upstreams_of(mb.pid), timeout=5)


def test_idle_timeout_stops_after_the_last_request_finished(
    modelberth: Any, tmp_path: Path
) -> None:
    mb = modelberth({"models": {"m": fake_model(None, idle_timeout=1)}})
    with mb.client() as client:
        # A 2.4 s stream outlives the 1 s TTL: the model must stay up while it runs.
        with client.stream(
            "POST", CHAT, json={"model": "m", "stream": True, "chunks": 8, "chunk_delay": 0.3}
        ) as stream:
            pid = int(mb.status("m")["runtime_id"])
            body = b"".join(stream.iter_bytes())
        assert body.count(b"data: ") == 9
        assert mb.status("m")["state"] == "ready"
        finished = time.monotonic()
        wait_for(lambda: mb.status("m")["state"] == "stopped", timeout=5)
        assert time.monotonic() - finished >= 0.8
    wait_for(lambda: process_gone(pid), timeout=3)


def test_manual_start_stop_restart(modelberth: Any, tmp_path: Path) -> None:
    events = tmp_path / "events"
    mb = modelberth({"models": {"m": fake_model(events, "--start-delay", "0.3")}})
    with mb.client() as client:
        started = client.post("/api/models/m/start")
        assert started.status_code == 200
        assert started.json()["state"] == "ready"
        first_pid = started.json()["runtime_id"]
        assert started.json()["port"] > 0

        restarted = client.post("/api/models/m/restart").json()
        assert restarted["state"] == "ready"
        assert restarted["runtime_id"] != first_pid
        assert process_gone(int(first_pid))

        stopped = client.post("/api/models/m/stop").json()
        assert stopped["state"] == "stopped"
        assert stopped["runtime_id"] is None

        accepted = client.post("/api/models/m/start", params={"wait": "false"})
        assert accepted.status_code == 202
        assert accepted.json()["state"] == "starting"
        wait_for(lambda: mb.status("m")["state"] == "ready", timeout=10)
        assert len(events_of(events, "start")) == 3

        missing = client.post("/api/models/nope/start")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "model_not_found"


def test_failed_manual_start_reports_503(modelberth: Any) -> None:
    mb = modelberth({"models": {"broken": fake_model(None, "--exit-code", "3")}})
    with mb.client() as client:
        response = client.post("/api/models/broken/start")
    assert response.status_code == 503
    assert "exit code 3" in response.json()["error"]["message"]


def test_crash_while_ready_is_noticed_at_once_and_next_request_restarts(
    modelberth: Any, tmp_path: Path
) -> None:
    events = tmp_path / "events"
    mb = modelberth({"models": {"m": fake_model(events)}})
    with mb.client() as client:
        assert client.post(CHAT, json={"model": "m", "messages": []}).status_code == 200
        pid = int(mb.status("m")["runtime_id"])
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: mb.status("m")["state"] == "failed", timeout=2)
        assert "signal 9" in mb.status("m")["last_error"]
        assert client.post(CHAT, json={"model": "m", "messages": []}).status_code == 200
    assert len(events_of(events, "start")) == 2


def test_full_queue_is_429_with_retry_after(modelberth: Any) -> None:
    mb = modelberth({"models": {"m": fake_model(None, "--start-delay", "1.5", max_queue=3)}})
    responses = burst(mb, "m", 8)
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 3 + [429] * 5
    rejected = next(r for r in responses if r.status_code == 429)
    assert int(rejected.headers["retry-after"]) >= 1
    assert rejected.json()["error"]["code"] == "queue_full"
    assert rejected.json()["error"]["type"] == "rate_limit_error"


def test_stop_waits_for_in_flight_requests(modelberth: Any) -> None:
    mb = modelberth({"models": {"m": fake_model(None)}})

    async def scenario() -> tuple[httpx.Response, httpx.Response, float]:
        async with httpx.AsyncClient(base_url=mb.url, timeout=30) as client:
            slow = asyncio.create_task(
                client.post(CHAT, json={"model": "m", "messages": [], "sleep": 1.0})
            )
            await asyncio.sleep(0.5)  # the slow request is in flight
            began = time.monotonic()
            stop = await client.post("/api/models/m/stop")
            return await slow, stop, time.monotonic() - began

    slow, stop, took = asyncio.run(scenario())
    assert slow.status_code == 200
    assert stop.json()["state"] == "stopped"
    assert took >= 0.3


def test_sigterm_stops_every_upstream_even_one_ignoring_sigterm(
    modelberth: Any, tmp_path: Path
) -> None:
    events = tmp_path / "events"
    mb = modelberth(
        {
            "models": {
                "stubborn": fake_model(
                    events, "--ignore-sigterm", "--spawn-child", stop_timeout=0.5
                ),
                "plain": fake_model(None),
            }
        }
    )
    with mb.client() as client:
        for name in ("stubborn", "plain"):
            assert client.post(f"/api/models/{name}/start").status_code == 200
    pids = [p.pid for p in upstreams_of(mb.pid)]
    assert len(pids) == 3  # two upstreams and the stubborn one's child
    # uvicorn re-raises the signal after its graceful shutdown, hence -SIGTERM.
    assert mb.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    assert not upstreams_of(mb.pid)
    log = mb.log()
    assert "[stubborn] stopping -> stopped (shutdown)" in log
    assert "[plain] stopping -> stopped (shutdown)" in log
    assert "no exit 0.5s after SIGTERM, sending SIGKILL" in log


def test_kill_9_leaves_nothing_once_modelberth_restarts(modelberth: Any, tmp_path: Path) -> None:
    events = tmp_path / "events"
    config = {"models": {"m": fake_model(events, "--spawn-child", preload=True)}}
    first = modelberth(config)
    wait_for(lambda: first.status("m")["state"] == "ready", timeout=10)
    leader = int(first.status("m")["runtime_id"])
    child = int(events_of(events, "child")[0].split()[1])
    first.stop(signal.SIGKILL)
    # The death signal ends the upstream itself at once ...
    wait_for(lambda: process_gone(leader), timeout=3)
    # ... and what it spawned is found and ended by the next modelberth on boot.
    assert psutil.pid_exists(child)
    second = modelberth({"models": {"m": fake_model(None)}})
    wait_for(lambda: process_gone(child), timeout=5)
    assert "left by an earlier run" in second.log()


def test_a_tagged_process_of_another_pid_namespace_is_left_alone(
    modelberth: Any, tmp_path: Path
) -> None:
    """A modelberth in a container tags its upstreams with its pid there, which means
    nothing on this machine: seen from here such an upstream looks orphaned, yet it is not
    ours to end. `unshare --pid` makes the same situation a container does. A process with
    the same tag in our own namespace is ended, as the control."""
    dead = next(p for p in range(4_000_000, 4_100_000) if not psutil.pid_exists(p))
    tag = f"{dead}:1.000"  # an owner that does not exist here
    foreign = subprocess.Popen(
        [
            "unshare",
            "--pid",
            "--fork",
            "--kill-child",  # only the sleeper carries the tag
            "env",
            f"{OWNER_ENV}={tag}",
            f"{MODEL_ENV}=theirs",
            "sleep",
            "120",
        ]
    )
    ours = subprocess.Popen(["sleep", "120"], env={**os.environ, OWNER_ENV: tag, MODEL_ENV: "ours"})
    try:
        wait_for(lambda: len(psutil.Process(foreign.pid).children()) == 1, timeout=5)
        (sleeper,) = psutil.Process(foreign.pid).children()
        wait_for(lambda: sleeper.environ().get(OWNER_ENV) == tag, timeout=5)
        mb = modelberth({"models": {"m": fake_model(None)}})
        wait_for(lambda: ours.poll() is not None, timeout=10)  # judged, and ended
        assert "(ours)" in mb.log()
        assert sleeper.is_running() and foreign.poll() is None  # another namespace's
        assert "(theirs)" not in mb.log()
    finally:
        for proc in (foreign, ours):
            proc.kill()
            proc.wait()
