"""`runtime: swarm` on a real two-node Swarm (scripts/swarm.sh): the local engine is the
manager on 127.0.0.1, a second dockerd on this machine joins as a worker on 127.0.0.2. The
nodes' budgets and addresses come from node labels, as an operator would set them. Only the
GPUs are not here: these tests budget RAM.

Every test ends with no service of modelberth's in the swarm and no container on either
engine."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
from playwright.sync_api import expect

import test_docker
from browser import close, launch, open_page
from conftest import Modelberth, events_of, wait_for
from modelberth.runtimes.ownership import LABEL_INSTANCE, LABEL_MANAGED, service_name
from test_docker import fake_container
from test_swarm_setup import SCRIPT, swarm_up

engine, image = test_docker.engine, test_docker.image  # fixtures
CHAT = "/v1/chat/completions"
MB = 1024 * 1024


class Swarm:
    def __init__(
        self, manager: docker.DockerClient, worker: docker.DockerClient, worker_url: str
    ) -> None:
        self.manager = manager
        self.worker = worker
        self.worker_url = worker_url
        nodes = {node.attrs["Spec"]["Role"]: node for node in manager.nodes.list()}
        self.manager_node, self.worker_node = nodes["manager"], nodes["worker"]

    def label(self, node: Any, **labels: str) -> None:
        spec = dict(node.attrs["Spec"])
        spec["Labels"] = {**(spec.get("Labels") or {}), **labels}
        node.reload()
        node.update({**spec, "Labels": spec["Labels"]})
        node.reload()

    def unlabel(self, node: Any, *keys: str) -> None:
        node.reload()
        spec = dict(node.attrs["Spec"])
        spec["Labels"] = {k: v for k, v in (spec.get("Labels") or {}).items() if k not in keys}
        node.update(spec)
        node.reload()

    def services(self) -> list[Any]:
        return list(self.manager.services.list(filters={"label": f"{LABEL_MANAGED}=true"}))

    def containers(self) -> list[Any]:
        found = []
        for client in (self.manager, self.worker):
            with_label: dict[str, str | list[str] | bool] = {"label": f"{LABEL_MANAGED}=true"}
            found += client.containers.list(all=True, filters=with_label)
        return found


@pytest.fixture(scope="module")
def swarm_engines(engine: docker.DockerClient, image: str) -> Iterator[Swarm]:
    """The swarm for the whole module, taken down after it even on failure."""
    try:
        worker_url = swarm_up()
        worker = docker.DockerClient(base_url=worker_url)
        worker.images.load(b"".join(engine.images.get(image).save(named=True)))
        yield Swarm(engine, worker, worker_url)
        worker.close()
    finally:
        subprocess.run(["bash", str(SCRIPT), "down"], timeout=120, check=True)


@pytest.fixture
def swarm(swarm_engines: Swarm) -> Iterator[Swarm]:
    """Labels the nodes (addresses, 250 and 300 MiB); after the test asserts nothing of
    modelberth's is left on either engine (and removes it, to keep the next test clean)."""
    s = swarm_engines
    s.label(s.manager_node, **{"modelberth.address": "127.0.0.1", "modelberth.memory_mb": "250"})
    s.label(s.worker_node, **{"modelberth.address": "127.0.0.2", "modelberth.memory_mb": "300"})
    yield s
    s.unlabel(s.worker_node, "modelberth.engine")
    services = s.services()
    for service in services:
        service.remove()
    wait_for(lambda: not s.containers(), timeout=30, interval=0.2)
    assert not services, f"services outlived modelberth: {[x.name for x in services]}"


def fake_service(tmp: Path, memory_mb: int | None, **settings: Any) -> dict[str, Any]:
    """A fake upstream as a service (planned at `memory_mb`; None: by what it uses): the
    Docker tests' container, as Swarm runs it (it has no pull policy)."""
    planned = {"memory_mb": memory_mb} if memory_mb is not None else {}
    service = fake_container(
        test_docker.IMAGE,
        tmp,
        "--host",
        "${HOST}",
        runtime="swarm",
        start_timeout=60,
        **planned,
        **settings,
    )
    del service["pull"]
    return service


def chat(mb: Modelberth, model: str) -> httpx.Response:
    with mb.client(timeout=90) as client:
        return client.post(CHAT, json={"model": model, "messages": []})


