"""Which nodes of a multi-node runtime a model can start on: ready, allowed by its
constraints (Swarm's expressions, config/constraints.py), with the GPUs it asks for; and,
when none can, each node's reason."""

from __future__ import annotations

from modelberth.config import ModelSpec
from modelberth.config.constraints import matches_all, parse
from modelberth.runtimes.base import Node


def eligible(spec: ModelSpec, nodes: list[Node]) -> list[Node]:
    """The ready nodes the spec's constraints allow and that have the GPUs it asks for."""
    constraints = [parse(expression) for expression in spec.constraints]
    return [
        node
        for node in nodes
        if node.ready and matches_all(constraints, node.attributes) and _has_gpus(spec, node)
    ]


def _has_gpus(spec: ModelSpec, node: Node) -> bool:
    if isinstance(spec.gpus, tuple):
        return set(spec.gpus) <= set(node.vram)
    if spec.gpus == "all":
        return bool(node.vram)
    return spec.gpu_count <= len(node.vram)


def gpus_on(spec: ModelSpec, node: Node) -> tuple[int, ...]:
    """The GPUs a spec with fixed `gpus` takes on `node`."""
    gpus = spec.gpus
    if gpus == "all":
        return tuple(sorted(node.vram))
    return gpus if isinstance(gpus, tuple) else ()


def why_no_node(spec: ModelSpec, nodes: list[Node]) -> str:
    """Why no node can take a start: each node's reason."""
    if not nodes:
        return "no node to run on: the runtime reports none"
    constraints = [parse(expression) for expression in spec.constraints]
    reasons = []
    for node in nodes:
        if not node.ready:
            why = node.why or "not ready"
        elif not matches_all(constraints, node.attributes):
            why = f"constraints {', '.join(spec.constraints)} exclude it"
        else:
            why = f"has {len(node.vram)} GPUs"
        reasons.append(f"{node.name}: {why}")
    return "no node can run it (" + "; ".join(reasons) + ")"
