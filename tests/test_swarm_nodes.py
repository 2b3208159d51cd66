"""Constraints (config/constraints.py) and Swarm nodes as the scheduler sees them
(runtimes/swarm_nodes.py): pure functions, fed node objects shaped like the Engine API's
`GET /nodes` answer (as `docker node inspect` prints them)."""

from __future__ import annotations

from typing import Any

import pytest

from modelberth.config import parse_config
from modelberth.config.constraints import matches_all, parse
from modelberth.config.loader import ConfigError
from modelberth.runtimes.swarm_nodes import generic_gpu_count, node_from_swarm
from modelberth.runtimes.swarm_usage import node_engine

MB = 1024 * 1024
ATTRS = {
    "node.id": "abc",
    "node.hostname": "gpu-1",
    "node.role": "worker",
    "node.labels.zone": "West",
    "engine.labels.disk": "ssd",
}


@pytest.mark.parametrize(
    ("expression", "holds"),
    [
        ("node.hostname==gpu-1", True),
        ("node.hostname!=gpu-1", False),
        ("node.hostname==GPU-1", True),  # values compare case-insensitively
        ("NODE.ROLE==worker", True),  # so do the fixed keys
        (" node.labels.zone == west ", True),  # spaces trimmed
        ("node.labels.Zone==west", False),  # a label's name is case sensitive: not there
        ("node.labels.gpu!=yes", True),  # a missing label is empty
        ("node.labels.gpu==yes", False),
        ("engine.labels.disk==ssd", True),
        ("node.id!=abc", False),
    ],
)
def test_constraints_match_as_swarm_does(expression: str, holds: bool) -> None:
    assert parse(expression).matches(ATTRS) is holds


def test_all_constraints_must_hold() -> None:
    both = [parse("node.role==worker"), parse("node.labels.zone==west")]
    assert matches_all(both, ATTRS)
    assert not matches_all([*both, parse("node.hostname==other")], ATTRS)
    assert str(both[0]) == "node.role==worker"


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("node.role=worker", "expected <key>==<value> or <key>!=<value>"),
        ("node.colour==red", "unknown key 'node.colour'"),
        ("node.labels.==x", "unknown key"),
        ("node.role==", "the value '' is empty"),
        ("node.role==a<b", "characters Swarm does not allow"),
    ],
)
def test_bad_constraints_say_what_is_wrong(expression: str, message: str) -> None:
    with pytest.raises(ValueError, match="constraint") as caught:
        parse(expression)
    assert message in str(caught.value)


