"""The lifecycle under churn, in process: retirement on reload and shutdown, budgets while a
removed model drains, stops joined onto idle stops, cancelled admissions, the idle clock,
start timeouts, hung upstreams and exits seen after a crash.

Every test drives a real Registry (ProcessRuntime, fake_upstream.py) in the test's own event
loop; the fixture always shuts it down and checks that no upstream process is left alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import psutil
import pytest

from conftest import fake_model, process_gone, upstreams_of
from modelberth.config import Config
from modelberth.errors import StartTimeout
from modelberth.models.model import Model
from modelberth.models.registry import Registry
from modelberth.models.state import ModelRetired, ModelState, StateEvent
from modelberth.runtimes.process import MODEL_ENV

S = ModelState
Boot = Callable[..., Awaitable[Registry]]


def spec(*extra: str, **settings: Any) -> dict[str, Any]:
    return fake_model(None, *extra, **settings)


def config(models: dict[str, dict[str, Any]], **sections: Any) -> Config:
    return Config.model_validate({"models": models, **sections})


def live_upstreams(model: str | None = None) -> list[psutil.Process]:
    """This test process's upstreams still alive (of one model, if named)."""
    found = []
    for proc in upstreams_of(os.getpid()):
        try:
            if model is None or proc.environ().get(MODEL_ENV) == model:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def state(model: Model) -> ModelState:
    return model.state  # read anew each time (mypy would narrow `model.state`)


def pid_of(model: Model) -> int:
    assert model.upstream is not None
    return int(model.upstream.runtime_id)


async def wait_until(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)


def _kill_leftovers() -> list[int]:
    left = live_upstreams()
    for proc in left:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
    return [proc.pid for proc in left]


@pytest.fixture
async def boot() -> AsyncIterator[Boot]:
    """boot(models, **sections) builds and boots a Registry; all are shut down afterwards,
    and any upstream still alive then fails the test (and is killed)."""
    registries: list[Registry] = []

    async def make(models: dict[str, dict[str, Any]], **sections: Any) -> Registry:
        registry = Registry(config(models, **sections))
        registries.append(registry)
        await registry.boot()
        return registry

    try:
        yield make
    finally:
        try:
            for registry in registries:
                await asyncio.wait_for(registry.shutdown(), 60)
        finally:
            leaked = _kill_leftovers()
    assert not leaked, f"upstream processes outlived the registry: {leaked}"


# --- 1. retired: nothing starts a removed or shut-down model again ---------------------------


async def test_requests_queued_on_a_removed_model_get_404_and_it_never_starts_again(
    boot: Boot,
) -> None:
    registry = await boot({"a": spec("--start-delay", "1"), "b": spec()})
    a = registry.require("a")
    queued = [asyncio.create_task(a.acquire()) for _ in range(5)]
    # An admission that was given up without cancelling its acquire leaves this behind.
    left_behind = asyncio.ensure_future(a.acquire())
    await wait_until(lambda: a.upstream is not None)  # launched, loading
    first = pid_of(a)

    result = await registry.reload(config({"b": spec()}))

    assert result.removed == ["a"]
    assert registry.get("a") is None
    for waiter in [*queued, left_behind]:
        with pytest.raises(ModelRetired) as caught:
            await asyncio.wait_for(waiter, 10)
        error = caught.value
        assert (error.status, error.code, error.type) == (
            404,
            "model_not_found",
            "invalid_request_error",
        )
        assert error.message == "Model 'a' was removed from the config."
    await wait_until(lambda: a.state is S.RETIRED)
    assert process_gone(first)
    assert a.status()["state"] == "retired"
    await asyncio.sleep(1.2)  # longer than a start would take
    assert state(a) is S.RETIRED
    assert a.starts == 1
    assert not live_upstreams("a")
    with pytest.raises(ModelRetired):
        await a.start()


