"""Reliability: hot reload, crash back-off, graceful shutdown, load."""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import yaml

from conftest import FAKE, Modelberth, events_of, fake_model, upstreams_of, wait_for

CHAT = "/v1/chat/completions"


def write_config(mb: Modelberth, models: dict[str, Any]) -> None:
    config = yaml.safe_load(mb.config_path.read_text())
    config["models"] = models
    mb.config_path.write_text(yaml.safe_dump(config))


def chat(mb: Modelberth, model: str, **body: Any) -> httpx.Response:
    with mb.client() as client:
        return client.post(CHAT, json={"model": model, "messages": [], **body})


def test_reload_keeps_unchanged_restarts_changed_and_drains_removed(
    modelberth: Any, tmp_path: Path
) -> None:
    events = tmp_path / "events"
    a, b, gone = fake_model(None), fake_model(events), fake_model(None)
    mb = modelberth({"models": {"a": a, "b": b, "gone": gone}})
    for name in ("a", "b", "gone"):
        assert chat(mb, name).status_code == 200
    a_pid, b_pid = mb.status("a")["runtime_id"], mb.status("b")["runtime_id"]

    result: dict[str, httpx.Response] = {}
    slow = threading.Thread(target=lambda: result.update(r=chat(mb, "gone", sleep=1.5)))
    slow.start()
    wait_for(lambda: mb.status("gone")["in_flight"] == 1, timeout=5)

    write_config(
        mb,
        {
            "a": {**a, "aliases": ["alpha"]},
            "b": fake_model(events, "--chunks", "3"),
            "new": fake_model(None),
        },
    )
    with mb.client() as client:
        reloaded = client.post("/api/reload")
    assert reloaded.status_code == 200, reloaded.text
    summary = reloaded.json()
    assert summary["added"] == ["new"]
    assert summary["removed"] == ["gone"]
    assert summary["restarted"] == ["b"]
    assert summary["updated"] == ["a"]

    slow.join(10)
    assert result["r"].status_code == 200  # the removed model finished its request
    assert chat(mb, "gone").status_code == 404
    assert chat(mb, "alpha").status_code == 200
    assert chat(mb, "new").status_code == 200
    assert mb.status("a")["runtime_id"] == a_pid
    wait_for(
        lambda: mb.status("b")["state"] == "ready" and mb.status("b")["runtime_id"] != b_pid,
        timeout=10,
    )
    assert len(events_of(events, "start")) == 2
    assert len(upstreams_of(mb.pid)) == 3  # a, b, new: "gone" is stopped


def test_invalid_reload_is_rejected_and_the_old_config_keeps_running(modelberth: Any) -> None:
    mb = modelberth({"models": {"a": fake_model(None)}})
    assert chat(mb, "a").status_code == 200
    mb.config_path.write_text("models:\n  a:\n    comand: [x]\n")
    with mb.client() as client:
        response = client.post("/api/reload")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_config"
    assert "line 3" in error["message"]
    assert "unknown key 'comand'" in error["message"]
    assert chat(mb, "a").status_code == 200


def test_sighup_and_watch_reload(modelberth: Any, tmp_path: Path) -> None:
    mb = modelberth({"models": {"a": fake_model(None)}})
    write_config(mb, {"a": fake_model(None), "b": fake_model(None)})
    assert mb.proc is not None
    mb.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: chat(mb, "b").status_code == 200, timeout=5)

    watched = modelberth({"models": {"a": fake_model(None)}}, start=False)
    watched.start(extra=["--watch"])
    write_config(watched, {"a": fake_model(None), "c": fake_model(None)})
    wait_for(lambda: chat(watched, "c").status_code == 200, timeout=8, interval=0.2)


