"""`docker.hosts`: two standalone Docker engines on loopback as the nodes of runtime: docker —
this machine's engine (127.0.0.1) and a second dockerd of scripts/swarm.sh (127.0.0.2; that
it is also in a swarm plays no part here: only plain containers are made on it). Budgets are
the config's; the scheduler places each start on one engine.

Every test ends with no container of modelberth's on either engine."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

import test_docker
from conftest import Modelberth, events_of, wait_for
from modelberth.runtimes.ownership import LABEL_MANAGED
from test_docker import fake_container
from test_swarm_setup import SCRIPT, swarm_up

engine, image = test_docker.engine, test_docker.image  # fixtures
CHAT = "/v1/chat/completions"
PIDFILE = Path("/tmp/modelberth-swarm/docker.pid")


@pytest.fixture(scope="module")
def second_url(engine: docker.DockerClient, image: str) -> Iterator[str]:
    try:
        url = swarm_up()
        second = docker.DockerClient(base_url=url)
        second.images.load(b"".join(engine.images.get(image).save(named=True)))
        second.close()
        yield url
    finally:
        subprocess.run(["bash", str(SCRIPT), "down"], timeout=120, check=True)


def ours(client: docker.DockerClient) -> list[Any]:
    return list(client.containers.list(all=True, filters={"label": f"{LABEL_MANAGED}=true"}))


@pytest.fixture
def engines(engine: docker.DockerClient, second_url: str) -> Iterator[dict[str, Any]]:
    """Both engines (the second may be restarted by a test); none of ours left after."""
    clients: dict[str, Any] = {"a": engine, "b": docker.DockerClient(base_url=second_url)}
    yield clients
    left = [c.name for name in ("a", "b") for c in ours(clients[name])]
    for name in ("a", "b"):
        for container in ours(clients[name]):
            container.remove(force=True)
    assert not left, f"containers outlived modelberth: {left}"


def hosts(second_url: str, a_mb: int = 250, b_mb: int = 300) -> list[dict[str, Any]]:
    return [
        {
            "name": "a",
            "url": "unix:///var/run/docker.sock",
            "address": "127.0.0.1",
            "memory_mb": a_mb,
            "labels": {"zone": "one"},
        },
        {
            "name": "b",
            "url": second_url,
            "address": "127.0.0.2",
            "memory_mb": b_mb,
            "labels": {"zone": "two"},
        },
    ]


def fake(tmp: Path, memory_mb: int, **settings: Any) -> dict[str, Any]:
    """The Docker tests' fake container, listening on its host's address."""
    return fake_container(
        test_docker.IMAGE, tmp, "--host", "${HOST}", memory_mb=memory_mb, **settings
    )


def chat(mb: Modelberth, model: str) -> httpx.Response:
    with mb.client(timeout=60) as client:
        return client.post(CHAT, json={"model": model, "messages": []})


def test_starts_go_to_the_host_with_room(
    engines: dict[str, Any], second_url: str, modelberth: Any, tmp_path: Path
) -> None:
    mb = modelberth(
        {
            "docker": {"hosts": hosts(second_url)},
            "models": {"big": fake(tmp_path, 280), "small": fake(tmp_path, 200)},
        }
    )
    assert chat(mb, "big").status_code == 200  # only b has 280 MiB
    assert mb.status("big")["node"] == {"id": "b", "name": "b", "address": "127.0.0.2"}
    assert [c.labels["modelberth.model"] for c in ours(engines["b"])] == ["big"]
    assert chat(mb, "small").status_code == 200  # no room left beside it on b
    assert mb.status("small")["node"]["name"] == "a"
    assert [c.labels["modelberth.model"] for c in ours(engines["a"])] == ["small"]
    with mb.client() as client:
        nodes = {n["name"]: n for n in client.get("/api/resources").json()["nodes"]}
        metrics = client.get("/metrics").text
    assert nodes["b"]["models"] == ["big"] and nodes["a"]["models"] == ["small"]
    assert nodes["b"]["counted_memory_bytes"] == 280 * 2**20
    assert 'modelberth_model_state{model="big",node="b",state="ready"} 1' in metrics
    assert mb.stop() in (0, -signal.SIGTERM)
    assert not ours(engines["a"]) and not ours(engines["b"])


def test_constraints_pick_the_host(
    engines: dict[str, Any], second_url: str, modelberth: Any, tmp_path: Path
) -> None:
    mb = modelberth(
        {
            "docker": {"hosts": hosts(second_url)},
            "models": {
                "m": fake(tmp_path, 10, constraints=["node.labels.zone==one"]),
                "n": fake(tmp_path, 10, constraints=["node.hostname==c"]),
            },
        }
    )
    assert chat(mb, "m").status_code == 200
    assert mb.status("m")["node"]["name"] == "a"
    refused = chat(mb, "n")
    assert refused.status_code == 503
    message = refused.json()["error"]["message"]
    assert "no node can run it" in message and "node.hostname==c exclude" in message


def test_a_host_whose_engine_stops_fails_its_models_and_they_come_back_elsewhere(
    engines: dict[str, Any], second_url: str, modelberth: Any, tmp_path: Path
) -> None:
    mb = modelberth(
        {
            "resources": {"placement": "spread"},
            "docker": {"hosts": hosts(second_url)},
            "models": {"m": fake(tmp_path, 100)},
        }
    )
    assert chat(mb, "m").status_code == 200
    assert mb.status("m")["node"]["name"] == "b"  # spread: the most room left
    try:
        os.kill(int(PIDFILE.read_text()), signal.SIGTERM)
        wait_for(lambda: not PIDFILE.exists(), timeout=60, interval=0.2)
        wait_for(lambda: mb.status("m")["state"] == "failed", timeout=30, interval=0.2)
        assert chat(mb, "m").status_code == 200
        assert mb.status("m")["node"]["name"] == "a"
        assert len(events_of(tmp_path / "events", "start")) == 2
    finally:
        engines["b"] = docker.DockerClient(base_url=swarm_up())  # back, for the next tests
    # The container its engine stopped could not be removed then; once modelberth reaches
    # the engine again (here: listing the nodes), it is.
    (left,) = ours(engines["b"])
    assert left.status == "exited"

    def swept() -> bool:
        mb.client().get("/api/resources")
        return not ours(engines["b"])

    wait_for(swept, timeout=20, interval=0.5)


TLS_URL = "tcp://127.0.0.2:2376"  # the second engine's TLS endpoint (scripts/swarm.sh)
CERTS = Path("/tmp/modelberth-swarm/tls")  # its CA and a client's certificate


def test_an_engine_over_tcp_with_tls(
    engines: dict[str, Any], second_url: str, modelberth: Any, tmp_path: Path
) -> None:
    tls_host = {"name": "b", "url": TLS_URL, "tls": True, "address": "127.0.0.2", "memory_mb": 300}
    config = {"docker": {"hosts": [tls_host]}, "models": {"m": fake(tmp_path, 10)}}
    mb = modelberth(config, start=False).start(env={"DOCKER_CERT_PATH": str(CERTS)})
    assert chat(mb, "m").status_code == 200
    assert mb.status("m")["node"]["name"] == "b"
    assert [c.labels["modelberth.model"] for c in ours(engines["b"])] == ["m"]
    # Without the client certificate the engine refuses: the node is not ready, and says why.
    elsewhere = tmp_path / "other-certs"
    elsewhere.mkdir()
    (elsewhere / "ca.pem").write_bytes((CERTS / "ca.pem").read_bytes())
    refused = modelberth(
        {"docker": {"hosts": [tls_host]}, "models": {"n": fake(tmp_path, 10)}}, start=False
    ).start(env={"DOCKER_CERT_PATH": str(elsewhere)})
    with refused.client() as client:
        (node,) = client.get("/api/resources").json()["nodes"]
    assert not node["ready"]
    assert "engine unreachable: TLS settings for tcp://127.0.0.2:2376" in node["why"]
    assert chat(refused, "n").status_code == 503


@pytest.fixture
def sshd(tmp_path: Path, second_url: str) -> Iterator[dict[str, str]]:
    """An OpenSSH server of this test's own on 127.0.0.2:2222 (Debian's openssh-server,
    installed by scripts/ensure-sshd.sh), whose sessions reach the second engine, and an
    `ssh` on PATH that uses this test's key and known hosts. Stopped after, by its pid."""
    home = tmp_path / "ssh"
    (home / "bin").mkdir(parents=True)
    for key in ("host", "client"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / key)], check=True
        )
    (home / "authorized_keys").write_text((home / "client.pub").read_text())
    (home / "sshd_config").write_text(
        f"ListenAddress 127.0.0.2:2222\nHostKey {home}/host\nPidFile {home}/sshd.pid\n"
        f"AuthorizedKeysFile {home}/authorized_keys\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nPermitRootLogin prohibit-password\n"
        f"StrictModes no\nSetEnv DOCKER_HOST={second_url}\n"
    )
    (home / "ssh_config").write_text(
        f"Host 127.0.0.2\n  IdentityFile {home}/client\n  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {home}/known_hosts\n  StrictHostKeyChecking accept-new\n"
        "  BatchMode yes\n"
    )
    wrapper = home / "bin" / "ssh"
    wrapper.write_text(f'#!/bin/sh\nexec /usr/bin/ssh -F {home}/ssh_config "$@"\n')
    wrapper.chmod(0o755)
    Path("/run/sshd").mkdir(exist_ok=True)  # its privilege separation directory
    server = subprocess.Popen(
        ["/usr/sbin/sshd", "-D", "-e", "-f", str(home / "sshd_config")],
        stderr=(home / "sshd.log").open("wb"),
    )
    try:
        wait_for(
            lambda: (
                subprocess.run(
                    [str(wrapper), "-p", "2222", "root@127.0.0.2", "true"],
                    check=False,
                    capture_output=True,
                ).returncode
                == 0
            ),
            timeout=20,
            interval=0.3,
        )
        yield {"PATH": f"{home / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    finally:
        server.terminate()
        server.wait(10)


def test_an_engine_over_ssh(
    engines: dict[str, Any], sshd: dict[str, str], modelberth: Any, tmp_path: Path
) -> None:
    config = {
        "docker": {
            "hosts": [
                {
                    "name": "b",
                    "url": "ssh://root@127.0.0.2:2222",
                    "address": "127.0.0.2",
                    "memory_mb": 300,
                }
            ]
        },
        "models": {"m": fake(tmp_path, 10)},
    }
    mb = modelberth(config, start=False).start(env=sshd)
    assert chat(mb, "m").status_code == 200
    assert mb.status("m")["node"]["name"] == "b"
    # Through ssh, on the second engine (the one the ssh session's DOCKER_HOST names).
    assert [c.labels["modelberth.model"] for c in ours(engines["b"])] == ["m"]
    assert not ours(engines["a"])
    assert mb.stop() in (0, -signal.SIGTERM)
    assert not ours(engines["b"])