async def test_shutdown_answers_waiters_503_and_retires_every_model(boot: Boot) -> None:
    registry = await boot({"slow": spec("--start-delay", "1"), "up": spec()})
    slow, up = registry.require("slow"), registry.require("up")
    await up.start()
    queued = [asyncio.create_task(slow.acquire()) for _ in range(3)]
    await wait_until(lambda: slow.upstream is not None)

    await asyncio.wait_for(registry.shutdown(), 20)

    for waiter in queued:
        with pytest.raises(ModelRetired) as caught:
            await waiter
        error = caught.value
        assert (error.status, error.code, error.type) == (503, "shutting_down", "server_error")
        assert error.message == "modelberth is shutting down."
    assert state(slow) is S.RETIRED
    assert state(up) is S.RETIRED
    assert not live_upstreams()
    with pytest.raises(ModelRetired):
        await up.acquire()
    await asyncio.gather(up.start_soon(), return_exceptions=True)
    assert state(up) is S.RETIRED and up.upstream is None


async def test_a_removed_model_is_not_restarted_by_a_pending_reconfigure_or_start_soon(
    boot: Boot,
) -> None:
    registry = await boot({"a": spec()})
    a = registry.require("a")
    await a.acquire()  # a request holds it: the changes below wait for it
    first = pid_of(a)
    changed = await registry.reload(config({"a": spec("--chunks", "3")}))
    assert changed.restarted == ["a"]
    await asyncio.sleep(0.05)
    removed = await registry.reload(config({}))  # removed while the restart waits
    assert removed.removed == ["a"]
    started = a.start_soon()  # an admin start that resolved the name before the reload

    a.release()

    with pytest.raises(ModelRetired):
        await asyncio.wait_for(started, 10)
    await wait_until(lambda: a.state is S.RETIRED)
    await asyncio.sleep(0.5)
    assert state(a) is S.RETIRED
    assert a.upstream is None
    assert a.starts == 1
    assert process_gone(first)
    assert not live_upstreams()


async def test_retire_stops_a_model_even_while_an_idle_stop_is_pending(boot: Boot) -> None:
    registry = await boot({"a": spec()})
    a = registry.require("a")
    await a.start()
    first = pid_of(a)
    assert a.try_enter()  # the idle stop below will give up: a request is in flight
    idle = asyncio.ensure_future(a.stop("idle", only_if_idle=True))
    await asyncio.sleep(0)
    retiring = asyncio.ensure_future(registry.shutdown())
    await asyncio.sleep(0.2)
    assert idle.done()
    assert state(a) is S.STOPPING  # draining the request
    a.release()
    await asyncio.wait_for(retiring, 10)
    assert state(a) is S.RETIRED
    assert process_gone(first)


# --- 2. a retiring model stays budgeted; a re-added one is its own entry ----------------------


async def test_a_model_re_added_while_the_old_one_drains_is_distinct_and_both_are_budgeted(
    boot: Boot,
) -> None:
    budget = {"resources": {"memory_budget_mb": 250}}
    registry = await boot({"a": spec(memory_mb=150)}, **budget)
    old = registry.require("a")
    await old.acquire()
    old_pid = pid_of(old)
    await registry.reload(config({}, **budget))
    await registry.reload(config({"a": spec("--chunks", "3", memory_mb=150)}, **budget))
    new = registry.require("a")
    assert new is not old
    await wait_until(lambda: state(old) is S.STOPPING)  # draining the request it holds

    starting = asyncio.create_task(new.acquire())
    await asyncio.sleep(0.5)
    # 150 + 150 MiB do not fit in 250: the new entry waits for the old one to stop.
    assert not starting.done()
    assert state(new) is S.STARTING
    assert new.upstream is None
    assert new.starts == 0
    assert registry.scheduler.admitted() == [old]

    old.release()
    await asyncio.wait_for(starting, 20)
    assert state(old) is S.RETIRED
    assert process_gone(old_pid)
    assert registry.scheduler.admitted() == [new]
    assert new.ready
    assert pid_of(new) != old_pid
    assert registry.require("a") is new
    new.release()


# --- 3. a stop joined onto an "only if idle" stop still stops -------------------------------