def running_on(s: Swarm, model: str) -> str:
    """The node id the model's service task runs on."""
    (service,) = [
        x for x in s.services() if x.attrs["Spec"]["Labels"].get("modelberth.model") == model
    ]
    (task,) = [t for t in service.tasks() if t["Status"]["State"] == "running"]
    return str(task["NodeID"])


def test_models_land_on_the_node_with_room(swarm: Swarm, modelberth: Any, tmp_path: Path) -> None:
    mb = modelberth(
        {"models": {"big": fake_service(tmp_path, 280), "small": fake_service(tmp_path, 200)}}
    )
    # Only the worker has 280 MiB.
    assert chat(mb, "big").status_code == 200
    status = mb.status("big")
    assert status["node"]["id"] == swarm.worker_node.id
    assert status["node"]["address"] == "127.0.0.2"
    assert running_on(swarm, "big") == swarm.worker_node.id
    assert len(swarm.worker.containers.list(filters={"label": "modelberth.model=big"})) == 1
    # 200 more do not fit on the worker beside it: the manager has room, nothing is evicted.
    assert chat(mb, "small").status_code == 200
    assert mb.status("small")["node"]["address"] == "127.0.0.1"
    assert running_on(swarm, "small") == swarm.manager_node.id
    assert mb.status("big")["state"] == "ready"
    # The services are labelled like containers, and named for this instance.
    (service,) = [x for x in swarm.services() if x.name.startswith("modelberth-big-")]
    labels = service.attrs["Spec"]["Labels"]
    assert labels["modelberth.model"] == "big" and labels[LABEL_INSTANCE]
    assert service.name == service_name(labels[LABEL_INSTANCE], "big")
    # Node state in /api/resources.
    with mb.client() as client:
        nodes = {n["address"]: n for n in client.get("/api/resources").json()["nodes"]}
    assert nodes["127.0.0.2"]["memory_budget_bytes"] == 300 * MB
    assert nodes["127.0.0.2"]["models"] == ["big"]
    assert nodes["127.0.0.1"]["models"] == ["small"]
    # Its output reaches the model's log, through the manager's service logs.
    wait_for(lambda: "fake upstream" in mb.client().get("/api/models/big/logs").text, timeout=10)
    assert mb.stop() in (0, -signal.SIGTERM)
    assert not swarm.services()  # shutdown removes every service
    wait_for(lambda: not swarm.containers(), timeout=30, interval=0.2)


def test_a_model_that_fits_no_node_fails_at_once(
    swarm: Swarm, modelberth: Any, tmp_path: Path
) -> None:
    mb = modelberth({"models": {"huge": fake_service(tmp_path, 400)}})
    response = chat(mb, "huge")
    assert response.status_code == 503
    assert "can never fit" in response.json()["error"]["message"]
    assert not swarm.services()


def test_constraints_choose_the_node(swarm: Swarm, modelberth: Any, tmp_path: Path) -> None:
    mb = modelberth(
        {"models": {"m": fake_service(tmp_path, 10, constraints=["node.role==manager"])}}
    )
    assert chat(mb, "m").status_code == 200
    assert running_on(swarm, "m") == swarm.manager_node.id


