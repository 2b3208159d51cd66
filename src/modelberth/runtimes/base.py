"""The Runtime protocol every way of running an upstream implements."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from modelberth.config import ModelSpec
from modelberth.runtimes.logbuffer import LogBuffer


@dataclass(frozen=True, slots=True)
class ExitStatus:
    code: int | None  # None when only a signal is known
    signal: int | None = None

    def describe(self) -> str:
        if self.signal is not None:
            return f"killed by signal {self.signal}"
        return f"exit code {self.code}"


class RuntimeStartError(Exception):
    """The runtime could not start the upstream at all (bad executable, missing image...)."""


class Upstream(Protocol):
    """A started upstream: one process group or one container."""

    @property
    def runtime_id(self) -> str: ...

    @property
    def pids(self) -> list[int]: ...

    @property
    def gpus(self) -> tuple[int, ...] | None:
        """The GPU indexes it was started on (None: no GPU, or all of them)."""
        ...

    @property
    def memory_bytes(self) -> int | None:
        """Memory in use now (processes) or at the last background sample (containers)."""
        ...

    def exited(self) -> ExitStatus | None: ...

    async def wait(self) -> ExitStatus:
        """Return as soon as the upstream has exited, however it ended."""
        ...

    async def stop(self, timeout: float) -> ExitStatus:
        """Ask it to stop (SIGTERM / docker stop), kill it after `timeout`, reap it."""
        ...


class Runtime(Protocol):
    name: str

    async def start(self, spec: ModelSpec, port: int, logs: LogBuffer) -> Upstream:
        """Launch the upstream; output goes to `logs`. Raise RuntimeStartError if it can't."""
        ...

    error: str | None  # why the runtime cannot work right now (daemon down...), if so

    async def recover(self, specs: Mapping[str, ModelSpec],
                      logs: Mapping[str, LogBuffer]) -> dict[str, tuple[Upstream, int]]:
        """Deal with what an earlier run of this modelberth left: upstreams that still match
        the config are returned (by model name, with their port) to be adopted; the rest end.
        An adopted upstream writes its output (and its recent earlier output, if the runtime
        can read it) into the model's buffer in `logs`."""
        ...

    async def healthy(self) -> bool: ...

    async def close(self) -> None: ...