async def test_stop_and_restart_joined_onto_an_idle_stop_that_gives_up_still_act(
    boot: Boot,
) -> None:
    registry = await boot({"a": spec(drain_timeout=10)})
    a = registry.require("a")
    await a.start()
    first = pid_of(a)
    assert a.try_enter()  # a request arrived: the idle stop gives up
    both = asyncio.gather(a.stop("idle", only_if_idle=True), a.restart())
    await asyncio.sleep(0.2)
    assert state(a) is S.STOPPING  # the restart's stop drains the request
    a.release()
    await asyncio.wait_for(both, 10)
    assert a.ready
    assert pid_of(a) != first
    assert process_gone(first)

    second = pid_of(a)
    assert a.try_enter()
    both = asyncio.gather(a.stop("idle", only_if_idle=True), a.stop("requested"))
    await asyncio.sleep(0.2)
    assert state(a) is S.STOPPING
    a.release()
    await asyncio.wait_for(both, 10)
    assert state(a) is S.STOPPED
    assert process_gone(second)


# --- 4. cancelled acquires leave nothing behind ----------------------------------------------


async def test_cancelled_acquires_leave_no_trace_and_the_idle_timer_still_fires(
    boot: Boot,
) -> None:
    registry = await boot(
        {"m": spec("--start-delay", "0.5", max_concurrency=2, idle_timeout=0.5, max_queue=100)}
    )
    m = registry.require("m")

    # While the model starts: cancelled at once, while it loads, and the moment it is ready.
    tasks = [asyncio.create_task(m.acquire()) for _ in range(30)]

    def cancel_at_ready(event: StateEvent) -> None:
        if event.model == "m" and event.new is S.READY:
            for task in tasks[20:]:
                task.cancel()

    registry.events.add_listener(cancel_at_ready)
    await asyncio.sleep(0)
    for task in tasks[:10]:
        task.cancel()
    await wait_until(lambda: m.upstream is not None)
    for task in tasks[10:20]:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert all(task.cancelled() for task in tasks)
    await wait_until(lambda: m.ready)
    assert (m.in_flight, m.waiting) == (0, 0)
    # Nobody used the model it started: the idle timer must still stop it.
    await wait_until(lambda: m.state is S.STOPPED, timeout=3)

    # While waiting for a slot (max_concurrency=2).
    await m.acquire()
    await m.acquire()
    waiters = [asyncio.create_task(m.acquire()) for _ in range(10)]
    await asyncio.sleep(0.05)
    assert m.waiting == 10
    for task in waiters[:4]:
        task.cancel()
    m.release()  # wakes the waiters; some are cancelled in the same turn
    for task in waiters[4:7]:
        task.cancel()
    await asyncio.sleep(0.05)
    entered = [t for t in waiters if t.done() and not t.cancelled()]
    assert len(entered) == 1
    assert m.in_flight == 2
    for task in waiters:
        task.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    assert m.waiting == 0
    m.release()
    m.release()
    assert (m.in_flight, m.waiting) == (0, 0)
    await wait_until(lambda: m.state is S.STOPPED, timeout=3)

    # While waiting for a stop to finish (it drains a request first).
    await m.acquire()
    stopping = asyncio.create_task(m.stop())
    await wait_until(lambda: m.state is S.STOPPING)
    behind = [asyncio.create_task(m.acquire()) for _ in range(5)]
    await asyncio.sleep(0.05)
    assert m.waiting == 5
    for task in behind:
        task.cancel()
    await asyncio.gather(*behind, return_exceptions=True)
    m.release()
    await stopping
    await asyncio.sleep(0.1)
    assert state(m) is S.STOPPED  # nobody is left to start it again
    assert (m.in_flight, m.waiting) == (0, 0)


# --- 5. the idle timer runs on the monotonic clock ------------------------------------------


