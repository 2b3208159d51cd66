"""The Runtime protocol every way of running an upstream implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from modelberth.config import ModelSpec
from modelberth.logbuffer import LogBuffer


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

    async def cleanup_orphans(self) -> list[str]:
        """Stop what a previous modelberth run left behind; return what was removed."""
        ...
