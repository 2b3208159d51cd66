"""Admission: before a model starts, make room for it in the RAM and VRAM budgets.

One owner decides (a lock around every plan), so two starts can never both "fit" into the same
free space. A start that does not fit evicts idle, unpinned models, lowest priority and least
recently used first; if only busy models stand in the way it waits (in priority, then arrival
order) until they finish, for at most start_timeout; a model that cannot fit even alone fails
at once.

Models are tracked by identity, not by name: a model removed from the config keeps its room
until its upstream has stopped, even when a new model of the same name is added meanwhile.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from loguru import logger

from modelberth.errors import StartFailed
from modelberth.models.estimate import estimate_spec
from modelberth.models.events import EventBus
from modelberth.models.model import Model
from modelberth.models.resources import MB, Monitor
from modelberth.models.state import ModelState

_GONE = (ModelState.STOPPED, ModelState.FAILED, ModelState.RETIRED)


@dataclass(frozen=True, slots=True)
class Cost:
    memory: int | None  # None: unknown, so it needs the whole budget
    vram: dict[int, int | None]  # per GPU index

    def describe(self) -> str:
        parts = [f"RAM {_mib(self.memory)}"]
        parts += [f"GPU{i} {_mib(v)}" for i, v in sorted(self.vram.items())]
        return ", ".join(parts)


def _mib(value: int | None) -> str:
    return "unknown" if value is None else f"{value / MB:.0f} MiB"


class Scheduler:
    def __init__(self, monitor: Monitor, models: Callable[[], Iterable[Model]],
                 events: EventBus) -> None:
        self.monitor = monitor
        self.events = events
        self._models = models
        self._lock = asyncio.Lock()
        # Replaced at every change, so a waiter can never miss the wake-up meant for it.
        self._changed = asyncio.Event()
        # Models that hold (or were given) room: from admission, or from READY for an adopted
        # one, until they are gone and no upstream of theirs is left.
        self._admitted: set[Model] = set()
        self._waiting: dict[Model, tuple[int, int]] = {}  # model -> (-priority, arrival)
        self._arrivals = itertools.count()
        self.evictions = 0

    # --- wiring --------------------------------------------------------------------------

    def attach(self, model: Model) -> None:
        model.connect(self.admit, lambda _: self._notify(), self._on_change)

    def _on_change(self, model: Model) -> None:
        if model.state is ModelState.READY:
            self._admitted.add(model)  # adopted models never pass through admit()
        elif model.state in _GONE and not model.holds_upstream and model in self._admitted:
            self._admitted.discard(model)
            self._notify()

    def admitted(self) -> list[Model]:
        """The models counted in the budgets now."""
        return [m for m in self._models() if m in self._admitted]

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # --- costs ---------------------------------------------------------------------------

    def cost(self, model: Model) -> Cost:
        spec = self.monitor.config
        estimate = estimate_spec(model.spec, spec.estimate_overhead_mb)
        on_gpu = bool(model.spec.gpus)
        memory = _larger(model.peak_memory_bytes, _mb(model.spec.memory_mb)) or (
            estimate.total_bytes if estimate and not on_gpu else None)
        if not on_gpu:
            return Cost(memory, {})
        # On a GPU, RAM is what was measured or configured; the estimate goes to VRAM.
        memory = _larger(model.peak_memory_bytes, _mb(model.spec.memory_mb)) or 0
        vram = _larger(model.peak_vram_bytes, _mb(model.spec.vram_mb)) or (
            estimate.total_bytes if estimate else None)
        gpus = self._gpu_indices(model)
        share = None if vram is None or not gpus else vram // len(gpus)
        return Cost(memory, dict.fromkeys(gpus, share))

    def estimates(self, model: Model) -> tuple[int | None, int | None]:
        """(RAM, VRAM) the scheduler would plan with before measuring; for /api/resources."""
        estimate = estimate_spec(model.spec, self.monitor.config.estimate_overhead_mb)
        total = estimate.total_bytes if estimate else None
        if model.spec.gpus:
            return _mb(model.spec.memory_mb), _mb(model.spec.vram_mb) or total
        return _mb(model.spec.memory_mb) or total, None

    def _gpu_indices(self, model: Model) -> list[int]:
        gpus = model.spec.gpus
        if gpus == "all":
            return sorted(self.monitor.vram_budgets())
        return list(gpus) if isinstance(gpus, tuple) else []

    # --- admission -----------------------------------------------------------------------

    async def admit(self, model: Model) -> None:
        deadline = time.monotonic() + model.spec.start_timeout
        # A start is admitted only once nothing of the model's is left running.
        self._admitted.discard(model)
        self._waiting[model] = (-model.spec.priority, next(self._arrivals))
        try:
            while True:
                async with self._lock:
                    changed = self._changed
                    if await self._try_admit(model):
                        return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise StartFailed(model.name, "no room within start_timeout: "
                                      + self._blockers(model), retry_after=5)
                try:
                    await asyncio.wait_for(changed.wait(), remaining)
                except TimeoutError:
                    continue
        finally:
            self._waiting.pop(model, None)
            self._notify()  # the next start in line may go now

    async def _try_admit(self, model: Model) -> bool:
        need = self.cost(model)
        self._check_fits_alone(model, need)
        if min(self._waiting.values()) != self._waiting[model]:
            return False  # an earlier or higher-priority start waits for room first
        victims = self._plan(model, need)
        logger.bind(model=model.name).debug(
            "admission: needs {}; running {}; victims {}", need.describe(),
            {m.name: self.cost(m).describe() for m in self._others(model)},
            None if victims is None else [v.name for v in victims])
        if victims is None:
            logger.bind(model=model.name).info("waiting for room ({}); busy: {}",
                                               need.describe(), self._blockers(model))
            return False
        for victim in victims:
            self.evictions += 1
            self.events.notify("eviction", victim.name, for_model=model.name,
                               freed=self.cost(victim).describe(), needed=need.describe())
            logger.bind(model=victim.name).warning(
                "evicting {} (idle since {:.0f}s, {}) to make room for {} ({})", victim.name,
                victim.idle_seconds(), self.cost(victim).describe(),
                model.name, need.describe())
        await asyncio.gather(*(v.stop(f"evicted for {model.name}", only_if_idle=True)
                               for v in victims))
        if any(v in self._admitted for v in victims):
            return False  # a request reached a victim before it stopped: plan again
        self._admitted.add(model)
        return True

    def _check_fits_alone(self, model: Model, need: Cost) -> None:
        """Fail at once if the model cannot fit even with every evictable model gone."""
        pinned = [m for m in self._others(model) if m.spec.pinned]
        beside = f" beside pinned {', '.join(m.name for m in pinned)}" if pinned else ""
        costs = [self.cost(m) for m in pinned]
        budget = self.monitor.memory_budget()
        if need.memory is not None and self.monitor.config.memory_budget_mb is not None:
            room = budget - sum(c.memory or 0 for c in costs)
            if need.memory > room:
                raise StartFailed(model.name, f"needs {_mib(need.memory)} of RAM but the memory "
                                  f"budget leaves {_mib(room)}{beside}: it can never fit")
        budgets = self.monitor.vram_budgets()
        for gpu, vram in need.vram.items():
            if gpu not in budgets:
                raise StartFailed(model.name, f"GPU {gpu} does not exist (found: "
                                  f"{sorted(budgets) or 'no GPUs'})")
            room = budgets[gpu] - sum(c.vram.get(gpu) or 0 for c in costs)
            if vram is not None and vram > room:
                raise StartFailed(model.name, f"needs {_mib(vram)} on GPU {gpu} but its budget "
                                  f"leaves {_mib(room)}{beside}: it can never fit")

    def _others(self, model: Model) -> list[Model]:
        return [m for m in self._models() if m is not model and m in self._admitted]

    def _plan(self, model: Model, need: Cost) -> list[Model] | None:
        """Idle models to stop so `need` fits; [] if it fits now; None if it cannot yet."""
        others = self._others(model)
        candidates = sorted(
            (m for m in others if m.state is ModelState.READY and m.in_flight == 0
             and m.waiting == 0 and not m.spec.pinned),
            key=lambda m: (m.spec.priority, -m.idle_seconds()))
        victims: list[Model] = []
        while not self._fits(need, [m for m in others if m not in victims]):
            if not candidates:
                return None
            victims.append(candidates.pop(0))
        return victims

    def _fits(self, need: Cost, running: list[Model]) -> bool:
        costs = [self.cost(m) for m in running]
        if self.monitor.config.memory_budget_mb is not None:  # RAM is budgeted only if asked
            budget = self.monitor.memory_budget()
            if need.memory is None:
                if any(c.memory != 0 for c in costs):  # unknown: it may only run alone
                    return False
            elif need.memory + sum(c.memory or budget for c in costs) > budget:
                return False
        budgets = self.monitor.vram_budgets()
        for gpu, vram in need.vram.items():
            used = [c.vram[gpu] for c in costs if gpu in c.vram]
            if vram is None and used:
                return False
            if vram is not None and vram + sum(u or budgets[gpu] for u in used) > budgets[gpu]:
                return False
        return True

    def _blockers(self, model: Model) -> str:
        busy = [f"{m.name} ({m.in_flight} in flight{', pinned' if m.spec.pinned else ''})"
                for m in self._others(model)]
        return ", ".join(busy) or "nothing"


def _larger(measured: int | None, configured: int | None) -> int | None:
    """A measured peak can be caught low (sampled while loading); a configured figure is
    the operator's word. Plan with the larger of what is known."""
    known = [v for v in (measured, configured) if v]
    return max(known) if known else None


def _mb(value: int | None) -> int | None:
    return None if value is None else value * MB