def test_crash_loop_backs_off_and_does_not_touch_other_models(
    modelberth: Any, tmp_path: Path
) -> None:
    events = tmp_path / "events"
    mb = modelberth(
        {"models": {"bad": fake_model(events, "--exit-code", "5"), "good": fake_model(None)}}
    )
    assert chat(mb, "bad").status_code == 503
    assert chat(mb, "bad").status_code == 503  # the first failure is retried at once
    assert len(events_of(events, "start")) == 2

    held = chat(mb, "bad")
    assert held.status_code == 503
    assert "2 failures in a row, next try in" in held.json()["error"]["message"]
    assert int(held.headers["retry-after"]) >= 1
    assert len(events_of(events, "start")) == 2  # no start during the back-off
    assert mb.status("bad")["failures"] == 2
    assert chat(mb, "good").status_code == 200

    time.sleep(1.1)
    assert chat(mb, "bad").status_code == 503
    assert len(events_of(events, "start")) == 3
    with mb.client() as client:  # a start by hand does not wait
        assert client.post("/api/models/bad/start").status_code == 503
    assert len(events_of(events, "start")) == 4


def test_sigterm_lets_in_flight_requests_finish(modelberth: Any) -> None:
    mb = modelberth({"models": {"m": fake_model(None)}})
    assert chat(mb, "m").status_code == 200
    result: dict[str, httpx.Response] = {}
    slow = threading.Thread(target=lambda: result.update(r=chat(mb, "m", sleep=1.5)))
    slow.start()
    wait_for(lambda: mb.status("m")["in_flight"] == 1, timeout=5)
    assert mb.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    slow.join(10)
    assert result["r"].status_code == 200
    assert result["r"].json()["choices"][0]["message"]["content"] == "hello"
    assert not upstreams_of(mb.pid)


async def _load(url: str, model: str, n: int, body: dict[str, Any]) -> list[tuple[int, bytes]]:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one() -> tuple[int, bytes]:
            async with session.post(url + CHAT, json={"model": model, **body}) as resp:
                return resp.status, await resp.read()

        return await asyncio.gather(*(one() for _ in range(n)))


def test_500_concurrent_requests_into_a_cold_model_start_it_once(
    modelberth: Any, tmp_path: Path
) -> None:
    events = tmp_path / "events"
    mb = modelberth({"models": {"m": fake_model(events, "--start-delay", "0.5", max_queue=1000)}})
    results = asyncio.run(_load(mb.url, "m", 500, {"messages": []}))
    assert [status for status, _ in results] == [200] * 500
    assert len(events_of(events, "start")) == 1
    assert len(events_of(events, "request")) == 500


def test_1000_concurrent_streams_are_held_without_errors(modelberth: Any) -> None:
    mb = modelberth(
        {"models": {"m": {"command": [sys.executable, FAKE, "--port", "${PORT}"], "preload": True}}}
    )
    wait_for(lambda: mb.status("m")["state"] == "ready", timeout=10)
    peak = 0

    def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, mb.status("m")["in_flight"])
            time.sleep(0.2)

    done = threading.Event()
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        results = asyncio.run(
            _load(mb.url, "m", 1000, {"stream": True, "chunks": 4, "chunk_delay": 1.0})
        )
    finally:
        done.set()
        watcher.join()
    assert [status for status, _ in results] == [200] * 1000
    assert all(
        body.count(b"data: ") == 5 and body.endswith(b"data: [DONE]\n\n") for _, body in results
    )
    assert peak >= 900  # they really were open at the same time


def test_a_reload_says_which_server_settings_need_a_restart(modelberth: Any) -> None:
    mb = modelberth({"models": {"a": fake_model(None)}})
    config = yaml.safe_load(mb.config_path.read_text())
    config["server"].update(header_timeout=3, instance_id="other", trusted_proxies=["::1"])
    mb.config_path.write_text(yaml.safe_dump(config))
    with mb.client() as client:
        result = client.post("/api/reload").json()
    warnings = " ".join(result["warnings"])
    assert "server.header_timeout, server.instance_id changes need a restart" in warnings
    assert "trusted_proxies" not in warnings  # taken at once
    assert chat(mb, "a").status_code == 200