async def test_idle_timeout_ignores_wall_clock_jumps(
    boot: Boot, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = await boot({"fast": spec(idle_timeout=0.5), "slow": spec(idle_timeout=30)})
    fast, slow = registry.require("fast"), registry.require("slow")
    real = time.time

    await slow.acquire()
    slow.release()
    monkeypatch.setattr(time, "time", lambda: real() + 3600)  # the wall clock jumps ahead
    await asyncio.sleep(0.3)
    assert slow.ready  # 0.3 s idle, not an hour

    await fast.acquire()
    fast.release()
    monkeypatch.setattr(time, "time", lambda: real() - 3600)  # and back, behind
    await wait_until(lambda: fast.state is S.STOPPED, timeout=3)
    monkeypatch.setattr(time, "time", real)


# --- 6. a start that times out answers at start_timeout --------------------------------------


async def test_a_start_timeout_answers_at_start_timeout_and_the_kill_finishes_behind(
    boot: Boot,
) -> None:
    registry = await boot(
        {"stuck": spec("--start-delay", "30", "--ignore-sigterm", start_timeout=1, stop_timeout=3)}
    )
    stuck = registry.require("stuck")
    began = time.monotonic()
    with pytest.raises(StartTimeout):
        await stuck.acquire()
    assert time.monotonic() - began < 1.9
    assert state(stuck) is S.FAILED
    (proc,) = live_upstreams("stuck")  # it ignores SIGTERM: the kill is still under way
    began = time.monotonic()
    await asyncio.wait_for(registry.shutdown(), 10)  # waits for it
    assert state(stuck) is S.RETIRED
    assert process_gone(proc.pid)
    assert time.monotonic() - began < 4


# --- 7. hung upstreams ------------------------------------------------------------------------


async def test_an_upstream_that_times_out_again_and_again_is_replaced(boot: Boot) -> None:
    registry = await boot({"m": spec(stop_timeout=0.5, max_timeouts=3)})
    m = registry.require("m")
    await m.start()
    first = pid_of(m)
    seen: list[StateEvent] = []
    registry.events.add_listener(seen.append)
    try:
        m.upstream_timed_out("no first byte within 600s")
        m.upstream_timed_out("no first byte within 600s")
        m.upstream_answered()  # an answer in between: not in a row
        m.upstream_timed_out("no first byte within 600s")
        m.upstream_timed_out("no first byte within 600s")
        assert m.ready
        assert pid_of(m) == first

        os.kill(first, signal.SIGSTOP)  # hung
        m.upstream_timed_out("stream stalled for 120s")
        reason = "3 upstream timeouts in a row (last: stream stalled for 120s)"
        assert [(e.old, e.new, e.reason) for e in seen] == [
            (S.READY, S.FAILED, reason),
            (S.FAILED, S.STARTING, "start"),
        ]
        assert m.last_error is not None
        assert m.last_error.startswith(reason)
        assert m.status()["failures"] == 1
        await wait_until(lambda: m.ready, timeout=10)
        assert pid_of(m) != first
        assert process_gone(first)
        await m.acquire()  # a fresh upstream for later requests
        m.release()
    finally:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(first, sig)


# --- 8. confirm_exit after a crash ------------------------------------------------------------


async def test_confirm_exit_is_true_at_once_when_the_exit_is_known(boot: Boot) -> None:
    registry = await boot({"m": spec("--start-delay", "0.5")})
    m = registry.require("m")
    await m.start()
    began = time.monotonic()
    assert not await m.confirm_exit(0.3)  # alive: no
    assert time.monotonic() - began >= 0.25

    os.kill(pid_of(m), signal.SIGKILL)
    assert await m.confirm_exit(2.0)  # exits while it waits
    assert state(m) is S.FAILED
    assert await m.confirm_exit(2.0)  # the watcher already recorded it

    starting = m.start_soon()
    await wait_until(lambda: m.upstream is not None)  # a new upstream loads
    assert state(m) is S.STARTING
    began = time.monotonic()
    assert await m.confirm_exit(2.0)
    assert time.monotonic() - began < 0.2
    await starting
    assert not await m.confirm_exit(0.1)
