"""What the machine has and what each model uses: host RAM (psutil), GPUs (NVML), per-model
RAM/VRAM. Sampled in the background, never on a request path."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import psutil
from loguru import logger

from modelberth.config import ResourcesConfig
from modelberth.models.learned import LearnedFootprints
from modelberth.models.model import Model
from modelberth.models.nvml import GpuReading, Nvml
from modelberth.models.state import ModelState
from modelberth.runtimes.base import Upstream

MB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class HostReading:
    memory_total_bytes: int
    memory_available_bytes: int
    cpu_percent: float


@dataclass
class Snapshot:
    host: HostReading
    gpus: list[GpuReading] = field(default_factory=list)
    # Per GPU, what NVML counts as used by processes other than modelberth's upstreams.
    foreign_vram: dict[int, int] = field(default_factory=dict)


def read_host() -> HostReading:
    memory = psutil.virtual_memory()
    return HostReading(
        int(memory.total), int(memory.available), float(psutil.cpu_percent(interval=None))
    )


def process_tree(pids: Iterable[int]) -> set[int]:
    """The given pids and all their descendants."""
    found: set[int] = set()
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            parent = psutil.Process(pid)
            found.add(pid)
            found.update(child.pid for child in parent.children(recursive=True))
    return found


# Asleep or waking, a model's RAM holds its offloaded weights and its VRAM is released: not
# what it costs awake, so those samples do not raise its peaks.
_NOT_PEAK = frozenset({ModelState.SLEEPING, ModelState.WAKING})


class Monitor:
    """Owns the latest readings; writes each model's usage through Model.record_usage and
    remembers its peaks in the learned footprints, saved after each sample."""

    def __init__(
        self,
        config: ResourcesConfig,
        nvml: Nvml | None = None,
        learned: LearnedFootprints | None = None,
    ) -> None:
        self.config = config
        self.learned = learned or LearnedFootprints(None)
        self.nvml = nvml or Nvml()
        self.snapshot = Snapshot(read_host(), [])
        self._task: asyncio.Task[None] | None = None

    def start(self, models: Callable[[], Iterable[Model]]) -> None:
        self.snapshot = self._read_machine()
        self._task = asyncio.create_task(self._run(models))

    async def stop(self, models: Iterable[Model] = ()) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._remember(models)
        await self.learned.save()
        await asyncio.to_thread(self.nvml.close)

    async def _run(self, models: Callable[[], Iterable[Model]]) -> None:
        while True:
            try:
                await self.sample(list(models()))
            except Exception as exc:  # a bad sample must not end monitoring
                logger.warning("resource sampling failed: {}", exc)
            await asyncio.sleep(self.config.sample_interval)

    async def sample(self, models: list[Model]) -> None:
        running = [(m, m.upstream) for m in models if m.upstream is not None]
        # Being stopped, still holding memory: ours, not another program's (the scheduler
        # counts them until they are gone; as foreign they would count twice).
        stopping = [u for m in models for u in m.stopping_upstreams if u.node is None]
        snapshot, usage = await asyncio.to_thread(self._read_all, running, stopping)
        self.snapshot = snapshot
        for model, upstream in running:
            if model.upstream is upstream:  # still the same upstream
                model.record_usage(*usage[model.name], peak=model.state not in _NOT_PEAK)
        self._remember(models)
        await self.learned.save()

    def _remember(self, models: Iterable[Model]) -> None:
        for model in models:
            self.learned.remember(
                model.name,
                model.spec.config_hash(),
                model.peak_memory_bytes,
                model.peak_vram_bytes,
                tuple(model.start_seconds),
            )

    def _read_machine(self) -> Snapshot:
        return Snapshot(read_host(), self.nvml.read())

    def _read_all(
        self, running: list[tuple[Model, Upstream]], stopping: list[Upstream]
    ) -> tuple[Snapshot, dict[str, tuple[int | None, int | None]]]:
        snapshot = self._read_machine()
        usage: dict[str, tuple[int | None, int | None]] = {}
        ours = {gpu.index: 0 for gpu in snapshot.gpus}
        for model, upstream in running:
            # Pids on another machine mean nothing here.
            pids = process_tree(upstream.pids) if upstream.node is None else set()
            memory = upstream.memory_bytes  # processes: RSS of the tree; docker: stats
            vram = 0
            for gpu in snapshot.gpus:
                used = sum(gpu.process_memory.get(pid, 0) for pid in pids)
                ours[gpu.index] += used
                vram += used
            usage[model.name] = (memory, vram or None)
        leaving = process_tree(pid for upstream in stopping for pid in upstream.pids)
        for gpu in snapshot.gpus:
            ours[gpu.index] += sum(gpu.process_memory.get(pid, 0) for pid in leaving)
        snapshot.foreign_vram = {
            gpu.index: max(gpu.memory_used_bytes - ours[gpu.index], 0) for gpu in snapshot.gpus
        }
        return snapshot, usage

    # --- budgets -----------------------------------------------------------------------

    def memory_budget(self) -> int:
        if self.config.memory_budget_mb is not None:
            return self.config.memory_budget_mb * MB
        return self.snapshot.host.memory_total_bytes

    def vram_budgets(self) -> dict[int, int]:
        if isinstance(self.config.gpus, list):
            return {gpu.index: gpu.vram_budget_mb * MB for gpu in self.config.gpus}
        margin = self.config.vram_margin_mb * MB
        return {gpu.index: max(gpu.memory_total_bytes - margin, 0) for gpu in self.snapshot.gpus}

    def vram_caps(self) -> dict[int, int]:
        """What models may use on each GPU: its budget, but never more than NVML says is
        free of anyone else's use (another program on the GPU shrinks the room)."""
        caps = self.vram_budgets()
        readings = {gpu.index: gpu for gpu in self.snapshot.gpus}
        for index, budget in caps.items():
            gpu = readings.get(index)
            if gpu is not None:
                free = gpu.memory_total_bytes - self.snapshot.foreign_vram.get(
                    index, gpu.memory_used_bytes
                )
                caps[index] = max(min(budget, free), 0)
        return caps

    def report(
        self, models: Iterable[Model], estimates: dict[str, tuple[int | None, int | None]]
    ) -> dict[str, Any]:
        host = self.snapshot.host
        return {
            "host": {
                "memory_total_bytes": host.memory_total_bytes,
                "memory_available_bytes": host.memory_available_bytes,
                "cpu_percent": host.cpu_percent,
            },
            "gpus": [
                {
                    "index": gpu.index,
                    "name": gpu.name,
                    "memory_total_bytes": gpu.memory_total_bytes,
                    "memory_used_bytes": gpu.memory_used_bytes,
                    "utilization_percent": gpu.utilization_percent,
                    "other_used_bytes": self.snapshot.foreign_vram.get(gpu.index, 0),
                }
                for gpu in self.snapshot.gpus
            ],
            "models": {
                model.name: {
                    "state": model.state.value,
                    "memory_bytes": model.memory_bytes,
                    "vram_bytes": model.vram_bytes,
                    "estimate_memory_bytes": estimates[model.name][0],
                    "estimate_vram_bytes": estimates[model.name][1],
                }
                for model in models
            },
            "budgets": {
                "memory_bytes": self.memory_budget(),
                "gpus": [
                    {"index": index, "vram_bytes": budget}
                    for index, budget in sorted(self.vram_budgets().items())
                ],
            },
        }
