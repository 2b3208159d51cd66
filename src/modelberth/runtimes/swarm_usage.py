"""How much memory each Swarm task uses, read through the Docker engine of the node it runs
on, so that the scheduler counts a node's models by what they use, as it does on this
machine.

The manager's engine lists the whole swarm but sees only its own node's containers. A task
on another node is sampled through that node's engine, which the node label
`modelberth.engine` names (a Docker URL, as `docker.hosts` takes it: unix://, tcp://, ssh://;
`modelberth.engine_tls=true` checks a tcp:// engine with $DOCKER_CERT_PATH's certificates).
A task on a node with no such label is not measured: it is counted by its `memory_mb`,
learned footprint or estimate, and `/api/resources` says so (`usage_measured: false`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import docker
import docker.errors
import requests.exceptions
from loguru import logger

from modelberth.runtimes import engine

LABEL_ENGINE = "modelberth.engine"
LABEL_ENGINE_TLS = "modelberth.engine_tls"
Engine = tuple[str | None, bool]  # URL (None: $DOCKER_HOST) and whether it is TLS-checked


def node_engine(attrs: Mapping[str, Any], *, own: bool, manager: Engine) -> Engine | None:
    """The engine a node's containers are read through: its label's, else the manager's
    own for the manager's node; None: its tasks cannot be measured."""
    labels: Mapping[str, str] = attrs.get("Spec", {}).get("Labels") or {}
    url = labels.get(LABEL_ENGINE, "").strip()
    if url:
        return url, labels.get(LABEL_ENGINE_TLS, "").strip().lower() == "true"
    return manager if own else None


class TaskMemory:
    """Owns one client per node engine, made on first use in its own threads (every call
    blocks) and dropped when the engine stops answering, to be made again later."""

    def __init__(self, manager: Engine) -> None:
        self._manager = manager
        self._engines: dict[str, Engine] = {}  # node id -> its engine
        self._clients: dict[Engine, docker.DockerClient] = {}
        self._failing: set[Engine] = set()  # warned about once, until it answers again
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="swarm-stats")

    def update(self, nodes: Mapping[str, Mapping[str, Any]], own: str | None) -> None:
        """The swarm's nodes as listed (attrs by node id); `own`: the manager's node id."""
        self._engines = {}
        for node_id, attrs in nodes.items():
            found = node_engine(attrs, own=node_id == own, manager=self._manager)
            if found is not None:
                self._engines[node_id] = found

    def measured(self, node_id: str) -> bool:
        return node_id in self._engines

    async def sample(self, node_id: str, container: str) -> int | None:
        """The container's memory use now; None if its node has no engine to ask or the
        engine does not answer."""
        where = self._engines.get(node_id)
        if where is None:
            return None
        loop = asyncio.get_running_loop()
        try:
            usage = await loop.run_in_executor(
                self._pool, lambda: engine.memory_in_use(self._client(where), container)
            )
        except (
            docker.errors.DockerException,
            requests.exceptions.RequestException,
            engine.EngineSetupError,
        ) as exc:
            if not isinstance(exc, docker.errors.NotFound):  # the task ended meanwhile
                self._clients.pop(where, None)
                if where not in self._failing:
                    self._failing.add(where)
                    logger.warning(
                        "swarm: cannot read task memory through {}: {}",
                        where[0] or "DOCKER_HOST",
                        exc,
                    )
            return None
        self._failing.discard(where)
        return usage

    def _client(self, where: Engine) -> docker.DockerClient:
        client = self._clients.get(where)
        if client is None:
            client = self._clients[where] = engine.connect(where[0], tls=where[1])
        return client

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for client in self._clients.values():
            client.close()
        self._clients.clear()
