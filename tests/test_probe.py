"""The generation probe: a model whose upstream answers health but no longer generates
(fake_upstream's POST /wedge) is found by its probe, marked failed and restarted; a healthy
one is only probed, a busy one not even that, one without `probe` never; a stop or a
shutdown ends the probing."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from conftest import EventReader, Modelberth, events_of, fake_model, process_gone, wait_for

CHAT = "/v1/chat/completions"
FAST = {"interval": "0.5s", "timeout": "0.5s", "failures": 2}


def requests_to(events: Path, pid: int | str) -> int:
    """Completions (real or probes) the fake upstream with this pid received."""
    return sum(1 for line in events_of(events, "request") if line.split()[1] == str(pid))


def wedge(mb: Modelberth, name: str) -> None:
    port = mb.status(name)["port"]
    assert httpx.post(f"http://127.0.0.1:{port}/wedge", timeout=5).status_code == 200


def probe_failures(reader: EventReader) -> list[dict[str, Any]]:
    return [data for kind, data in reader.events if kind == "probe_failed"]


def test_a_wedged_upstream_is_failed_by_its_probe_and_restarted(
    modelberth: Any, tmp_path: Path
) -> None:
    events = tmp_path / "ev"
    mb = modelberth({"models": {"m": fake_model(events, probe=FAST, stop_timeout=1)}})
    with mb.client() as client:
        assert client.post(CHAT, json={"model": "m"}).status_code == 200
        old = mb.status("m")["runtime_id"]
        reader = EventReader(mb.url, lambda kind, data: kind == "state" and data["to"] == "ready")
        wedge(mb, "m")
        seen = reader.wait(30)
        wait_for(lambda: mb.status("m")["state"] == "ready", timeout=15)
        new = mb.status("m")["runtime_id"]
        assert new not in (None, old)

        # Two probes went to the wedged upstream (never answered), then it was given up.
        failures = probe_failures(reader)
        assert [f["failures"] for f in failures] == [1, 2]
        assert all(f["error"] == "timed out after 0.5s" and f["limit"] == 2 for f in failures)
        states = [(d["from"], d["to"], d["reason"]) for k, d in seen if k == "state"]
        reason = "2 probes failed in a row (last: timed out after 0.5s): restarting"
        assert states == [
            ("ready", "failed", reason),
            ("failed", "starting", "start"),
            ("starting", "ready", "healthy"),
        ]
        assert requests_to(events, old) == 3  # the real request, then the two probes

        # The new upstream generates, and the wedged one is gone.
        assert client.post(CHAT, json={"model": "m"}).status_code == 200
        assert requests_to(events, new) >= 1
        wait_for(lambda: process_gone(int(old)), timeout=15)
    status = mb.status("m")
    assert status["starts"] == 2 and status["last_error"] is None
    assert f"m: {reason}" in mb.log()
    text = httpx.get(mb.url + "/metrics", timeout=10).text
    restarts = {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "modelberth_probe_restarts_total"
    }
    assert restarts == {(("model", "m"),): 1}


def test_a_healthy_upstream_is_probed_and_never_restarted(modelberth: Any, tmp_path: Path) -> None:
    events = tmp_path / "ev"
    # A chat probe of its own (path and body from the config), answered by the fake's
    # chat handler, which records it; idle_timeout longer than the test: the probes are
    # not what keeps it up.
    probe = {
        "interval": "0.3s",
        "timeout": "1s",
        "failures": 1,
        "path": "/v1/chat/completions",
        "body": {"messages": [{"role": "user", "content": "ping"}], "max_tokens": 1},
    }
    mb = modelberth({"models": {"m": fake_model(events, probe=probe, preload=True)}})
    wait_for(lambda: mb.status("m")["state"] == "ready", timeout=15)
    pid = mb.status("m")["runtime_id"]
    reader = EventReader(mb.url, lambda kind, data: False)
    wait_for(lambda: requests_to(events, pid) >= 6, timeout=15)  # six intervals and more
    status = mb.status("m")
    assert status["state"] == "ready" and status["runtime_id"] == pid
    assert status["starts"] == 1 and status["failures"] == 0
    assert len(events_of(events, "start")) == 1
    assert probe_failures(reader) == []
    assert "m: probe 1 of 1 failed" not in mb.log() and "probes failed" not in mb.log()


def test_no_probe_while_real_requests_prove_the_model_generates(
    modelberth: Any, tmp_path: Path
) -> None:
    events = tmp_path / "ev"
    probe = {"interval": "1s", "timeout": "1s", "failures": 2}
    mb = modelberth({"models": {"m": fake_model(events, probe=probe)}})
    sent = 0
    with mb.client() as client:
        until = time.monotonic() + 3.5  # three intervals and a half, a request every 0.1s
        while time.monotonic() < until:
            assert client.post(CHAT, json={"model": "m"}).status_code == 200
            sent += 1
            time.sleep(0.1)
        pid = mb.status("m")["runtime_id"]
        assert requests_to(events, pid) == sent  # not one probe among them
        # Left alone, it is probed again.
        wait_for(lambda: requests_to(events, pid) > sent, timeout=10)
    assert mb.status("m")["starts"] == 1


def test_a_model_without_probe_gets_no_probe(modelberth: Any, tmp_path: Path) -> None:
    events = tmp_path / "ev"
    mb = modelberth(
        {
            "models": {
                "m": fake_model(events, stop_timeout=1),
                "p": fake_model(events, probe={**FAST, "interval": "0.2s"}),
            }
        }
    )
    with mb.client() as client:
        assert client.post(CHAT, json={"model": "m"}).status_code == 200
        assert client.post(CHAT, json={"model": "p"}).status_code == 200
        m, p = mb.status("m")["runtime_id"], mb.status("p")["runtime_id"]
        # While p's probe has had time for several rounds, m got only the request sent.
        wait_for(lambda: requests_to(events, p) >= 6, timeout=15)
        assert requests_to(events, m) == 1
        # Nor does a wedged one: without a probe, only its requests' timeouts can tell.
        wedge(mb, "m")
        time.sleep(1.0)
        assert requests_to(events, m) == 1
        assert mb.status("m")["state"] == "ready" and mb.status("m")["runtime_id"] == m


def test_a_probe_added_by_a_reload_starts_without_a_restart(
    modelberth: Any, tmp_path: Path
) -> None:
    events = tmp_path / "ev"
    mb = modelberth({"models": {"m": fake_model(events, stop_timeout=1)}})
    with mb.client() as client:
        assert client.post(CHAT, json={"model": "m"}).status_code == 200
        pid = mb.status("m")["runtime_id"]
        config = yaml.safe_load(mb.config_path.read_text())
        config["models"]["m"]["probe"] = FAST
        mb.config_path.write_text(yaml.safe_dump(config))
        reloaded = client.post("/api/reload")
        assert reloaded.status_code == 200, reloaded.text
        assert reloaded.json()["updated"] == ["m"]
        wait_for(lambda: requests_to(events, pid) >= 3, timeout=10)  # probed now
        assert mb.status("m")["runtime_id"] == pid
        # And removed again: the probing ends.
        del config["models"]["m"]["probe"]
        mb.config_path.write_text(yaml.safe_dump(config))
        assert client.post("/api/reload").status_code == 200
        after = requests_to(events, pid)
        time.sleep(1.5)  # three intervals of the probe that was
        assert requests_to(events, pid) == after


def test_stopping_the_model_ends_its_probe(modelberth: Any, tmp_path: Path) -> None:
    events = tmp_path / "ev"
    probe = {"interval": "0.2s", "timeout": "0.5s", "failures": 1}
    mb = modelberth({"models": {"m": fake_model(events, probe=probe, stop_timeout=1)}})
    with mb.client() as client:
        assert client.post(CHAT, json={"model": "m"}).status_code == 200
        pid = mb.status("m")["runtime_id"]
        wait_for(lambda: requests_to(events, pid) >= 3, timeout=10)
        reader = EventReader(mb.url, lambda kind, data: False)
        stopped = client.post("/api/models/m/stop")
        assert stopped.status_code == 200, stopped.text
        assert mb.status("m")["state"] == "stopped"
        assert process_gone(int(pid))
        # A probe left running would hit the closed port and fail, at once (failures: 1),
        # then try to restart the model: neither happens.
        time.sleep(1.0)  # five intervals
        assert probe_failures(reader) == []
        states = [(d["from"], d["to"]) for k, d in reader.events if k == "state"]
        assert states == [("ready", "stopping"), ("stopping", "stopped")]
        status = mb.status("m")
        assert status["state"] == "stopped" and status["starts"] == 1
        assert len(events_of(events, "start")) == 1


def test_shutdown_ends_a_probe_waiting_on_a_wedged_upstream(
    modelberth: Any, tmp_path: Path
) -> None:
    events = tmp_path / "ev"
    # A probe waits up to a minute for an answer: the shutdown must cancel it, not wait.
    probe = {"interval": "0.2s", "timeout": "60s", "failures": 1}
    mb = modelberth({"models": {"m": fake_model(events, probe=probe, stop_timeout=1)}})
    with mb.client() as client:
        assert client.post(CHAT, json={"model": "m"}).status_code == 200
    pid = mb.status("m")["runtime_id"]
    wedge(mb, "m")
    wait_for(lambda: len(events_of(events, "request")) >= 2, timeout=10)  # a probe hangs
    assert mb.stop(signal.SIGTERM, timeout=20) in (0, -signal.SIGTERM)
    assert process_gone(int(pid))
    log = mb.log()
    assert "[m] stopped -> retired (shutdown)" in log and "shutdown complete" in log
    for trouble in ("Task was destroyed", "never retrieved", "probe ended on an error"):
        assert trouble not in log, log[-3000:]
