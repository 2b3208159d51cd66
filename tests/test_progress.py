"""Loading progress and the stall timeout: the estimator on real servers' load lines, and a
real modelberth whose fake (and real llama-server) upstreams print them."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import EventReader, Modelberth, fake_model, llama_command
from load_lines import LLAMA_LINES, LLAMA_OLD_LINES, VLLM_LINES
from modelberth.config import Config
from modelberth.models.progress import Progress, StartProgress
from modelberth.runtimes.logbuffer import LogBuffer
from modelberth.runtimes.process import ProcessRuntime

CHAT = "/v1/chat/completions"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def replay(
    lines: list[str], previous: tuple[float, ...] = (), step: float = 0.5
) -> tuple[StartProgress, list[Progress]]:
    """Feed `lines` one by one through a LogBuffer, `step` seconds apart."""
    clock, logs = Clock(), LogBuffer()
    logs.append("stderr", "a line of an earlier start")  # not this start's
    progress = StartProgress(logs, previous, clock=clock)
    seen = []
    for line in lines:
        clock.now += step
        logs.append("stderr", line)
        seen.append(progress.snapshot())
    return progress, seen


def rising(values: list[int]) -> bool:
    return values == sorted(values) and len(set(values)) >= 3


# --- the estimator, on captured lines ---------------------------------------------------


@pytest.mark.parametrize("lines", [LLAMA_LINES, LLAMA_OLD_LINES], ids=["new", "old"])
def test_llama_cpp_stages_without_history(lines: list[str]) -> None:
    progress, seen = replay(lines)
    percents = [s.percent for s in seen if s.percent is not None]
    assert seen[0].percent is None  # the first line names no stage
    assert rising(percents) and max(percents) == 98  # never 100 before health says so
    phases = [s.phase for s in seen]
    assert {
        "loading model",
        "loading tensors",
        "creating context",
        "warming up",
        "model loaded",
        "listening",
    } <= set(phases)
    assert all(s.eta_seconds is None for s in seen)  # no history: no ETA
    progress.healthy()
    assert progress.snapshot().as_dict() | {"elapsed_seconds": 0} == {
        "elapsed_seconds": 0,
        "percent": 100,
        "eta_seconds": 0.0,
        "phase": "ready",
    }


def test_vllm_bars_move_within_their_stage() -> None:
    _, seen = replay(VLLM_LINES)
    by_phase = {s.phase: s.percent for s in seen}
    assert by_phase["loading weights 0/4"] == 10
    assert by_phase["loading weights 2/4"] == 35
    assert by_phase["loading weights 4/4"] == 60
    # The CUDA graph bar came as one line of carriage-return redraws: the last one counts.
    assert by_phase["capturing CUDA graphs 100%"] == 95
    assert seen[-1].percent == 99 and seen[-1].phase == "startup complete"
    assert rising([s.percent for s in seen if s.percent is not None])


def test_history_gives_a_time_based_percent_and_eta() -> None:
    clock, logs = Clock(), LogBuffer()
    progress = StartProgress(logs, (9.0, 10.0, 30.0), clock=clock)  # median 10 s
    assert progress.snapshot().percent == 0
    clock.now += 4
    now = progress.snapshot()
    assert (now.percent, now.eta_seconds) == (40, 6.0)
    logs.append("stderr", VLLM_LINES[-1])  # a stage further on than the clock wins
    now = progress.snapshot()
    assert (now.percent, now.eta_seconds) == (99, 0.1)
    slow = StartProgress(LogBuffer(), (10.0,), clock=clock)
    clock.now += 25  # slower than every start before: 95% at most, and no ETA
    assert (slow.snapshot().percent, slow.snapshot().eta_seconds) == (95, None)


def test_a_silent_first_start_has_no_percent_until_health_answers() -> None:
    clock = Clock()
    progress = StartProgress(LogBuffer(), (), clock=clock)
    clock.now += 30
    assert progress.snapshot() == Progress(30.0, None, None, "starting")
    progress.observe(None, "no connection")
    progress.observe(503, "Loading model")  # llama-server: up, loading
    assert (progress.snapshot().percent, progress.snapshot().phase) == (5, "loading (health 503)")


def test_movement_is_new_lines_and_health_changes_not_the_clock() -> None:
    clock, logs = Clock(), LogBuffer()
    progress = StartProgress(logs, (5.0,), clock=clock)
    progress.observe(None, "no connection")
    clock.now += 2
    assert progress.stalled(1.5) and not progress.stalled(0)  # 0: off
    logs.append("stderr", "still loading (1)")
    progress.observe(None, "no connection")
    assert not progress.stalled(1.5)
    clock.now += 2
    logs.append("modelberth", "started pid 7")  # our own lines do not count
    progress.observe(None, "no connection")
    assert progress.stalled(1.5)
    progress.observe(503, "Loading model")  # the health answer changed
    assert not progress.stalled(1.5)
    clock.now += 2
    progress.observe(503, "Loading model")  # the same again
    assert progress.stalled(1.5)


def test_logbuffer_since_counts_past_the_ring() -> None:
    logs = LogBuffer(max_lines=3)
    for i in range(5):
        logs.append("stdout", str(i))
    assert logs.count == 5
    assert [line.text for line in logs.since(1)] == ["2", "3", "4"]  # "1" has gone
    assert [line.text for line in logs.since(4)] == ["4"] and logs.since(5) == []


async def test_a_bar_redrawn_with_carriage_returns_arrives_redraw_by_redraw() -> None:
    """tqdm (vLLM's loading bars) redraws with a bare \r and ends the line only when done:
    each redraw must reach the buffer, and the progress, while the bar is still going."""
    script = (
        "import sys, time\n"
        "for i in (1, 2):\n"
        "    sys.stderr.write(f'\\rLoading safetensors checkpoint shards: {i * 50}% "
        "Completed | {i}/2'); sys.stderr.flush(); time.sleep(0.4)\n"
        "time.sleep(30)\n"
    )
    spec = Config.model_validate(
        {"models": {"m": {"command": [sys.executable, "-c", script, "${PORT}"]}}}
    ).specs()["m"]
    logs = LogBuffer()
    progress = StartProgress(logs, [])
    upstream = await ProcessRuntime().start(spec, 1, logs)
    try:

        async def seen() -> list[str]:
            while len(logs.tail()) < 2:
                await asyncio.sleep(0.05)
            return [line.text for line in logs.tail()]

        # The second redraw is still unterminated (it waits for the next byte): the first
        # arrived alone, before the bar was done.
        first = await asyncio.wait_for(seen(), 10)
        assert first[-1] == "Loading safetensors checkpoint shards: 50% Completed | 1/2"
        progress.read_logs()
        percent = progress.snapshot().percent
        assert percent is not None and 10 <= percent < 60  # half the shards: not yet 60
    finally:
        await upstream.stop(2)


def test_brief() -> None:
    assert Progress(3.2, 45, 3.2, "loading tensors").brief() == "45% eta 4s (loading tensors)"
    assert Progress(3.2, None, None, "starting").brief() == ""
    assert Progress(1, 7, 200.0, "starting").brief() == "7% eta 3m20s"


# --- a real modelberth ---------------------------------------------------------------------


def watch_start(mb: Modelberth, name: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Start `name`: its statuses polled while starting, and its start_progress events."""

    def last(kind: str, data: dict[str, Any]) -> bool:  # its last event: 100, or failed
        return data["model"] == name and (
            data.get("phase") == "ready" or data.get("to") == "failed"
        )

    reader = EventReader(mb.url, last)
    httpx.post(f"{mb.url}/api/models/{name}/start?wait=false", timeout=10).raise_for_status()
    statuses = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        statuses.append(status := mb.status(name))
        if status["state"] != "starting":
            break
        time.sleep(0.1)
    events = [
        data for kind, data in reader.wait(20) if kind == "start_progress" and data["model"] == name
    ]
    return statuses, events


@pytest.mark.parametrize("kind", ["vllm", "llama"])
def test_api_and_events_show_a_rising_percent(modelberth: Any, kind: str) -> None:
    mb = modelberth(
        {"models": {"m": fake_model(None, "--print-load-lines", kind, "--start-delay", "3")}}
    )
    statuses, events = watch_start(mb, "m")
    assert statuses[-1]["state"] == "ready" and statuses[-1]["progress"] is None
    shown = [
        s["progress"]["percent"]
        for s in statuses
        if s["state"] == "starting" and s["progress"] and s["progress"]["percent"]
    ]
    assert rising(shown), shown
    percents = [e["percent"] for e in events if e["percent"] is not None]
    assert rising(percents), events
    assert events[-1]["percent"] == 100 and events[-1]["phase"] == "ready"
    assert all({"elapsed_seconds", "eta_seconds", "phase"} <= e.keys() for e in events)


def test_a_second_start_goes_by_the_first_ones_duration(modelberth: Any) -> None:
    mb = modelberth({"models": {"m": fake_model(None, "--silent", "--start-delay", "1.5")}})
    statuses, events = watch_start(mb, "m")  # silent, no history: nothing honest to say
    starting = [s["progress"] for s in statuses if s["state"] == "starting"]
    assert starting and all(
        p["percent"] is None and p["eta_seconds"] is None for p in starting if p
    )
    assert all(e["percent"] is None for e in events[:-1]) and events[-1]["percent"] == 100
    httpx.post(f"{mb.url}/api/models/m/stop", timeout=20).raise_for_status()
    statuses, events = watch_start(mb, "m")
    known = [s["progress"] for s in statuses if s["state"] == "starting" and s["progress"]]
    assert any(p["percent"] is not None and p["eta_seconds"] is not None for p in known)
    assert all(e["percent"] is not None for e in events)
    assert any(e["eta_seconds"] for e in events[:-1])


def test_the_real_llama_server_start_ends_at_100(modelberth: Any, tiny_model: Path) -> None:
    mb = modelberth({"models": {"tiny": {"command": llama_command(tiny_model)}}})
    statuses, events = watch_start(mb, "tiny")
    assert statuses[-1]["state"] == "ready"
    assert events and events[-1]["percent"] == 100 and events[-1]["phase"] == "ready"
    # The stages this llama-server printed during the start, read as the estimator reads them.
    logs = httpx.get(f"{mb.url}/api/models/tiny/logs?tail=500", timeout=10).text.splitlines()
    _, seen = replay(logs)
    assert {"loading model", "model loaded", "listening"} <= {s.phase for s in seen}


@pytest.mark.parametrize("health", ["refused", "503"])
def test_a_silent_start_fails_at_stall_timeout(modelberth: Any, health: str) -> None:
    extra = ["--loading-503"] if health == "503" else []
    mb = modelberth(
        {
            "models": {
                "m": fake_model(
                    None,
                    "--silent",
                    "--start-delay",
                    "600",
                    *extra,
                    stall_timeout=1.5,
                    start_timeout=60,
                    stop_timeout=1,
                )
            }
        }
    )
    began = time.monotonic()
    with mb.client() as client:
        response = client.post(CHAT, json={"model": "m", "messages": []})
    assert time.monotonic() - began < 30  # long before start_timeout
    assert response.status_code == 504
    error = response.json()["error"]
    assert error["code"] == "model_start_timeout"
    assert "nothing moved for 1.5s (stall_timeout)" in error["message"]
    status = mb.status("m")
    assert status["state"] == "failed" and "stall_timeout" in status["last_error"]
    if health == "503":
        assert "health: 503 Loading model" in status["last_error"]


def test_an_upstream_that_keeps_printing_is_never_stalled(modelberth: Any) -> None:
    mb = modelberth(
        {
            "models": {
                "m": fake_model(
                    None, "--print-every", "0.3", "--start-delay", "4", stall_timeout=1.5
                )
            }
        }
    )
    with mb.client() as client:
        response = client.post(CHAT, json={"model": "m", "messages": []})
    assert response.status_code == 200, response.text
    logs = httpx.get(f"{mb.url}/api/models/m/logs", timeout=10).text
    assert "still loading (10)" in logs  # it printed for 3 s and more: twice stall_timeout
    assert mb.status("m")["state"] == "ready"


def test_start_timeout_still_caps_a_chatty_start(modelberth: Any) -> None:
    mb = modelberth(
        {
            "models": {
                "m": fake_model(
                    None,
                    "--print-every",
                    "0.3",
                    "--start-delay",
                    "600",
                    stall_timeout=1.5,
                    start_timeout=3,
                    stop_timeout=1,
                )
            }
        }
    )
    with mb.client() as client:
        response = client.post(CHAT, json={"model": "m", "messages": []})
    assert response.status_code == 504
    message = response.json()["error"]["message"]
    assert "did not become healthy within 3s (start_timeout)" in message
    assert "still loading" in message  # the log tail
    assert "start_timeout" in mb.status("m")["last_error"]


def test_loading_messages_carry_the_percent(modelberth: Any) -> None:
    mb = modelberth(
        {
            "server": {"stream_keepalive": 0.3},
            "models": {
                "v": fake_model(None, "--print-load-lines", "vllm", "--start-delay", "3"),
                "r": fake_model(
                    None,
                    "--print-load-lines",
                    "llama",
                    "--start-delay",
                    "3",
                    loading_status="reasoning",
                ),
            },
        }
    )
    with mb.client() as client:
        text = client.post(CHAT, json={"model": "v", "stream": True, "chunks": 1}).text
        reasoning = client.post(CHAT, json={"model": "r", "stream": True, "chunks": 1}).text
    comments = [line for line in text.splitlines() if line.startswith(": loading v ")]
    assert comments[0].startswith(": loading v 0.")  # the old wording comes first
    percents = [int(c.split("%")[0].rsplit(" ", 1)[1]) for c in comments if "%" in c]
    assert rising(percents), comments
    assert "(loading weights" in text and "tok0" in text
    thoughts = [
        json.loads(line[6:])["choices"][0]["delta"].get("reasoning_content", "")
        for line in reasoning.splitlines()
        if line.startswith("data: {")
    ]
    assert any("%" in t and t.startswith("Loading r... ") for t in thoughts), thoughts


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelberth", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_start_prints_progress(modelberth: Any) -> None:
    mb = modelberth(
        {"models": {"m": fake_model(None, "--print-load-lines", "llama", "--start-delay", "2.5")}}
    )
    done = cli("start", "m", "--url", mb.url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "m: ready"
    progress = [line for line in done.stderr.splitlines() if line.startswith("m: starting ")]
    assert any("%" in line for line in progress), done.stderr
    assert "m: stopped -> starting" in done.stderr and "m: starting -> ready" in done.stderr
    assert "m: ready after " in done.stderr
    again = cli("start", "m", "--url", mb.url)  # already ready: no start, same answer
    assert (again.returncode, again.stdout.strip()) == (0, "m: ready")


@pytest.fixture
def old_server() -> Iterator[str]:
    """A server with POST /api/models/m/start and nothing else (no /api/events)."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            ok = self.path == "/api/models/m/start"
            body = json.dumps({"name": "m", "state": "ready"} if ok else {}).encode()
            self.send_response(200 if ok else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self.send_error(404)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_cli_start_without_events_still_answers(old_server: str) -> None:
    done = cli("start", "m", "--url", old_server)
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, "m: ready", "")
