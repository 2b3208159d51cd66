"""Placement as pure planning (models/placement.py) and what a placement does to the
upstream's command line and environment (ModelSpec.placed_on)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

from modelberth.config import Config, ModelSpec
from modelberth.models import placement
from modelberth.models.placement import (
    NOTHING,
    Budgets,
    Cost,
    Need,
    Plan,
    Spot,
    Victim,
    candidates,
)
from modelberth.runtimes.base import LOCAL

MB = 1024 * 1024
GIB = 1024 * MB
# Two GPUs of different sizes: GPU 0 has 24 GiB for models, GPU 1 has 8.
TWO = Budgets(None, {0: 24 * GIB, 1: 8 * GIB})
NONE: dict[str, Cost] = {}  # nothing running
NO_VICTIMS: list[Victim[str]] = []


def choose(
    need: Need,
    gpus: Sequence[tuple[int, ...]],
    held: Mapping[str, Cost],
    order: Sequence[Victim[str]],
    budgets: Budgets,
    strategy: str,
) -> Plan[str] | None:
    """placement.choose on this machine alone (the one node, `local`)."""
    return placement.choose(
        need, [Spot(LOCAL, g) for g in gpus], held, order, {LOCAL: budgets}, strategy
    )


def lacking(cost: Cost, held: list[Cost], budgets: Budgets) -> set[int | str]:
    return placement.lacking(cost, held, {LOCAL: budgets})


def on(gpus: dict[int, int]) -> Cost:
    return Cost(0, {g: v * GIB for g, v in gpus.items()})


def victim(
    key: str,
    holds: Cost,
    score: float = 1.0,
    after: Cost = NOTHING,
    action: Literal["stop", "sleep"] = "stop",
) -> Victim[str]:
    return Victim(key, key, holds, after, score, 1000 + score, action)


def test_candidates_are_fixed_or_every_set_of_n() -> None:
    assert candidates((2,), 0, [0, 1, 2]) == [(2,)]
    assert candidates(None, 0, [0, 1]) == [()]
    assert candidates(None, 1, [1, 0]) == [(0,), (1,)]
    assert candidates(None, 2, [0, 1, 2]) == [(0, 1), (0, 2), (1, 2)]


def test_binpack_takes_the_fullest_gpu_that_fits_spread_the_emptiest() -> None:
    need = Need(0, 6 * GIB, on_gpu=True)
    placements = candidates(None, 1, TWO.vram)
    binpack = choose(need, placements, NONE, NO_VICTIMS, TWO, "binpack")
    spread = choose(need, placements, NONE, NO_VICTIMS, TWO, "spread")
    assert binpack is not None and binpack.gpus == (1,) and not binpack.victims
    assert spread is not None and spread.gpus == (0,)
    assert "GPU 1 (binpack: 2048 MiB left there, no eviction)" in binpack.why
    # Too big for GPU 1: binpack has one choice.
    big = choose(Need(0, 10 * GIB, on_gpu=True), placements, NONE, NO_VICTIMS, TWO, "binpack")
    assert big is not None and big.gpus == (0,)


def test_a_gpu_that_fits_now_beats_one_that_needs_an_eviction() -> None:
    held = {"small": on({1: 4})}
    plan = choose(
        Need(0, 6 * GIB, on_gpu=True),
        candidates(None, 1, TWO.vram),
        held,
        [victim("small", held["small"])],
        TWO,
        "binpack",
    )
    assert plan is not None and plan.gpus == (0,) and not plan.victims


def test_victims_come_only_from_the_chosen_gpus() -> None:
    held = {"a": on({0: 20}), "b": on({1: 6}), "c": on({0: 3})}
    order = [victim("b", held["b"], 0.1), victim("c", held["c"], 0.2), victim("a", held["a"], 0.3)]
    # On GPU 0: 20 + 3 + 6 = 29 > 24, and evicting c leaves 26 > 24, so a must go too;
    # on GPU 1: 6 + 6 = 12 > 8, and evicting b is enough. Nothing on GPU 0 is touched.
    plan = choose(
        Need(0, 6 * GIB, on_gpu=True), candidates(None, 1, TWO.vram), held, order, TWO, "binpack"
    )
    assert plan is not None
    assert plan.gpus == (1,)
    assert [v.key for v in plan.victims] == ["b"]


def test_an_eviction_that_frees_nothing_needed_is_never_made() -> None:
    held = {"cpu": Cost(2 * GIB), "gpu1": on({1: 7})}
    order = [victim("cpu", held["cpu"], 0.0), victim("gpu1", held["gpu1"], 5.0)]
    plan = choose(Need(0, 4 * GIB, on_gpu=True), [(1,)], held, order, TWO, "binpack")
    assert plan is not None and [v.key for v in plan.victims] == ["gpu1"]


def test_two_gpus_split_the_need_evenly() -> None:
    need = Need(0, 16 * GIB, on_gpu=True)
    three = Budgets(None, {0: 24 * GIB, 1: 8 * GIB, 2: 8 * GIB})
    plan = choose(need, candidates(None, 2, three.vram), NONE, NO_VICTIMS, three, "binpack")
    assert plan is not None and plan.gpus == (1, 2)  # 8 + 8: nothing left over
    assert need.cost_on(plan.gpus) == Cost(0, {1: 8 * GIB, 2: 8 * GIB})
    assert (
        choose(
            Need(0, 60 * GIB, on_gpu=True),
            candidates(None, 2, three.vram),
            NONE,
            NO_VICTIMS,
            three,
            "binpack",
        )
        is None
    )


def test_busy_models_make_a_start_wait() -> None:
    held = {"busy": on({0: 20}), "busy2": on({1: 7})}
    assert (
        choose(
            Need(0, 6 * GIB, on_gpu=True),
            candidates(None, 1, TWO.vram),
            held,
            NO_VICTIMS,
            TWO,
            "binpack",
        )
        is None
    )


def test_unknown_vram_needs_the_gpu_to_itself() -> None:
    assert lacking(Cost(0, {0: None}), [on({1: 3})], TWO) == set()
    assert lacking(Cost(0, {0: None}), [on({0: 1})], TWO) == {0}
    assert lacking(on({0: 1}), [Cost(0, {0: None})], TWO) == {0}


def test_ram_budget_and_unknown_ram() -> None:
    ram = Budgets(10 * GIB, {})
    assert lacking(Cost(6 * GIB), [Cost(4 * GIB)], ram) == set()
    assert lacking(Cost(7 * GIB), [Cost(4 * GIB)], ram) == {"RAM"}
    assert lacking(Cost(None), [Cost(1)], ram) == {"RAM"}
    assert lacking(Cost(None), [], ram) == set()
    assert lacking(Cost(None), [Cost(5 * GIB)], Budgets(None, {})) == set()  # not budgeted


def test_sleep_frees_vram_and_a_stop_follows_when_ram_is_short() -> None:
    budgets = Budgets(12 * GIB, {0: 8 * GIB})
    held = {"v": Cost(1 * GIB, {0: 6 * GIB})}
    asleep = Cost(7 * GIB, {0: 0})  # level 1: the weights move to RAM
    order = [victim("v", held["v"], after=asleep, action="sleep"), victim("v", held["v"])]
    plan = choose(Need(1 * GIB, 6 * GIB, on_gpu=True), [(0,)], held, order, budgets, "binpack")
    assert plan is not None and [(v.key, v.action) for v in plan.victims] == [("v", "sleep")]
    # With a 12 GiB RAM budget, 7 asleep + 6 for the newcomer do not fit: it must stop.
    plan = choose(Need(6 * GIB, 6 * GIB, on_gpu=True), [(0,)], held, order, budgets, "binpack")
    assert plan is not None and [(v.key, v.action) for v in plan.victims] == [("v", "stop")]


# --- several nodes (a multi-node runtime: Swarm, docker.hosts) -----------------------------

NODES = {"a": Budgets(1 * GIB, {}), "b": Budgets(3 * GIB, {})}
ON_NODES = [Spot("a", ()), Spot("b", ())]


def test_a_start_goes_to_a_node_with_room_and_counts_only_what_runs_there() -> None:
    need = Need(2 * GIB, None, on_gpu=False)
    plan = placement.choose(need, ON_NODES, NONE, NO_VICTIMS, NODES, "binpack")
    assert plan is not None and plan.spot == Spot("b", ()) and not plan.victims
    # What runs on node a is no burden on node b, and what runs on b fills b.
    on_a = {"x": Cost(1 * GIB, node="a")}
    assert placement.lacking(Cost(2 * GIB, node="b"), on_a.values(), NODES) == set()
    on_b = {"y": Cost(2 * GIB, node="b")}
    assert placement.lacking(Cost(2 * GIB, node="b"), on_b.values(), NODES) == {"RAM"}
    assert placement.choose(need, ON_NODES, on_b, NO_VICTIMS, NODES, "binpack") is None


def test_a_node_with_room_beats_an_eviction_elsewhere_and_victims_stay_on_their_node() -> None:
    held = {"x": Cost(3 * GIB, node="b"), "y": Cost(1 * GIB, node="a")}
    order = [victim("y", held["y"], 0.1), victim("x", held["x"], 0.2)]
    # 1 GiB fits on neither node as they are; only evicting the model on the chosen node
    # helps, and y (on a) is first in order but frees nothing on b.
    plan = placement.choose(
        Need(1 * GIB, None, on_gpu=False), [Spot("b", ())], held, order, NODES, "binpack"
    )
    assert plan is not None and [v.key for v in plan.victims] == ["x"]
    plan = placement.choose(
        Need(1 * GIB, None, on_gpu=False), ON_NODES, {"x": held["x"]}, order, NODES, "binpack"
    )
    assert plan is not None and plan.spot.node == "a" and not plan.victims


def test_binpack_fills_the_fuller_node_spread_the_emptier() -> None:
    room = {"a": Budgets(4 * GIB, {}), "b": Budgets(8 * GIB, {})}
    need = Need(1 * GIB, None, on_gpu=False)
    binpack = placement.choose(need, ON_NODES, NONE, NO_VICTIMS, room, "binpack")
    spread = placement.choose(need, ON_NODES, NONE, NO_VICTIMS, room, "spread")
    assert binpack is not None and binpack.spot.node == "a"
    assert spread is not None and spread.spot.node == "b"
    assert "node b RAM (spread: 7168 MiB left there, no eviction)" in spread.why


def test_the_same_gpu_index_on_two_nodes_is_two_gpus() -> None:
    room = {"a": Budgets(None, {0: 8 * GIB}), "b": Budgets(None, {0: 8 * GIB})}
    held = {"x": Cost(0, {0: 6 * GIB}, "a")}
    plan = placement.choose(
        Need(0, 6 * GIB, on_gpu=True),
        [Spot("a", (0,)), Spot("b", (0,))],
        held,
        NO_VICTIMS,
        room,
        "binpack",
    )
    assert plan is not None and plan.spot == Spot("b", (0,))


def test_a_node_that_is_gone_has_no_room() -> None:
    assert placement.lacking(Cost(1, node="gone"), [], NODES) == {"RAM"}


def _spec(model: dict[str, object], name: str = "m") -> ModelSpec:
    return Config.model_validate({"models": {name: model}}).specs()[name]


def test_templates_fill_tensor_split_and_parallel_size_on_two_gpus() -> None:
    llama = _spec({"template": "llama-cpp", "model_path": "/m.gguf", "gpus": {"count": 2}})
    vllm = _spec({"template": "vllm", "model_path": "org/m", "gpus": "auto"})
    one = llama.placed_on((1,))
    two = llama.placed_on((0, 2))
    assert "--tensor-split" not in one.argv(9000)
    assert two.argv(9000)[-4:] == ["--split-mode", "layer", "--tensor-split", "1,1"]
    assert two.environment(9000) == {
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "CUDA_VISIBLE_DEVICES": "0,2",
    }
    assert vllm.placed_on((0, 1)).argv(9000)[-2:] == ["--tensor-parallel-size", "2"]
    # The placement is not config: the hash (and so adoption) does not depend on it.
    assert two.config_hash() == llama.config_hash()


def test_own_command_gets_the_gpu_placeholders_but_no_extra_arguments() -> None:
    spec = _spec(
        {
            "command": ["srv", "--port", "${PORT}", "--gpus", "${GPUS}", "--n", "${GPU_COUNT}"],
            "gpus": {"count": 2},
        }
    )
    assert spec.placed_on((1, 3)).argv(5) == ["srv", "--port", "5", "--gpus", "1,3", "--n", "2"]


def test_sleep_adds_vllm_flags_and_dev_mode() -> None:
    spec = _spec({"template": "vllm", "model_path": "org/m", "sleep": 1})
    assert "--enable-sleep-mode" in spec.command
    assert spec.env["VLLM_SERVER_DEV_MODE"] == "1"
    assert spec.sleep_level == 1
