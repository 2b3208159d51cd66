"""The Runtime protocol every way of running an upstream implements."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from modelberth.config import ModelSpec
from modelberth.runtimes.logbuffer import LogBuffer


@dataclass(frozen=True, slots=True)
class ExitStatus:
    code: int | None  # None when only a signal is known
    signal: int | None = None
    reason: str | None = None  # what ended it, when no process exit says (a lost node...)

    def describe(self) -> str:
        if self.reason is not None:
            return self.reason
        if self.signal is not None:
            return f"killed by signal {self.signal}"
        return f"exit code {self.code}"


LOCAL = "local"  # the node id of this machine, whose budgets the resource Monitor keeps


@dataclass(frozen=True, slots=True)
class Node:
    """A machine a multi-node runtime (Swarm, several Docker engines) can start upstreams
    on, with the room the scheduler may plan there."""

    id: str  # unique within its runtime: the placement names it
    name: str  # for people: its host name or configured name
    address: str  # where an upstream started there is reached (and listens)
    memory: int | None  # RAM budget in bytes; None: not budgeted
    vram: Mapping[int, int] = field(default_factory=dict)  # per GPU index: budget in bytes
    ready: bool = True
    why: str | None = None  # why it is not ready
    # What constraints match against: node.id, node.hostname, node.role,
    # node.platform.os, node.platform.arch, node.labels.<k>, engine.labels.<k>.
    attributes: Mapping[str, str] = field(default_factory=dict)
    runtime: str = ""
    # Whether what its upstreams use is sampled (else they count by what they are planned
    # at: memory_mb, learned footprint or estimate).
    usage_measured: bool = True

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "address": self.address,
            "runtime": self.runtime,
            "ready": self.ready,
            "why": self.why,
            "memory_budget_bytes": self.memory,
            "usage_measured": self.usage_measured,
            "gpus": [{"index": i, "vram_budget_bytes": v} for i, v in sorted(self.vram.items())],
        }


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
    def node(self) -> Node | None:
        """The node it runs on (None: this machine)."""
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

    @property
    def error(self) -> str | None:
        """Why the runtime cannot work right now (daemon down...), if so."""
        ...

    async def recover(
        self, specs: Mapping[str, ModelSpec], logs: Mapping[str, LogBuffer]
    ) -> dict[str, tuple[Upstream, int]]:
        """Deal with what an earlier run of this modelberth left: upstreams that still match
        the config are returned (by model name, with their port) to be adopted; the rest end.
        An adopted upstream writes its output (and its recent earlier output, if the runtime
        can read it) into the model's buffer in `logs`."""
        ...

    async def healthy(self) -> bool: ...

    async def nodes(self) -> list[Node] | None:
        """The nodes it can start upstreams on, as of now (None: only this machine, whose
        room the resource Monitor knows). A start is given one in `spec.node`."""
        ...

    async def close(self) -> None: ...
