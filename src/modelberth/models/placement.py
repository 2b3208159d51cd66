"""Where a start goes: on which node and GPUs, and which idle models must make room first.

Pure planning over one view of the budgets and of what runs; the Scheduler builds the view
and carries the plan out. A start has one or more candidate placements, each a node (this
machine, or one of a multi-node runtime's) and GPUs there (its fixed GPUs; the GPU it slept
on; every GPU for `gpus: auto`; every set of N GPUs for `gpus: {count: N}`). Every node has
budgets of its own and only what runs on a node counts against them.
For each, idle models are taken as victims in eviction order, but only one that frees
something the start still lacks (RAM, or VRAM on one of the candidate's GPUs), so nothing is
evicted from a GPU the start will not use. Among the candidates that work, the one whose
victims cost least to bring back wins; ties go to `binpack` (the least room left on the
chosen GPUs, or on the node's RAM for a start without GPUs: big GPUs and free nodes stay
free for big models) or `spread` (the most room left).

Room on a GPU is its budget capped by what NVML says is not used by anyone but modelberth's
own upstreams (see Monitor.vram_caps), less what modelberth counts there for each model
(measured, else configured, else estimated).
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

from modelberth.runtimes.base import LOCAL, Node

MB = 1024 * 1024
RAM = "RAM"  # the host RAM in a set of resources that lack room (GPUs are ints)
K = TypeVar("K", bound=Hashable)  # what identifies a running model (the Scheduler's Model)


@dataclass(frozen=True, slots=True)
class Cost:
    memory: int | None  # None: unknown, so it needs the whole budget
    vram: Mapping[int, int | None] = field(default_factory=dict)  # per GPU index
    node: str = LOCAL  # where it is held

    def describe(self) -> str:
        parts = [f"RAM {mib(self.memory)}"]
        parts += [f"GPU{i} {mib(v)}" for i, v in sorted(self.vram.items())]
        text = ", ".join(parts)
        return text if self.node == LOCAL else f"{text} on node {self.node}"


NOTHING = Cost(0)


def mib(value: int | None) -> str:
    return "unknown" if value is None else f"{value / MB:.0f} MiB"


@dataclass(frozen=True, slots=True)
class Budgets:
    memory: int | None  # None: RAM is not budgeted
    vram: Mapping[int, int]  # per GPU: what models may use there


Room = Mapping[str, Budgets]  # per node id


@dataclass(frozen=True, slots=True)
class Spot:
    """One candidate placement: GPUs on a node."""

    node: str
    gpus: tuple[int, ...]
    name: str = ""  # the node's name, for people (its id when empty)


@dataclass(frozen=True, slots=True)
class Placement:
    """What admission gives a start: the GPUs it runs on (None: no GPU, or `gpus: all`,
    which the runtime passes on as is) and the node (None: this machine)."""

    gpus: tuple[int, ...] | None
    node: Node | None = None


@dataclass(frozen=True, slots=True)
class Need:
    memory: int | None
    vram: int | None  # over all its GPUs; None: unknown
    on_gpu: bool

    def cost_on(self, gpus: Sequence[int], node: str = LOCAL) -> Cost:
        share = None if self.vram is None or not gpus else self.vram // len(gpus)
        return Cost(self.memory, dict.fromkeys(gpus, share), node)

    def cost_at(self, spot: Spot) -> Cost:
        return self.cost_on(spot.gpus, spot.node)


@dataclass(frozen=True, slots=True)
class Victim(Generic[K]):
    """One way to make room: stop a model, or put it to sleep (it keeps `after`)."""

    key: K
    name: str
    holds: Cost  # what it holds now
    after: Cost  # what it still holds once evicted this way
    score: float  # the eviction score (see Scheduler.eviction_score)
    weight: float  # what evicting it costs a plan: priority first, then the score
    action: Literal["stop", "sleep"] = "stop"


@dataclass(frozen=True, slots=True)
class Plan(Generic[K]):
    spot: Spot
    victims: tuple[Victim[K], ...]
    why: str

    @property
    def gpus(self) -> tuple[int, ...]:
        return self.spot.gpus


def candidates(
    fixed: tuple[int, ...] | None, count: int, gpus: Iterable[int]
) -> list[tuple[int, ...]]:
    """The placements a start may take: its fixed GPUs, or every set of `count` GPUs."""
    if fixed is not None:
        return [fixed]
    if count <= 0:
        return [()]
    return list(itertools.combinations(sorted(gpus), count))


def lacking(cost: Cost, held: Iterable[Cost], room: Room) -> set[int | str]:
    """The resources where `cost` does not fit beside what is `held` on its node (empty: it
    fits). A node without budgets (gone) lacks everything."""
    budgets = room.get(cost.node)
    if budgets is None:
        return {RAM, *cost.vram}
    held = [c for c in held if c.node == cost.node]
    short: set[int | str] = set()
    if budgets.memory is not None:
        if cost.memory is None:
            if any(c.memory != 0 for c in held):  # unknown: it may only run alone
                short.add(RAM)
        elif (
            cost.memory + sum(budgets.memory if c.memory is None else c.memory for c in held)
            > budgets.memory
        ):
            short.add(RAM)
    for gpu, vram in cost.vram.items():
        budget = budgets.vram.get(gpu, 0)
        used = [c.vram[gpu] for c in held if gpu in c.vram]
        if vram is None:
            if any(u != 0 for u in used):
                short.add(gpu)
        elif vram + sum(budget if u is None else u for u in used) > budget:
            short.add(gpu)
    return short


def _frees(victim: Victim[K], now: Cost, short: set[int | str], node: str) -> bool:
    def more(a: int | None, b: int | None) -> bool:
        return (a is None and b is not None) or (a is not None and b is not None and a > b)

    if now.node != node:
        return False  # room on another node is no help
    if RAM in short and more(now.memory, victim.after.memory):
        return True
    return any(
        isinstance(gpu, int) and more(now.vram.get(gpu, 0), victim.after.vram.get(gpu, 0))
        for gpu in short
    )


def victims_for(
    cost: Cost, held: Mapping[K, Cost], order: Sequence[Victim[K]], room: Room
) -> list[Victim[K]] | None:
    """Victims (in `order`) that make `cost` fit; [] if it fits now; None if they cannot.
    A model may appear twice in `order` (sleep, then stop): the later choice replaces it."""
    now = dict(held)
    chosen: dict[K, Victim[K]] = {}
    while short := lacking(cost, now.values(), room):

        def eligible(victim: Victim[K], short: set[int | str] = short) -> bool:
            if victim.key not in now:
                return False
            prior = chosen.get(victim.key)
            if prior is not None and not (prior.action == "sleep" and victim.action == "stop"):
                return False  # taken already (a stop after its sleep may still be needed)
            return _frees(victim, now[victim.key], short, cost.node)

        pick = next((v for v in order if eligible(v)), None)
        if pick is None:
            return None
        chosen[pick.key] = pick
        now[pick.key] = pick.after
    return list(chosen.values())


def left_after(cost: Cost, held: Iterable[Cost], room: Room) -> int:
    """VRAM left over the placement's GPUs once `cost` is added, or RAM left on its node for
    a placement without GPUs (unknown counts as full; unbudgeted RAM as 0)."""
    budgets = room[cost.node]
    held = [c for c in held if c.node == cost.node]
    if not cost.vram:
        if budgets.memory is None:
            return 0
        used = sum(budgets.memory if c.memory is None else c.memory for c in held)
        return budgets.memory - used - (budgets.memory if cost.memory is None else cost.memory)
    left = 0
    for gpu, vram in cost.vram.items():
        budget = budgets.vram.get(gpu, 0)
        used = sum(
            budget if c.vram[gpu] is None else c.vram[gpu] or 0 for c in held if gpu in c.vram
        )
        left += budget - used - (budget if vram is None else vram)
    return left


def choose(
    need: Need,
    placements: Sequence[Spot],
    held: Mapping[K, Cost],
    order: Sequence[Victim[K]],
    room: Room,
    strategy: str,
) -> Plan[K] | None:
    """The best placement and its victims, or None if none can be made to fit yet."""
    options: list[tuple[float, int, Spot, list[Victim[K]]]] = []
    refused: list[str] = []
    for spot in placements:
        cost = need.cost_at(spot)
        victims = victims_for(cost, held, order, room)
        if victims is None:
            refused.append(f"{_where(spot)}: busy")
            continue
        remaining = {k: c for k, c in held.items() if k not in {v.key for v in victims}}
        after = [*remaining.values(), *(v.after for v in victims)]
        left = left_after(cost, after, room)
        options.append((sum(v.weight for v in victims), left, spot, victims))
    if not options:
        return None
    sign = 1 if strategy == "binpack" else -1
    options.sort(key=lambda o: (o[0], sign * o[1]))
    _, left, spot, victims = options[0]
    why = _why(need, spot, left, victims, options[1:4], refused[:3], strategy)
    return Plan(spot, tuple(victims), why)


def _where(spot: Spot) -> str:
    where = f"GPU {','.join(map(str, spot.gpus))}" if spot.gpus else "RAM"
    return where if spot.node == LOCAL else f"node {spot.name or spot.node} {where}"


def _why(
    need: Need,
    spot: Spot,
    left: int,
    victims: list[Victim[K]],
    others: list[tuple[float, int, Spot, list[Victim[K]]]],
    refused: list[str],
    strategy: str,
) -> str:
    if not need.on_gpu and spot.node == LOCAL:
        return "RAM only" + (f", after evicting {_names(victims)}" if victims else "")
    text = f"{_where(spot)} ({strategy}: {mib(left)} left there"
    text += f", after evicting {_names(victims)})" if victims else ", no eviction)"
    alternatives = [
        f"{_where(g)} would leave {mib(rest)}" + (f" after evicting {_names(v)}" if v else "")
        for _, rest, g, v in others
    ]
    if alternatives or refused:
        text += "; " + "; ".join([*alternatives, *refused])
    return text


def _names(victims: Iterable[Victim[K]]) -> str:
    return ", ".join(f"{v.name}" + (" (to sleep)" if v.action == "sleep" else "") for v in victims)
