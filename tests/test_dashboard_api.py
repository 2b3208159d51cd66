"""The API the dashboard reads (issue #17): recent requests, history, modelberth's own log,
the running config with its secrets hidden, the last reload, stop-all and the live events.
A real modelberth with real fake upstreams (tests/fake_upstream.py) over loopback."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from conftest import EventReader, Modelberth, fake_model, wait_for
from modelberth.models.events import EventBus

CHAT = "/v1/chat/completions"


def chat(mb: Modelberth, model: str, **body: Any) -> httpx.Response:
    with mb.client() as client:
        return client.post(
            CHAT, json={"model": model, "messages": [{"role": "user", "content": "hi"}], **body}
        )


def get(mb: Modelberth, path: str, **params: Any) -> httpx.Response:
    return httpx.get(mb.url + path, params=params, timeout=10)


def test_recent_requests_are_listed_newest_first_with_their_timings(
    modelberth: Any, tmp_path: Path
) -> None:
    mb = modelberth({"models": {"m": fake_model(aliases=["alias-m"])}})
    assert chat(mb, "alias-m").status_code == 200  # cold: starts m
    assert chat(mb, "m", stream=True).status_code == 200
    assert chat(mb, "missing").status_code == 404

    listed = get(mb, "/api/requests").json()
    assert listed["size"] == 500 and listed["capture_bodies"] is False
    missing, streamed, cold = listed["requests"]
    assert missing["status"] == 404 and "missing" in missing["error"]
    assert (streamed["model"], streamed["requested"], streamed["streamed"]) == ("m", "m", True)
    assert streamed["cold"] is False and streamed["output_tokens"] == 5
    assert (cold["model"], cold["requested"], cold["cold"]) == ("m", "alias-m", True)
    assert cold["input_tokens"] == 3 and cold["output_tokens"] == 1
    assert cold["route"] == CHAT and cold["method"] == "POST" and cold["status"] == 200
    assert cold["queue_seconds"] > 0 and cold["ttft_seconds"] >= cold["queue_seconds"]
    assert cold["duration_seconds"] >= cold["ttft_seconds"]
    assert cold["id"] < streamed["id"] < missing["id"]

    assert [r["id"] for r in get(mb, "/api/requests", status="error").json()["requests"]] == [
        missing["id"]
    ]
    assert len(get(mb, "/api/requests", status="ok").json()["requests"]) == 2
    assert len(get(mb, "/api/requests", model="alias-m").json()["requests"]) == 1
    assert len(get(mb, "/api/requests", limit=1).json()["requests"]) == 1

    detail = get(mb, f"/api/requests/{cold['id']}").json()
    assert detail["request_body"] is None and detail["response_body"] is None  # capture off
    gone = get(mb, "/api/requests/999999")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "request_not_found"
    bad = get(mb, "/api/requests", status="great")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "query.status"
    assert get(mb, "/health").status_code == 200  # still serving


def test_bodies_are_captured_only_when_switched_on_and_cut_at_the_limit(modelberth: Any) -> None:
    mb = modelberth(
        {
            "activity": {"size": 3, "capture_bodies": True, "capture_kb": 1},
            "models": {"m": fake_model()},
        }
    )
    assert chat(mb, "m", pad="x" * 3000).status_code == 200
    assert chat(mb, "m", stream=True).status_code == 200
    big, streamed = (
        get(mb, f"/api/requests/{r['id']}").json()
        for r in reversed(get(mb, "/api/requests").json()["requests"])
    )
    assert big["request_truncated"] is True and len(big["request_body"]) == 1024
    assert big["request_body"].startswith('{"model":"m"')
    assert json.loads(big["response_body"])["choices"][0]["message"]["content"] == "hello"
    assert big["response_truncated"] is False
    assert streamed["response_body"].count("data: ") == 6  # five chunks and [DONE]

    for _ in range(3):
        chat(mb, "m")
    kept = get(mb, "/api/requests").json()["requests"]
    assert len(kept) == 3 and get(mb, f"/api/requests/{big['id']}").status_code == 404

    # A reload that switches capturing off drops what was captured.
    config = yaml.safe_load(mb.config_path.read_text())
    config["activity"]["capture_bodies"] = False
    mb.config_path.write_text(yaml.safe_dump(config))
    assert httpx.post(mb.url + "/api/reload", timeout=10).status_code == 200
    assert get(mb, f"/api/requests/{kept[0]['id']}").json()["request_body"] is None


def test_history_samples_the_machine_and_marks_evictions(modelberth: Any, tmp_path: Path) -> None:
    mb = modelberth(
        {
            "resources": {"memory_budget_mb": 250},
            "models": {name: fake_model(memory_mb=150) for name in ("a", "b")},
        }
    )
    assert chat(mb, "a").status_code == 200
    assert chat(mb, "b").status_code == 200  # a is idle: evicted for b
    history = get(mb, "/api/history").json()
    assert history["interval_seconds"] == 5 and history["window_seconds"] == 900
    first = history["samples"][0]  # taken at boot
    assert 0 < first["memory_used_bytes"] < first["memory_total_bytes"]
    assert first["gpus"] == [] and first["queued"] == 0
    [eviction] = history["evictions"]
    assert (eviction["model"], eviction["for_model"]) == ("a", "b")
    budgets = get(mb, "/api/resources").json()["budgets"]
    assert budgets == {"memory_bytes": 250 * 2**20, "gpus": []}


def test_model_status_carries_estimates_and_the_idle_deadline(modelberth: Any) -> None:
    mb = modelberth({"models": {"m": fake_model(memory_mb=300, idle_timeout=60, preload=True)}})
    wait_for(lambda: mb.status("m")["state"] == "ready")
    status = mb.status("m")
    assert status["estimate_memory_bytes"] == 300 * 2**20
    assert status["preload"] is True and status["gpus"] is None
    assert status["idle_stop_at"] is not None
    assert 55 < status["idle_stop_at"] - status["last_used_at"] <= 60.5
    # /v1/models tells chat UIs the same (issue #18): seconds left, null when not running.
    listed = {
        m["id"]: m["modelberth"]
        for m in httpx.get(mb.url + "/v1/models", timeout=10).json()["data"]
    }
    assert 55 < listed["m"]["idle_seconds_left"] <= 60
    assert httpx.post(mb.url + "/api/models/m/stop", timeout=30).json()["state"] == "stopped"
    listed = {
        m["id"]: m["modelberth"]
        for m in httpx.get(mb.url + "/v1/models", timeout=10).json()["data"]
    }
    assert listed["m"]["idle_seconds_left"] is None
    assert mb.status("m")["idle_stop_at"] is None


def test_own_log_lists_and_follows_modelberths_lines(modelberth: Any) -> None:
    mb = modelberth({"models": {"m": fake_model()}})
    seen: list[dict[str, Any]] = []

    def follow() -> None:
        with httpx.stream(
            "GET",
            mb.url + "/api/logs",
            params={"follow": "true", "tail": "0", "format": "json"},
            timeout=30,
        ) as resp:
            for line in resp.iter_lines():
                seen.append(json.loads(line))
                if seen[-1]["text"].startswith("[m] ") and "ready" in seen[-1]["text"]:
                    return

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    time.sleep(0.3)  # let the follower subscribe
    assert chat(mb, "m").status_code == 200
    reader.join(20)
    assert not reader.is_alive(), f"no ready line followed: {seen}"
    assert {line["stream"] for line in seen} <= {"DEBUG", "INFO", "WARNING", "ERROR"}
    # Without follow: the tail, in text or json.
    text = get(mb, "/api/logs", tail=1000).text
    assert seen[-1]["text"] in text
    assert len(get(mb, "/api/logs", tail=2, format="json").text.splitlines()) == 2


def test_config_is_shown_without_its_secrets_and_with_the_last_reload(modelberth: Any) -> None:
    model = fake_model(env={"HF_TOKEN": "hf-secret", "MAX_TOKENS": "12"})
    model["command"] = [*model["command"], "--api-key", "upstream-secret"]
    mb = modelberth(
        {
            "server": {"api_keys": ["inference-secret"], "admin_keys": ["admin-secret"]},
            "models": {"m": model},
        }
    )
    admin = {"Authorization": "Bearer admin-secret"}
    assert httpx.get(mb.url + "/api/config", timeout=10).status_code == 401
    shown = httpx.get(mb.url + "/api/config", headers=admin, timeout=10)
    assert shown.status_code == 200
    text = shown.text
    for secret in ("inference-secret", "admin-secret", "hf-secret", "upstream-secret"):
        assert secret not in text
    body = shown.json()
    assert body["path"] == str(mb.config_path) and body["last_reload"] is None
    assert body["config"]["server"]["api_keys"] == ["***"]
    m = body["config"]["models"]["m"]
    assert m["env"] == {"HF_TOKEN": "***", "MAX_TOKENS": "12"}
    assert m["command"][-2:] == ["--api-key", "***"]

    good = mb.config_path.read_text()
    mb.config_path.write_text(good + "bogus_section: 1\n")
    rejected = httpx.post(mb.url + "/api/reload", headers=admin, timeout=10)
    assert rejected.status_code == 400
    [issue] = rejected.json()["error"]["issues"]
    assert issue["path"] == "bogus_section" and issue["line"] == len(good.splitlines()) + 1
    last = httpx.get(mb.url + "/api/config", headers=admin, timeout=10).json()["last_reload"]
    assert last["ok"] is False and last["issues"] == [issue]
    assert f"line {issue['line']}" in last["message"]

    mb.config_path.write_text(good)
    assert httpx.post(mb.url + "/api/reload", headers=admin, timeout=10).status_code == 200
    last = httpx.get(mb.url + "/api/config", headers=admin, timeout=10).json()["last_reload"]
    assert last["ok"] is True and last["result"]["unchanged"] == ["m"]


def test_stop_all_stops_every_model(modelberth: Any) -> None:
    mb = modelberth({"models": {name: fake_model() for name in ("a", "b", "c")}})
    assert chat(mb, "a").status_code == 200 and chat(mb, "b").status_code == 200
    stopped = httpx.post(mb.url + "/api/stop-all", timeout=30)
    assert stopped.status_code == 200
    assert {m["name"]: m["state"] for m in stopped.json()["models"]} == {
        "a": "stopped",
        "b": "stopped",
        "c": "stopped",
    }
    assert chat(mb, "a").status_code == 200  # and they start again on demand


def test_finished_requests_stream_as_events(modelberth: Any) -> None:
    mb = modelberth({"models": {"m": fake_model()}})
    reader = EventReader(mb.url, lambda kind, _: kind == "request")
    assert chat(mb, "m").status_code == 200
    events = reader.wait()
    kind, request = events[-1]
    assert kind == "request" and request["type"] == "request"
    assert request["model"] == "m" and request["status"] == 200 and request["cold"] is True


async def test_a_quiet_event_stream_sends_heartbeats() -> None:
    bus = EventBus()
    stream = bus.subscribe(heartbeat=0.05)
    assert await anext(stream) is None  # nothing happened: a heartbeat
    assert bus.has_subscribers
    bus.notify("start_progress", "m", elapsed_seconds=1.0)
    event = await anext(stream)
    assert event is not None and event.kind == "start_progress"
    await stream.aclose()
    assert not bus.has_subscribers


def test_open_event_and_log_streams_do_not_hold_up_shutdown(modelberth: Any) -> None:
    """A dashboard left open keeps /api/events and a followed log open; SIGTERM must still
    stop the server at once, not after the graceful-shutdown timeout (drain_timeout)."""
    mb = modelberth({"defaults": {"drain_timeout": 60}, "models": {"m": fake_model()}})
    assert chat(mb, "m").status_code == 200
    ended: list[str] = []

    def read(path: str, **params: str) -> None:
        with httpx.stream("GET", mb.url + path, params=params, timeout=90) as resp:
            for _ in resp.iter_lines():
                pass
        ended.append(path)

    readers = [
        threading.Thread(target=read, args=(path,), kwargs=params, daemon=True)
        for path, params in (
            ("/api/events", {}),
            ("/api/logs", {"follow": "true"}),
            ("/api/models/m/logs", {"follow": "true"}),
        )
    ]
    for reader in readers:
        reader.start()
    time.sleep(0.5)
    began = time.monotonic()
    assert mb.stop(timeout=15) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal
    assert time.monotonic() - began < 10
    for reader in readers:
        reader.join(5)
    assert sorted(ended) == ["/api/events", "/api/logs", "/api/models/m/logs"]
