"""`runtime: remote`: the runtime of models that run elsewhere. It runs nothing: the lifecycle
makes a remote model ready without calling `start` (Lifecycle._start_upstream), and there is
nothing of an earlier run to recover. It exists so that every model has a runtime (status,
/health's runtimes) like the others."""

from __future__ import annotations

from collections.abc import Mapping

from modelberth.config import ModelSpec
from modelberth.runtimes.base import Node, RuntimeStartError, Upstream
from modelberth.runtimes.logbuffer import LogBuffer


class RemoteRuntime:
    name = "remote"
    error: str | None = None

    async def start(self, spec: ModelSpec, port: int, logs: LogBuffer) -> Upstream:
        raise RuntimeStartError(f"{spec.name} is a remote endpoint: there is nothing to start")

    async def recover(
        self, specs: Mapping[str, ModelSpec], logs: Mapping[str, LogBuffer]
    ) -> dict[str, tuple[Upstream, int]]:
        return {}

    async def nodes(self) -> list[Node] | None:
        return None

    async def healthy(self) -> bool:
        return True

    async def close(self) -> None:
        return None
