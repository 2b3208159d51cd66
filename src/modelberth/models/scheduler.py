"""Admission: before a model starts (or wakes), find it a place in the RAM and VRAM budgets.

One owner decides (a lock around every plan), so two starts can never both "fit" into the same
free space. placement.py chooses the GPUs and the victims; this module owns who holds room,
what each model costs, the order victims go in, and the waiting. A start that does not fit
evicts idle, unpinned models (a model with vLLM's sleep mode is put to sleep instead, which
frees its VRAM, unless RAM is what is short); if only busy models stand in the way it waits
(in priority, then arrival order) until they finish, for at most start_timeout; a model that
cannot fit anywhere even alone fails at once.

Eviction order: lowest `priority` first; then the lowest score, where
    score = reload_seconds / (1 + idle_seconds / 60)
reload_seconds is the median of the model's last measured starts (10 s if never measured):
a model quick to bring back, or long unused, goes first; one slow to load that was used a
moment ago goes last. Each eviction's log line gives its score.

Models are tracked by identity, not by name: a model removed from the config keeps its room
until its upstream has stopped, even when a new model of the same name is added meanwhile.

A model of a multi-node runtime (Swarm, several Docker engines) is placed on one of the
runtime's ready nodes that its `constraints` allow, each with the budgets the runtime reads
for it; the room on this machine (the Monitor's) is one more node, `local`.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from loguru import logger

from modelberth.config import ModelSpec
from modelberth.errors import StartFailed
from modelberth.models.estimate import estimate_spec
from modelberth.models.events import EventBus
from modelberth.models.model import Model
from modelberth.models.nodes import eligible, gpus_on, why_no_node
from modelberth.models.placement import (
    NOTHING,
    Budgets,
    Cost,
    Need,
    Placement,
    Plan,
    Room,
    Spot,
    Victim,
    candidates,
    choose,
    lacking,
    mib,
)
from modelberth.models.resources import MB, Monitor
from modelberth.models.state import ModelState
from modelberth.runtimes.base import LOCAL, Node

_GONE = (ModelState.STOPPED, ModelState.FAILED, ModelState.RETIRED)
UNMEASURED_START_SECONDS = 10.0


# The nodes a spec's runtime offers (None: it runs on this machine).
NodesOf = Callable[[ModelSpec], Awaitable[list[Node] | None]]


async def _this_machine(_: ModelSpec) -> list[Node] | None:
    return None


@dataclass(frozen=True, slots=True)
class _Admitted:
    gpus: tuple[int, ...]  # where its VRAM is counted
    node: str = LOCAL  # and on which node


class Scheduler:
    def __init__(
        self,
        monitor: Monitor,
        models: Callable[[], Iterable[Model]],
        events: EventBus,
        nodes_of: NodesOf = _this_machine,
    ) -> None:
        self.monitor = monitor
        self.events = events
        self._models = models
        self._nodes_of = nodes_of
        self._lock = asyncio.Lock()
        # Replaced at every change, so a waiter can never miss the wake-up meant for it.
        self._changed = asyncio.Event()
        # Models that hold (or were given) room, and on which GPUs: from admission, or from
        # READY for an adopted one, until they are gone and no upstream of theirs is left.
        self._admitted: dict[Model, _Admitted] = {}
        self._waiting: dict[Model, tuple[int, int]] = {}  # model -> (-priority, arrival)
        self._arrivals = itertools.count()
        self.evictions = 0

    # --- wiring --------------------------------------------------------------------------

    def attach(self, model: Model) -> None:
        model.connect(self.admit, lambda _: self._notify(), self._on_change)

    def _on_change(self, model: Model) -> None:
        if model.state is ModelState.READY and model not in self._admitted:
            # Adopted models never pass through admit(): count them where they run. A
            # remote endpoint holds no room here: never budgeted, so never evicted.
            if model.spec.remote is None:
                self._admitted[model] = _Admitted(*self._placed(model))
        elif model.state in _GONE and not model.holds_upstream and model in self._admitted:
            del self._admitted[model]
            self._notify()
        elif model.state is ModelState.SLEEPING:
            self._notify()  # its VRAM is free now

    def admitted(self) -> list[Model]:
        """The models counted in the budgets now."""
        return [m for m in self._models() if m in self._admitted]

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # --- costs ---------------------------------------------------------------------------

    def need(self, model: Model) -> Need:
        """What the model needs awake: measured, else configured, else estimated."""
        spec = model.spec
        estimate = estimate_spec(spec, self.monitor.config.estimate_overhead_mb)
        measured_memory = _larger(model.peak_memory_bytes, _mb(spec.memory_mb))
        if not spec.uses_gpu:
            return Need(
                measured_memory or (estimate.total_bytes if estimate else None), None, on_gpu=False
            )
        # On a GPU, RAM is what was measured or configured; the estimate goes to VRAM.
        vram = _larger(model.peak_vram_bytes, _mb(spec.vram_mb)) or (
            estimate.total_bytes if estimate else None
        )
        return Need(measured_memory or 0, vram, on_gpu=True)

    def cost(self, model: Model) -> Cost:
        """What a model that holds room is counted for now."""
        gpus, node = self._placed(model)
        if model.state is ModelState.SLEEPING:
            return self._asleep(model, gpus, node)
        need = self.need(model)
        return need.cost_on(gpus, node) if need.on_gpu else Cost(need.memory, node=node)

    def _asleep(self, model: Model, gpus: tuple[int, ...], node: str = LOCAL) -> Cost:
        """Asleep, its VRAM is free; at level 1 its weights wait in host RAM (counted as its
        VRAM need, or as measured if more)."""
        awake = self.need(model)
        memory = awake.memory or 0
        if model.spec.sleep_level == 1:
            memory = max(model.memory_bytes or 0, memory + (awake.vram or 0))
        # Its VRAM counts as free: what a sleeping vLLM keeps (a CUDA context) is small, and
        # the last sample may be from before it slept.
        return Cost(memory, dict.fromkeys(gpus, 0), node)

    def _placed(self, model: Model) -> tuple[tuple[int, ...], str]:
        """Where a model's room is counted: its GPUs and node."""
        admitted = self._admitted.get(model)
        if admitted is not None:
            return admitted.gpus, admitted.node
        node = model.node
        if node is not None:
            return model.gpus or gpus_on(model.spec, node), node.id
        return model.gpus or self._all_gpus(model), LOCAL

    def _all_gpus(self, model: Model) -> tuple[int, ...]:
        gpus = model.spec.gpus
        if gpus == "all":
            return tuple(sorted(self.monitor.vram_budgets()))
        return gpus if isinstance(gpus, tuple) else ()

    def estimates(self, model: Model) -> tuple[int | None, int | None]:
        """(RAM, VRAM) the scheduler would plan with before measuring; for /api/resources."""
        estimate = estimate_spec(model.spec, self.monitor.config.estimate_overhead_mb)
        total = estimate.total_bytes if estimate else None
        if model.spec.uses_gpu:
            return _mb(model.spec.memory_mb), _mb(model.spec.vram_mb) or total
        return _mb(model.spec.memory_mb) or total, None

    def eviction_score(self, model: Model) -> float:
        """Lower is evicted first (within a priority); see the module docstring."""
        starts = model.start_seconds
        reload = statistics.median(starts) if starts else UNMEASURED_START_SECONDS
        return reload / (1 + model.idle_seconds() / 60)

    # --- admission -----------------------------------------------------------------------

    async def admit(self, model: Model) -> Placement:
        """Wait for room, evicting what must go; where the start runs."""
        deadline = time.monotonic() + model.spec.start_timeout
        waking = model.state is ModelState.WAKING and model in self._admitted
        if not waking:  # a start is admitted only once nothing of the model's is left
            self._admitted.pop(model, None)
        self._waiting[model] = (-model.spec.priority, next(self._arrivals))
        try:
            while True:
                nodes = await self._nodes_of(model.spec)
                async with self._lock:
                    changed = self._changed
                    plan = await self._try_admit(model, waking, nodes)
                    if plan is not None:
                        self._admitted[model] = _Admitted(plan.gpus, plan.spot.node)
                if plan is not None:
                    exact = (
                        model.spec.gpu_count
                        or isinstance(model.spec.gpus, tuple)
                        or (nodes is not None and model.spec.gpus == "all")
                    )
                    node = next((n for n in nodes or () if n.id == plan.spot.node), None)
                    return Placement(plan.gpus if exact and plan.gpus else None, node)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise StartFailed(
                        model.name,
                        "no room within start_timeout: " + self._blockers(model),
                        retry_after=5,
                    )
                try:
                    await asyncio.wait_for(changed.wait(), remaining)
                except TimeoutError:
                    continue
        finally:
            self._waiting.pop(model, None)
            self._notify()  # the next start in line may go now

    def _placements(self, model: Model, waking: bool, nodes: list[Node] | None) -> list[Spot]:
        if waking:  # a sleeping upstream cannot move
            admitted = self._admitted[model]
            return [Spot(admitted.node, admitted.gpus)]
        spec = model.spec
        if nodes is None:
            fixed = self._all_gpus(model) if spec.gpus else None
            return [
                Spot(LOCAL, gpus)
                for gpus in candidates(fixed, spec.gpu_count, self.monitor.vram_budgets())
            ]
        spots: list[Spot] = []
        for node in eligible(spec, nodes):
            fixed = gpus_on(spec, node) if spec.gpus else None
            spots += [
                Spot(node.id, gpus, node.name)
                for gpus in candidates(fixed, spec.gpu_count, node.vram)
            ]
        return spots

    def _room(self, nodes: list[Node] | None) -> Room:
        if nodes is None:
            return {LOCAL: Budgets(self._memory_budget(), self.monitor.vram_caps())}
        return {node.id: Budgets(node.memory, node.vram) for node in nodes if node.ready}

    async def _try_admit(
        self, model: Model, waking: bool, nodes: list[Node] | None
    ) -> Plan[Model] | None:
        need = self.need(model)
        placements = self._placements(model, waking, nodes)
        room = self._room(nodes)
        self._check_fits_somewhere(model, need, placements, nodes)
        if min(self._waiting.values()) != self._waiting[model]:
            return None  # an earlier or higher-priority start waits for room first
        others = self._others(model)
        held = {m: self.cost(m) for m in others}
        plan = choose(
            need, placements, held, self._victims(others, held), room, self.monitor.config.placement
        )
        log = logger.bind(model=model.name)
        log.debug(
            "admission: needs {}; running {}; plan {}",
            _describe(need),
            {m.name: c.describe() for m, c in held.items()},
            None if plan is None else plan.why,
        )
        if plan is None:
            log.info("waiting for room ({}); busy: {}", _describe(need), self._blockers(model))
            return None
        if plan.victims:
            await self._evict(model, need, plan)
            held = {m: self.cost(m) for m in self._others(model)}
            if lacking(need.cost_at(plan.spot), held.values(), room):
                return None  # a request reached a victim before it went: plan again
        elif need.on_gpu:
            log.info("placing {} on {}", model.name, plan.why)
        return plan

    def _victims(self, others: list[Model], held: dict[Model, Cost]) -> list[Victim[Model]]:
        """Every way to make room, in the order they are taken."""
        idle = [
            m
            for m in others
            if m.in_flight == 0
            and m.waiting == 0
            and not m.spec.pinned
            and m.state in (ModelState.READY, ModelState.SLEEPING)
        ]
        floor = min((m.spec.priority for m in idle), default=0)
        options: list[tuple[tuple[int, float, int], Victim[Model]]] = []
        for m in idle:
            score = self.eviction_score(m)
            # Priority first: a placement evicting one model of a higher priority costs
            # more than any number of lower ones (1000 per step, scores stay far below).
            weight = (m.spec.priority - floor + 1) * 1000 + score
            if m.state is ModelState.READY and m.spec.sleep_level:
                gpus, node = self._placed(m)
                options.append(
                    (
                        (m.spec.priority, score, 0),
                        Victim(
                            m, m.name, held[m], self._asleep(m, gpus, node), score, weight, "sleep"
                        ),
                    )
                )
            options.append(
                ((m.spec.priority, score, 1), Victim(m, m.name, held[m], NOTHING, score, weight))
            )
        return [victim for _, victim in sorted(options, key=lambda o: o[0])]

    async def _evict(self, model: Model, need: Need, plan: Plan[Model]) -> None:
        for victim in plan.victims:
            self.evictions += 1
            m = victim.key
            self.events.notify(
                "eviction",
                victim.name,
                for_model=model.name,
                freed=victim.holds.describe(),
                needed=_describe(need),
                action=victim.action,
                score=round(victim.score, 3),
                gpus=list(plan.gpus),
            )
            logger.bind(model=victim.name).warning(
                "evicting {} ({}; priority {}, score {:.2f} = reload {:.1f}s / (1 + idle {:.0f}s"
                " / 60); {}) to make room for {} ({}) on {}",
                victim.name,
                "to sleep" if victim.action == "sleep" else "stop",
                m.spec.priority,
                victim.score,
                statistics.median(m.start_seconds) if m.start_seconds else UNMEASURED_START_SECONDS,
                m.idle_seconds(),
                victim.holds.describe(),
                model.name,
                _describe(need),
                plan.why,
            )
        reason = f"evicted for {model.name}"
        await asyncio.gather(*(_sleep_or_stop(v.key, v.action, reason) for v in plan.victims))

    def _check_fits_somewhere(
        self, model: Model, need: Need, placements: list[Spot], nodes: list[Node] | None
    ) -> None:
        """Fail at once if no placement can fit even with every evictable model gone."""
        spec = model.spec
        if nodes is not None and not placements:
            raise StartFailed(model.name, why_no_node(spec, nodes), retry_after=5)
        budgets = self.monitor.vram_budgets() if nodes is None else {}
        if nodes is None and spec.gpu_count > len(budgets):
            raise StartFailed(
                model.name, f"needs {spec.gpu_count} GPUs but found {len(budgets) or 'no GPUs'}"
            )
        for gpu in (gpu for spot in placements if nodes is None for gpu in spot.gpus):
            if gpu not in budgets:
                raise StartFailed(
                    model.name, f"GPU {gpu} does not exist (found: {sorted(budgets) or 'no GPUs'})"
                )
        pinned = [m for m in self._others(model) if m.spec.pinned]
        beside = f" beside pinned {', '.join(m.name for m in pinned)}" if pinned else ""
        held = [self.cost(m) for m in pinned]
        room = (
            self._room(nodes)
            if nodes is not None
            else {LOCAL: Budgets(self._memory_budget(), budgets)}
        )
        if any(not lacking(need.cost_at(spot), held, room) for spot in placements):
            return
        spot = placements[0]
        short = lacking(need.cost_at(spot), held, room)
        budget = room[spot.node]
        on = "" if spot.node == LOCAL else f" of node {spot.name or spot.node}"
        anywhere = "" if len({s.node for s in placements}) == 1 else " (nor on any other node)"
        if "RAM" in short:
            left = budget.memory or 0
            left -= sum(c.memory or 0 for c in held if c.node == spot.node)
            raise StartFailed(
                model.name,
                f"needs {mib(need.memory)} of RAM but the memory "
                f"budget{on} leaves {mib(left)}{beside}{anywhere}: it can never "
                "fit",
            )
        share = need.cost_at(spot).vram
        gpu = min(g for g in short if isinstance(g, int))
        left = budget.vram.get(gpu, 0) - sum(
            c.vram.get(gpu) or 0 for c in held if c.node == spot.node
        )
        where = f"GPU {gpu}" if len(placements) == 1 else f"any GPU (e.g. GPU {gpu})"
        raise StartFailed(
            model.name,
            f"needs {mib(share[gpu])} on {where}{on} but its budget "
            f"leaves {mib(left)}{beside}{anywhere}: it can never fit",
        )

    def _memory_budget(self) -> int | None:
        # RAM is budgeted only if asked: the host's own total is not a plan.
        return (
            self.monitor.memory_budget()
            if self.monitor.config.memory_budget_mb is not None
            else None
        )

    def _others(self, model: Model) -> list[Model]:
        return [m for m in self._models() if m is not model and m in self._admitted]

    def _blockers(self, model: Model) -> str:
        busy = [
            f"{m.name} ({m.in_flight} in flight{', pinned' if m.spec.pinned else ''})"
            for m in self._others(model)
        ]
        return ", ".join(busy) or "nothing"


async def _sleep_or_stop(model: Model, action: str, reason: str) -> None:
    if action == "sleep" and await model.sleep(reason):
        return
    await model.stop(reason, only_if_idle=True)


def _describe(need: Need) -> str:
    text = f"RAM {mib(need.memory)}"
    return text + f", VRAM {mib(need.vram)}" if need.on_gpu else text


def _larger(measured: int | None, configured: int | None) -> int | None:
    """A measured peak can be caught low (sampled while loading); a configured figure is
    the operator's word. Plan with the larger of what is known."""
    known = [v for v in (measured, configured) if v]
    return max(known) if known else None


def _mb(value: int | None) -> int | None:
    return None if value is None else value * MB
