"""`docker.hosts`: several standalone Docker engines as the nodes of `runtime: docker`, for
those without Swarm. Each engine is a DockerRuntime of its own, with its node (name,
address, budgets, labels from the config); the scheduler picks the node of each start and
this runtime hands the start to that engine.

An engine that cannot be reached is a node that is not ready: no start goes there, and its
running containers are lost to modelberth (their wait fails), so their models fail and their
next request places them on another host.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Mapping, Sequence

from loguru import logger

from modelberth.config import ModelSpec
from modelberth.config.sections import DockerHost
from modelberth.runtimes.base import Node, RuntimeStartError, Upstream
from modelberth.runtimes.docker import DockerRuntime
from modelberth.runtimes.logbuffer import LogBuffer

MB = 1024 * 1024
_RECHECK = 2.0  # seconds a reading of the engines' reachability holds


def host_node(host: DockerHost) -> Node:
    attributes = {
        "node.id": host.name,
        "node.hostname": host.name,
        "node.role": "worker",
        **{f"node.labels.{key}": value for key, value in host.labels.items()},
    }
    return Node(
        id=host.name,
        name=host.name,
        address=host.address,
        memory=host.memory_mb * MB if host.memory_mb else None,
        vram={gpu.index: gpu.vram_budget_mb * MB for gpu in host.gpus},
        attributes=attributes,
        runtime="docker",
    )


class DockerHostsRuntime:
    name = "docker"

    def __init__(self, hosts: Sequence[DockerHost], *, instance: str) -> None:
        self.instance = instance
        self.engines = {
            host.name: DockerRuntime(
                host.url, instance=instance, node=host_node(host), tls=host.tls
            )
            for host in hosts
        }
        self._ready: dict[str, bool] = {}
        self._read_at = float("-inf")

    @property
    def error(self) -> str | None:
        errors = [
            f"{name}: {engine.error}" for name, engine in self.engines.items() if engine.error
        ]
        return "; ".join(errors) or None

    async def nodes(self) -> list[Node] | None:
        if time.monotonic() - self._read_at >= _RECHECK:
            names = list(self.engines)
            answers = await asyncio.gather(*(self.engines[n].healthy() for n in names))
            self._ready = dict(zip(names, answers, strict=True))
            self._read_at = time.monotonic()
        nodes = []
        for name, engine in self.engines.items():
            assert engine.node is not None
            ready = self._ready.get(name, False)
            nodes.append(
                engine.node
                if ready
                else dataclasses.replace(
                    engine.node,
                    ready=False,
                    why=f"engine unreachable: {engine.error or 'no answer'}",
                )
            )
        return nodes

    async def start(self, spec: ModelSpec, port: int, logs: LogBuffer) -> Upstream:
        engine = self.engines.get(spec.node or "")
        if engine is None:
            raise RuntimeStartError(f"no Docker host named {spec.node!r} in docker.hosts")
        return await engine.start(spec, port, logs)

    async def recover(
        self, specs: Mapping[str, ModelSpec], logs: Mapping[str, LogBuffer]
    ) -> dict[str, tuple[Upstream, int]]:
        """Every engine's containers of this instance; a model found running on two hosts
        (an engine that was unreachable came back) keeps the first, the other is stopped."""
        kept: dict[str, tuple[Upstream, int]] = {}
        for name, engine in self.engines.items():
            for model, (upstream, port) in (await engine.recover(specs, logs)).items():
                if model in kept:
                    logger.warning(
                        "docker: {} runs on two hosts; stopping the one on {}", model, name
                    )
                    await upstream.stop(specs[model].stop_timeout)
                    continue
                kept[model] = (upstream, port)
        return kept

    async def healthy(self) -> bool:
        answers = await asyncio.gather(*(e.healthy() for e in self.engines.values()))
        return all(answers)

    async def close(self) -> None:
        for engine in self.engines.values():
            await engine.close()
