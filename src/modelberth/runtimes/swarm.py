"""`runtime: swarm`: upstreams as Docker Swarm services, one replica each, on the node the
scheduler chose. One service, its task and its output, is in service.py.

The scheduler plans with the nodes this runtime lists (swarm_nodes.py: budgets from node
labels, else the node's memory) and gives each start a node; the service is pinned there by
a `node.id==` constraint beside the model's own constraints, runs on the node's host network
(or publishes its port there in host mode, for `network: bridge`), and is reached at the
node's address. Swarm's restart policy is `none`: modelberth supervises, and an upstream that
exits is a failure it sees, as with the other runtimes.

What each task uses is read through the engine of its node (swarm_usage.py), so that the
scheduler counts models on a node by their measured memory, as it does on this machine.

GPUs: the indexes the scheduler chose go to the container as NVIDIA_VISIBLE_DEVICES (the
NVIDIA container runtime, set as the node's default runtime, honours it); a node that
advertises `NVIDIA-GPU` generic resources also gets as many reserved, so Swarm's own
accounting agrees with modelberth's.

Ownership and adoption as for containers (ownership.py): services carry the managed,
instance, model, config and port labels; at boot this instance's matching services with a
running task on a ready node are adopted and the others removed; another instance's are
never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Mapping
from typing import Any

import docker
import docker.errors
import docker.types
import requests.exceptions
from docker.models.services import Service
from loguru import logger

from modelberth.config import ModelSpec
from modelberth.runtimes import container_logs
from modelberth.runtimes.base import Node, RuntimeStartError, Upstream
from modelberth.runtimes.docker import DockerRuntime
from modelberth.runtimes.engine import explain
from modelberth.runtimes.logbuffer import LogBuffer
from modelberth.runtimes.ownership import (
    LABEL_CONFIG,
    LABEL_GPUS,
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LABEL_MODEL,
    LABEL_PORT,
    service_name,
)
from modelberth.runtimes.service import SwarmUpstream, latest_task
from modelberth.runtimes.swarm_nodes import GPU_KIND, generic_gpu_count, node_from_swarm
from modelberth.runtimes.swarm_usage import TaskMemory

LABEL_NODE = "modelberth.node"  # the node id the scheduler placed the service on
_SAMPLE_INTERVAL = 5.0  # seconds between two readings of the tasks' memory


class SwarmRuntime:
    name = "swarm"

    def __init__(self, url: str | None, *, instance: str, refresh_seconds: float = 5.0) -> None:
        self.instance = instance
        self._engine = DockerRuntime(url, instance=instance)  # the manager's engine
        self._refresh = refresh_seconds
        self._nodes: list[Node] = []
        self._attrs: dict[str, dict[str, Any]] = {}  # node id -> as Swarm lists it
        self._read_at = float("-inf")
        self._warned: set[str] = set()
        self._upstreams: dict[str, SwarmUpstream] = {}  # service id -> its upstream
        self._refreshing: asyncio.Task[None] | None = None
        self._own: str | None = None  # the manager's own node id
        self._usage = TaskMemory((url, False))
        self._sampler: asyncio.Task[None] | None = None

    @property
    def error(self) -> str | None:
        return self._engine.error

    # --- nodes ---------------------------------------------------------------------------

    async def nodes(self) -> list[Node] | None:
        """The swarm's nodes as the manager sees them now (asked before each start, so a
        start never goes to a node known to be down); [] while it cannot be reached."""
        await self._read_nodes()
        return list(self._nodes)

    async def _read_nodes(self) -> None:
        try:
            client = await self._engine.client()
            if self._own is None:
                info = await self._engine.call(client.info)
                self._own = (info.get("Swarm") or {}).get("NodeID") or None
            found = await self._engine.call(client.nodes.list)
        except (RuntimeStartError, docker.errors.DockerException) as exc:
            logger.warning("swarm: cannot list the nodes: {}", exc)
            self._nodes, self._attrs = [], {}
            self._read_at = time.monotonic()
            return
        nodes: list[Node] = []
        attrs: dict[str, dict[str, Any]] = {}
        for entry in found:
            node, warnings = node_from_swarm(entry.attrs)
            for warning in warnings:
                if warning not in self._warned:
                    self._warned.add(warning)
                    logger.warning("swarm: {}", warning)
            nodes.append(node)
            attrs[node.id] = entry.attrs
        self._usage.update(attrs, self._own)
        self._nodes = [
            dataclasses.replace(node, usage_measured=self._usage.measured(node.id))
            for node in nodes
        ]
        self._attrs = attrs
        self._read_at = time.monotonic()

    def _node_ready(self, node_id: str) -> bool:
        """From the last listing, read again in the background when it is older than
        `swarm.refresh_seconds` (the upstreams' watchers ask every second)."""
        if time.monotonic() - self._read_at >= self._refresh and (
            self._refreshing is None or self._refreshing.done()
        ):
            self._refreshing = asyncio.create_task(self._read_nodes())
        return any(node.id == node_id and node.ready for node in self._nodes)

    # --- Runtime protocol ----------------------------------------------------------------

    async def start(self, spec: ModelSpec, port: int, logs: LogBuffer) -> SwarmUpstream:
        node = next((n for n in self._nodes if n.id == spec.node), None)
        if node is None:
            raise RuntimeStartError(f"node {spec.node} is not in the swarm (any more)")
        client = await self._engine.client()
        name = service_name(self.instance, spec.name)
        await self._remove_own_named(client, name)
        kwargs = self._create_args(spec, port, node, name)
        try:
            service = await self._engine.call(
                lambda: client.services.create(  # type: ignore[no-untyped-call]
                    **kwargs
                )
            )
        except docker.errors.APIError as exc:
            raise RuntimeStartError(f"cannot create service: {explain(exc)}") from None
        logs.append(
            "modelberth",
            f"created service {name} ({str(service.id)[:12]}, "
            f"{kwargs['image']}) on node {node.name} ({node.address})",
        )
        upstream = SwarmUpstream(self._engine, service, node, spec.name, logs, self._node_ready)
        self._keep(upstream)
        return upstream

    def _keep(self, upstream: SwarmUpstream) -> None:
        """Held until it has exited, so that close() can end its watcher."""
        key = str(upstream.service.id)
        self._upstreams[key] = upstream
        upstream.on_exit(lambda: self._forget(key))
        if self._sampler is None or self._sampler.done():
            self._sampler = asyncio.create_task(self._sample_forever())

    async def _sample_forever(self) -> None:
        """Each running task's memory, through its node's engine (swarm_usage.py)."""
        while self._upstreams:
            for upstream in list(self._upstreams.values()):
                if upstream.container_id is not None and upstream.exited() is None:
                    upstream.memory_bytes = await self._usage.sample(
                        upstream.node.id, upstream.container_id
                    )
            await asyncio.sleep(_SAMPLE_INTERVAL)

    def _create_args(self, spec: ModelSpec, port: int, node: Node, name: str) -> dict[str, Any]:
        docker_spec = spec.docker
        assert docker_spec is not None
        bridged = docker_spec.network == "bridge" and docker_spec.container_port is not None
        inner = docker_spec.container_port if bridged and docker_spec.container_port else port
        labels = {
            LABEL_MANAGED: "true",
            LABEL_INSTANCE: self.instance,
            LABEL_MODEL: spec.name,
            LABEL_CONFIG: spec.config_hash(),
            LABEL_PORT: str(port),
            LABEL_NODE: node.id,
        }
        env = spec.environment(inner)
        devices = spec.devices
        if devices:
            labels[LABEL_GPUS] = ",".join(map(str, devices))
            env.setdefault("NVIDIA_VISIBLE_DEVICES", ",".join(map(str, devices)))
        args: dict[str, Any] = {
            "image": docker_spec.image,
            "name": name,
            "labels": labels,
            "container_labels": labels,
            "env": [f"{key}={value}" for key, value in env.items()],
            "mounts": list(docker_spec.volumes),
            "constraints": [f"node.id=={node.id}", *spec.constraints],
            "restart_policy": docker.types.RestartPolicy(condition="none"),
            "stop_grace_period": int(max(spec.stop_timeout, 1) * 1e9),
            "init": True,
            "mode": docker.types.ServiceMode("replicated", 1),
        }
        argv = spec.argv(inner)
        if docker_spec.entrypoint is not None:
            args["command"] = list(docker_spec.entrypoint)
            args["args"] = argv
        elif argv:
            args["args"] = argv
        if bridged:
            published: dict[str, Any] = {str(port): (inner, "tcp", "host")}
            args["endpoint_spec"] = docker.types.EndpointSpec(ports=published)
        else:
            args["networks"] = ["host"]
        gpus = len(devices) if devices else 0
        if gpus and generic_gpu_count(self._attrs.get(node.id, {})):
            args["resources"] = docker.types.Resources(generic_resources={GPU_KIND: gpus})
        return args

    def _forget(self, key: str) -> None:
        self._upstreams.pop(key, None)

    async def _remove_own_named(self, client: docker.DockerClient, name: str) -> None:
        """A leftover service of this instance with that name goes; any other is an error."""
        try:
            old = await self._engine.call(lambda: client.services.get(name))  # type: ignore[no-untyped-call]
        except docker.errors.NotFound:
            return
        labels = old.attrs.get("Spec", {}).get("Labels") or {}
        if labels.get(LABEL_MANAGED) != "true" or labels.get(LABEL_INSTANCE) != self.instance:
            raise RuntimeStartError(
                f"service name '{name}' is taken by a service this instance "
                f"('{self.instance}') does not own; remove it or set server.instance_id"
            )
        logger.warning("swarm: removing leftover service {}", name)
        await self._remove(old)

    async def _remove(self, service: Service) -> None:
        with contextlib.suppress(docker.errors.NotFound, RuntimeStartError):
            await self._engine.call(service.remove)

    async def recover(
        self, specs: Mapping[str, ModelSpec], logs: Mapping[str, LogBuffer]
    ) -> dict[str, tuple[Upstream, int]]:
        """This instance's services from an earlier run: those that match the config and
        run on a ready node are returned to be adopted; every other one is removed."""
        try:
            client = await self._engine.client()
            own = {"label": [f"{LABEL_MANAGED}=true", f"{LABEL_INSTANCE}={self.instance}"]}
            found = await self._engine.call(lambda: client.services.list(filters=own))
        except (RuntimeStartError, docker.errors.DockerException) as exc:
            logger.warning("swarm: {}", exc)
            return {}
        await self._read_nodes()
        kept: dict[str, tuple[Upstream, int]] = {}
        for service in found:
            adopted = await self._adoptable(service, specs, kept)
            if adopted is None:
                labels = service.attrs.get("Spec", {}).get("Labels") or {}
                logger.warning(
                    "swarm: removing stale service {} ({})", service.name, labels.get(LABEL_MODEL)
                )
                await self._remove(service)
                continue
            spec, node, port = adopted
            buffer = logs.get(spec.name) or LogBuffer()
            after = await self._backfill(service, buffer)
            upstream = SwarmUpstream(
                self._engine, service, node, spec.name, buffer, self._node_ready, after
            )
            self._keep(upstream)
            kept[spec.name] = (upstream, port)
        return kept

    async def _adoptable(
        self, service: Service, specs: Mapping[str, ModelSpec], kept: Mapping[str, object]
    ) -> tuple[ModelSpec, Node, int] | None:
        labels = service.attrs.get("Spec", {}).get("Labels") or {}
        spec = specs.get(labels.get(LABEL_MODEL, ""))
        port = str(labels.get(LABEL_PORT, ""))
        if (
            spec is None
            or spec.runtime != "swarm"
            or spec.name in kept
            or labels.get(LABEL_CONFIG) != spec.config_hash()
            or not port.isdigit()
        ):
            return None
        try:
            task = latest_task(
                await self._engine.call(
                    lambda: service.tasks(  # type: ignore[no-untyped-call]
                        filters={"desired-state": "running"}
                    )
                )
            )
        except docker.errors.DockerException:
            return None
        if task is None or task.get("Status", {}).get("State") != "running":
            return None
        node = next((n for n in self._nodes if n.id == task.get("NodeID")), None)
        if node is None or not node.ready:
            return None
        return spec, node, int(port)

    async def _backfill(self, service: Service, logs: LogBuffer) -> dict[str, int] | None:
        """Copy an adopted service's recent output into `logs`; where following resumes."""

        def recent() -> tuple[list[tuple[int, str, str]], dict[str, int]]:
            client = self._engine.connected()
            merged: list[tuple[int, str, str]] = []
            last: dict[str, int] = {}
            for stream in ("stdout", "stderr"):
                frames = list(
                    client.api.service_logs(
                        service.id,
                        stdout=stream == "stdout",
                        stderr=stream == "stderr",
                        follow=False,
                        timestamps=True,
                        tail=str(container_logs.BACKFILL_LINES),
                    )
                )
                for when, text in container_logs.lines(frames):
                    last[stream] = max(when, last.get(stream, 0))
                    merged.append((when, stream, text))
            merged.sort(key=lambda entry: entry[0])
            return merged[-container_logs.BACKFILL_LINES :], last

        try:
            lines, after = await self._engine.call(recent)
        except (
            docker.errors.DockerException,
            requests.exceptions.RequestException,
            RuntimeStartError,
        ) as exc:
            logger.warning("swarm: cannot read the output of {}: {}", service.name, exc)
            return None
        for _, stream, text in lines:
            logs.append(stream, text)
        logs.append(
            "modelberth",
            f"service {service.name} was running already"
            + (f": its last {len(lines)} output lines are above" if lines else ""),
        )
        return after

    async def healthy(self) -> bool:
        try:
            client = await self._engine.client()
            info = await self._engine.call(client.info)
        except RuntimeStartError:
            return False
        swarm = info.get("Swarm", {})
        if swarm.get("LocalNodeState") != "active" or not swarm.get("ControlAvailable"):
            self._engine.error = (
                f"the engine is not a Swarm manager (Swarm state {swarm.get('LocalNodeState')!r})"
            )
            return False
        return True

    async def close(self) -> None:
        for task in (self._refreshing, self._sampler):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for upstream in list(self._upstreams.values()):
            await upstream.close()
        self._usage.close()
        await self._engine.close()