def test_a_bad_constraint_is_a_config_error_at_its_key() -> None:
    text = (
        "models:\n  m:\n    runtime: swarm\n    image: x\n    command: [s, '${PORT}']\n"
        "    constraints: ['node.zone==a']\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    (issue,) = caught.value.issues
    assert issue.path == "models.m.constraints"
    assert "unknown key 'node.zone'" in issue.message


def swarm_node(
    role: str = "worker",
    labels: dict[str, str] | None = None,
    state: str = "ready",
    availability: str = "active",
    generic: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    node: dict[str, Any] = {
        "ID": "n1",
        "Spec": {"Role": role, "Availability": availability, "Labels": labels or {}},
        "Description": {
            "Hostname": "gpu-1",
            "Platform": {"OS": "linux", "Architecture": "x86_64"},
            "Resources": {
                "NanoCPUs": 2_000_000_000,
                "MemoryBytes": 8 * 1024 * MB,
                **({"GenericResources": generic} if generic else {}),
            },
            "Engine": {"Labels": {"disk": "ssd"}},
        },
        "Status": {
            "State": state,
            "Addr": "10.0.0.9",
            **({"Message": "heartbeat failure"} if state == "down" else {}),
        },
    }
    if role == "manager":
        node["ManagerStatus"] = {
            "Leader": True,
            "Reachability": "reachable",
            "Addr": "10.0.0.1:2377",
        }
    return node


def test_a_node_without_labels() -> None:
    node, warnings = node_from_swarm(swarm_node())
    assert (node.id, node.name, node.address, node.runtime) == ("n1", "gpu-1", "10.0.0.9", "swarm")
    assert node.memory == 8 * 1024 * MB  # its total memory
    assert node.vram == {} and node.ready and node.why is None and warnings == []
    assert node.attributes == {
        "node.id": "n1",
        "node.hostname": "gpu-1",
        "node.role": "worker",
        "node.platform.os": "linux",
        "node.platform.arch": "x86_64",
        "engine.labels.disk": "ssd",
    }


def test_labels_set_the_budgets_and_the_address() -> None:
    labels = {
        "modelberth.memory_mb": "4096",
        "modelberth.gpu.0.vram_mb": "23000",
        "modelberth.gpu.1.vram_mb": "7000",
        "modelberth.address": "192.168.1.5",
        "zone": "a",
    }
    node, warnings = node_from_swarm(swarm_node(labels=labels))
    assert node.memory == 4096 * MB
    assert node.vram == {0: 23000 * MB, 1: 7000 * MB}
    assert node.address == "192.168.1.5"
    assert node.attributes["node.labels.zone"] == "a" and warnings == []


def test_a_manager_is_reached_at_its_own_address() -> None:
    node, _ = node_from_swarm(swarm_node(role="manager"))
    assert node.address == "10.0.0.1"


def test_generic_gpus_take_the_shared_vram_label_or_are_flagged() -> None:
    named = [{"NamedResourceSpec": {"Kind": "NVIDIA-GPU", "Value": f"GPU-{i}"}} for i in "ab"]
    discrete = [
        {"DiscreteResourceSpec": {"Kind": "NVIDIA-GPU", "Value": 3}},
        {"DiscreteResourceSpec": {"Kind": "SSD", "Value": 1}},
    ]
    assert generic_gpu_count(swarm_node(generic=named)) == 2
    assert generic_gpu_count(swarm_node(generic=discrete)) == 3
    node, warnings = node_from_swarm(
        swarm_node(
            generic=named,
            labels={"modelberth.gpu.vram_mb": "16000", "modelberth.gpu.1.vram_mb": "8000"},
        )
    )
    assert node.vram == {0: 16000 * MB, 1: 8000 * MB} and warnings == []
    node, warnings = node_from_swarm(swarm_node(generic=discrete))
    assert node.vram == {0: 0, 1: 0, 2: 0}
    assert len(warnings) == 3 and "modelberth.gpu.0.vram_mb" in warnings[0]


def test_bad_label_values_are_ignored_with_a_warning() -> None:
    node, warnings = node_from_swarm(
        swarm_node(labels={"modelberth.memory_mb": "lots", "modelberth.gpu.0.vram_mb": "-3"})
    )
    assert node.memory == 8 * 1024 * MB and node.vram == {}
    assert warnings == [
        "node gpu-1: label modelberth.memory_mb='lots' is not a whole number of MiB; ignored",
        "node gpu-1: label modelberth.gpu.0.vram_mb='-3' is not a whole number of MiB; ignored",
    ]


@pytest.mark.parametrize(
    ("state", "availability", "why"),
    [
        ("down", "active", "node is down: heartbeat failure"),
        ("ready", "drain", "availability drain"),
        ("ready", "pause", "availability pause"),
        ("unknown", "active", "node is unknown"),
    ],
)
def test_nodes_that_cannot_take_a_start(state: str, availability: str, why: str) -> None:
    node, _ = node_from_swarm(swarm_node(state=state, availability=availability))
    assert not node.ready and node.why == why


def test_a_gpu_placement_reaches_the_service_spec() -> None:
    """No GPU can exist here: what a start on GPUs 1 and 2 of a node sends Swarm is the
    service spec, checked as built (the NVIDIA container runtime reads the variable; Swarm
    reserves the generic resources where the node advertises them)."""
    from modelberth.runtimes.swarm import SwarmRuntime

    spec = parse_config(
        "models:\n  m:\n    runtime: swarm\n    image: img\n"
        "    command: [srv, --port, '${PORT}', --host, '${HOST}']\n"
        "    gpus: {count: 2}\n    constraints: ['node.labels.zone==a']\n"
    ).specs()["m"]
    attrs = swarm_node(
        labels={"modelberth.gpu.vram_mb": "8000"},
        generic=[{"DiscreteResourceSpec": {"Kind": "NVIDIA-GPU", "Value": 4}}],
    )
    node, _ = node_from_swarm(attrs)
    runtime = SwarmRuntime(None, instance="i")
    runtime._attrs[node.id] = attrs  # as the last node listing left it
    placed = spec.placed_on((1, 2), node.id, node.address)
    args = runtime._create_args(placed, 8123, node, "modelberth-m-x")
    assert "NVIDIA_VISIBLE_DEVICES=1,2" in args["env"]
    assert args["args"] == ["srv", "--port", "8123", "--host", "10.0.0.9"]
    assert args["constraints"] == ["node.id==n1", "node.labels.zone==a"]
    assert args["labels"]["modelberth.gpus"] == "1,2"
    assert args["resources"]["Reservations"]["GenericResources"] == [
        {"DiscreteResourceSpec": {"Kind": "NVIDIA-GPU", "Value": 2}}
    ]
    assert args["networks"] == ["host"]
    # A node that advertises no GPUs as generic resources gets no reservation.
    runtime._attrs[node.id] = swarm_node()
    assert "resources" not in runtime._create_args(placed, 8123, node, "modelberth-m-x")


def test_a_node_s_engine_for_reading_its_tasks_memory() -> None:
    """The label names it (TLS if asked); the manager's node falls back on the manager's
    engine; any other node without the label is not measured."""
    manager = ("unix:///var/run/docker.sock", False)

    def attrs(**labels: str) -> dict[str, Any]:
        return {"ID": "n1", "Spec": {"Labels": labels}}

    assert node_engine(
        attrs(**{"modelberth.engine": "tcp://10.0.0.2:2376", "modelberth.engine_tls": "True"}),
        own=False,
        manager=manager,
    ) == ("tcp://10.0.0.2:2376", True)
    assert node_engine(
        attrs(**{"modelberth.engine": " ssh://ops@gpu-2 "}), own=True, manager=manager
    ) == ("ssh://ops@gpu-2", False)
    assert node_engine(attrs(), own=True, manager=manager) == manager
    assert node_engine(attrs(), own=False, manager=manager) is None
    assert node_engine({"ID": "n2", "Spec": {}}, own=False, manager=manager) is None
