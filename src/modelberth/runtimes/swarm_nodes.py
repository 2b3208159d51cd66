"""A Swarm node, as the Engine API lists it, turned into a Node the scheduler can plan on.

The budgets are the operator's word where given, as node labels (`docker node update
--label-add`): `modelberth.memory_mb`, `modelberth.gpu.<index>.vram_mb`, or
`modelberth.gpu.vram_mb` for every GPU the node advertises as `NVIDIA-GPU` generic resources;
without a memory label the node's total memory is its RAM budget. The address upstreams are
reached at is the label `modelberth.address`, else a manager's own address, else the
address Swarm last saw the node at (which, behind NAT or on one machine with several
loopback addresses, is where its connection came from rather than where it listens).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modelberth.runtimes.base import Node

GPU_KIND = "NVIDIA-GPU"
MB = 1024 * 1024
LABEL_ADDRESS = "modelberth.address"
LABEL_MEMORY = "modelberth.memory_mb"
LABEL_GPU_VRAM = "modelberth.gpu.vram_mb"  # every advertised GPU's, unless its own is set
_GPU_PREFIX, _GPU_SUFFIX = "modelberth.gpu.", ".vram_mb"


def generic_gpu_count(attrs: Mapping[str, Any]) -> int:
    """How many GPUs the node advertises as generic resources (named or discrete)."""
    count = 0
    resources = attrs.get("Description", {}).get("Resources", {})
    for entry in resources.get("GenericResources") or []:
        named = entry.get("NamedResourceSpec")
        discrete = entry.get("DiscreteResourceSpec")
        if named and named.get("Kind") == GPU_KIND:
            count += 1
        elif discrete and discrete.get("Kind") == GPU_KIND:
            count += int(discrete.get("Value") or 0)
    return count


def node_from_swarm(attrs: Mapping[str, Any]) -> tuple[Node, list[str]]:
    """The node, and what could not be used of its labels (to be logged)."""
    spec = attrs.get("Spec", {})
    description = attrs.get("Description", {})
    status = attrs.get("Status", {})
    labels: Mapping[str, str] = spec.get("Labels") or {}
    name = str(description.get("Hostname") or attrs.get("ID", "?"))
    warnings: list[str] = []

    def megabytes(key: str) -> int | None:
        value = labels.get(key)
        if value is None:
            return None
        if not value.strip().isdigit() or int(value) <= 0:
            warnings.append(
                f"node {name}: label {key}={value!r} is not a whole number of MiB; ignored"
            )
            return None
        return int(value) * MB

    memory = megabytes(LABEL_MEMORY)
    if memory is None:
        total = description.get("Resources", {}).get("MemoryBytes")
        memory = int(total) if total else None
    vram: dict[int, int] = {}
    for key in labels:
        index = key[len(_GPU_PREFIX) : -len(_GPU_SUFFIX)]
        if key.startswith(_GPU_PREFIX) and key.endswith(_GPU_SUFFIX) and index.isdigit():
            budget = megabytes(key)
            if budget is not None:
                vram[int(index)] = budget
    shared = megabytes(LABEL_GPU_VRAM)
    for gpu in range(generic_gpu_count(attrs)):
        if gpu not in vram:
            if shared is None:
                warnings.append(
                    f"node {name}: GPU {gpu} has no VRAM figure: set "
                    f"{_GPU_PREFIX}{gpu}{_GPU_SUFFIX} or {LABEL_GPU_VRAM}"
                )
            vram[gpu] = shared or 0
    return Node(
        id=str(attrs.get("ID", "")),
        name=name,
        address=_address(attrs, labels),
        memory=memory,
        vram=vram,
        ready=_why_not(spec, status) is None,
        why=_why_not(spec, status),
        attributes=_attributes(attrs, labels),
        runtime="swarm",
    ), warnings


def _address(attrs: Mapping[str, Any], labels: Mapping[str, str]) -> str:
    if labels.get(LABEL_ADDRESS):
        return labels[LABEL_ADDRESS]
    manager = (attrs.get("ManagerStatus") or {}).get("Addr")
    if manager:
        return str(manager).rsplit(":", 1)[0].strip("[]")
    return str(attrs.get("Status", {}).get("Addr") or "127.0.0.1")


def _why_not(spec: Mapping[str, Any], status: Mapping[str, Any]) -> str | None:
    state = status.get("State")
    if state != "ready":
        message = status.get("Message")
        return f"node is {state or 'unknown'}" + (f": {message}" if message else "")
    availability = spec.get("Availability", "active")
    return None if availability == "active" else f"availability {availability}"


def _attributes(attrs: Mapping[str, Any], labels: Mapping[str, str]) -> dict[str, str]:
    description = attrs.get("Description", {})
    platform = description.get("Platform", {})
    found = {
        "node.id": str(attrs.get("ID", "")),
        "node.hostname": str(description.get("Hostname", "")),
        "node.role": str(attrs.get("Spec", {}).get("Role", "")),
        "node.platform.os": str(platform.get("OS", "")),
        "node.platform.arch": str(platform.get("Architecture", "")),
    }
    found.update({f"node.labels.{key}": value for key, value in labels.items()})
    engine_labels = description.get("Engine", {}).get("Labels") or {}
    found.update({f"engine.labels.{key}": value for key, value in engine_labels.items()})
    return found