def test_each_task_s_memory_is_measured_through_its_node_s_engine(
    swarm: Swarm, modelberth: Any, tmp_path: Path
) -> None:
    """A task on the manager's node is read through the manager's engine; one on the worker
    through the engine its `modelberth.engine` label names, and not at all without it.
    Models without memory_mb are counted on their node by those readings."""
    swarm.label(swarm.worker_node, **{"modelberth.engine": swarm.worker_url})
    mb = modelberth(
        {
            "swarm": {"refresh_seconds": 1},
            "resources": {"sample_interval": 0.5},
            "models": {
                "here": fake_service(tmp_path, None, constraints=["node.role==manager"]),
                "there": fake_service(tmp_path, None, constraints=["node.role==worker"]),
            },
        }
    )
    assert chat(mb, "here").status_code == 200
    assert chat(mb, "there").status_code == 200
    wait_for(
        lambda: all((mb.status(m)["memory_bytes"] or 0) > MB for m in ("here", "there")),
        timeout=30,
        interval=0.5,
    )
    # The reading is the container's own, as its engine gives it.
    (there,) = swarm.worker.containers.list(filters={"label": "modelberth.model=there"})
    stats = there.stats(stream=False)
    assert isinstance(stats, dict)
    engine_says = stats["memory_stats"]["usage"]
    assert engine_says / 2 < mb.status("there")["memory_bytes"] < engine_says * 2
    assert not swarm.manager.containers.list(filters={"label": "modelberth.model=there"})

    def nodes() -> dict[str, Any]:
        with mb.client() as client:
            return {n["id"]: n for n in client.get("/api/resources").json()["nodes"]}

    worker_id, manager_id = str(swarm.worker_node.id), str(swarm.manager_node.id)
    worker = nodes()[worker_id]
    assert worker["usage_measured"] is True and nodes()[manager_id]["usage_measured"]
    assert worker["models"] == ["there"]
    assert worker["counted_memory_bytes"] == worker["model_memory_bytes"]["there"] > MB
    # Without the label, the worker's task is not read (the manager's engine cannot see it).
    swarm.unlabel(swarm.worker_node, "modelberth.engine")
    wait_for(lambda: nodes()[worker_id]["usage_measured"] is False, timeout=15)
    wait_for(lambda: mb.status("there")["memory_bytes"] is None, timeout=20, interval=0.5)
    assert (mb.status("here")["memory_bytes"] or 0) > MB
    # The dashboard says so on the worker's bar.
    with contextlib.contextmanager(launch)() as browser:
        watched = open_page(browser, mb.url)
        try:
            watched.page.goto(f"{mb.url}/ui#resources")
            worker_bar = watched.page.locator(".node-box", has_text="· 127.0.0.2 (swarm)")
            expect(worker_bar).to_contain_text("usage planned, not measured")
            manager_bar = watched.page.locator(".node-box", has_text="· 127.0.0.1 (swarm)")
            expect(manager_bar).to_contain_text("here")
            expect(manager_bar).not_to_contain_text("not measured")
            watched.assert_clean()
        finally:
            close(watched)


def test_a_node_that_goes_down_fails_its_models_and_they_come_back_elsewhere(
    swarm: Swarm, modelberth: Any, tmp_path: Path
) -> None:
    mb = modelberth(
        {"resources": {"placement": "spread"}, "models": {"m": fake_service(tmp_path, 100)}}
    )
    assert chat(mb, "m").status_code == 200
    assert running_on(swarm, "m") == swarm.worker_node.id  # spread: the most room left
    pidfile = Path("/tmp/modelberth-swarm/docker.pid")
    try:
        os.kill(int(pidfile.read_text()), signal.SIGTERM)  # the worker's engine stops
        wait_for(lambda: not pidfile.exists(), timeout=60, interval=0.2)
        wait_for(lambda: mb.status("m")["state"] == "failed", timeout=60, interval=0.5)
        assert "down" in (mb.status("m")["last_error"] or "")
        # The next request places it on the node that is left.
        assert chat(mb, "m").status_code == 200
        assert mb.status("m")["node"]["address"] == "127.0.0.1"
        assert len(events_of(tmp_path / "events", "start")) == 2
    finally:
        # The worker comes back for the next tests: a fresh second engine joins again.
        subprocess.run(["bash", str(SCRIPT), "down"], timeout=120, check=True)
        swarm.worker = docker.DockerClient(base_url=swarm_up())
        nodes = {
            n.attrs["Spec"]["Role"]: n
            for n in swarm.manager.nodes.list()
            if n.attrs["Status"]["State"] == "ready"
        }
        swarm.manager_node, swarm.worker_node = nodes["manager"], nodes["worker"]


def test_kill_9_then_restart_adopts_the_service_and_removes_stale_ones(
    swarm: Swarm, modelberth: Any, tmp_path: Path
) -> None:
    config = {"models": {"m": fake_service(tmp_path, 100), "old": fake_service(tmp_path, 10)}}
    first = modelberth(config)
    assert chat(first, "m").status_code == 200
    assert chat(first, "old").status_code == 200
    service_id = first.status("m")["runtime_id"]
    first.stop(signal.SIGKILL)
    assert len(swarm.services()) == 2  # services outlive their manager
    # The same server again, without `old`: m is adopted, old's service removed.
    second = modelberth(
        {"server": {"port": first.port}, "models": {"m": fake_service(tmp_path, 100)}}
    )
    status = second.status("m")
    assert status["state"] == "ready"
    assert status["runtime_id"] == service_id
    assert status["node"] is not None
    assert chat(second, "m").status_code == 200
    assert len(events_of(tmp_path / "events", "start")) == 2  # m and old, once each
    assert [x.attrs["Spec"]["Labels"]["modelberth.model"] for x in swarm.services()] == ["m"]
