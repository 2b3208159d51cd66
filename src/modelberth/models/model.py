"""One model, as the rest of modelberth sees it: its requests, and waiting for it to be ready.

A Model owns two things, and writes neither's fields itself:

- its requests (admission.py): how many are in flight, how many wait, when it was last
  used. Only the Model counts them in and out (`try_enter`, `acquire`, `release`); the
  queue is bounded by max_queue (QueueFull) and the in-flight count by max_concurrency.
- its `Lifecycle` (lifecycle.py): the state machine, the upstream, the one start, stop or
  retirement at a time. The state changes only there, in `Lifecycle._transition`.

What waits for the model to be ready lives here, on top of the lifecycle's one step towards
it (`Lifecycle.ensure_started`): a request (`acquire`, `await_ready`), a start asked for by
hand (`start`, `start_soon`) and the restarts (`restart`, after a reconfigure, after too
many upstream timeouts). The rest is a facade: the lifecycle's fields read through
properties, its operations called through methods, so callers (registry, scheduler,
resources, proxy, API, telemetry) see one object. The memory samples (footprint.py) are the
Model's too, written by resources.Monitor through `record_usage`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
from opentelemetry.trace import Tracer

from modelberth.config import ModelSpec
from modelberth.errors import QueueFull
from modelberth.models.admission import Admission
from modelberth.models.events import EventBus
from modelberth.models.footprint import Footprint
from modelberth.models.lifecycle import Lifecycle
from modelberth.models.placement import Placement
from modelberth.models.progress import Progress
from modelberth.models.state import ModelState, RetireReason
from modelberth.models.tasks import swallow_outcome
from modelberth.runtimes.base import Node, Runtime, Upstream
from modelberth.runtimes.logbuffer import LogBuffer


class Model:
    def __init__(
        self,
        spec: ModelSpec,
        runtime: Runtime,
        events: EventBus,
        http: aiohttp.ClientSession,
        tracer: Tracer | None = None,
    ) -> None:
        self._requests = Admission()
        self._lifecycle = Lifecycle(spec, runtime, events, http, tracer, self._requests)
        self._footprint = Footprint()  # sampled by resources.Monitor
        self._idle_listeners: list[Callable[[Model], None]] = []  # told when in_flight hits 0

    def connect(
        self,
        admit: Callable[[Model], Awaitable[Placement]],
        on_idle: Callable[[Model], None],
        on_state: Callable[[Model], None],
    ) -> None:
        """The scheduler's hooks: `admit` gates every start (room in the budgets) and says
        where it runs, `on_idle` hears when the last request in flight finished,
        `on_state` every state change."""
        # The lifecycle does not know the Model: it gets the hooks bound to it.
        self._lifecycle.connect(lambda: admit(self), lambda: on_state(self))
        self._idle_listeners.append(on_idle)

    # --- the lifecycle's fields, read-only --------------------------------------------

    @property
    def spec(self) -> ModelSpec:
        return self._lifecycle.spec

    @property
    def name(self) -> str:
        return self._lifecycle.spec.name

    @property
    def logs(self) -> LogBuffer:
        return self._lifecycle.logs

    @property
    def state(self) -> ModelState:
        return self._lifecycle.state

    @property
    def ready(self) -> bool:
        return self._lifecycle.state is ModelState.READY

    @property
    def upstream(self) -> Upstream | None:
        return self._lifecycle.upstream

    @property
    def holds_upstream(self) -> bool:
        """Whether an upstream of this model may still be alive (running, or being stopped)."""
        return self._lifecycle.holds_upstream

    @property
    def stopping_upstreams(self) -> list[Upstream]:
        """Upstreams let go of and still being stopped (the scheduler counts them)."""
        return self._lifecycle.stopping_upstreams

    @property
    def port(self) -> int | None:
        return self._lifecycle.port

    @property
    def base_url(self) -> str:
        return self._lifecycle.base_url

    @property
    def started_at(self) -> float | None:
        return self._lifecycle.started_at

    @property
    def last_error(self) -> str | None:
        return self._lifecycle.last_error

    @property
    def starts(self) -> int:
        return self._lifecycle.starts

    @property
    def progress(self) -> Progress | None:
        """How far the start under way has come (progress.py); None unless starting."""
        progress = self._lifecycle.progress
        if progress is None or self._lifecycle.state is not ModelState.STARTING:
            return None
        return progress.snapshot()

    @property
    def retiring(self) -> bool:
        """retire() was called: the model never starts again."""
        return self._lifecycle.retiring

    @property
    def failures(self) -> int:
        """Failed starts or crashes in a row."""
        return self._lifecycle.failures

    def backoff_remaining(self) -> float:
        return self._lifecycle.backoff_remaining()

    # --- memory ------------------------------------------------------------------------

    def record_usage(self, memory: int | None, vram: int | None, peak: bool = True) -> None:
        self._footprint.record(memory, vram, peak)

    def learn(self, memory: int | None, vram: int | None, start_seconds: tuple[float, ...]) -> None:
        """What an earlier run of modelberth measured (learned.py), before any start."""
        self._footprint.peak_memory_bytes = memory
        self._footprint.peak_vram_bytes = vram
        self._lifecycle.start_seconds = list(start_seconds)

    @property
    def gpus(self) -> tuple[int, ...] | None:
        """The GPUs its upstream runs on (None: no GPU, `all`, or not running)."""
        return self._lifecycle.gpus

    @property
    def node(self) -> Node | None:
        """The node its upstream runs on (None: this machine, or not running)."""
        return self._lifecycle.node

    @property
    def host(self) -> str:
        """Where its upstream is reached."""
        return self._lifecycle.host

    @property
    def start_seconds(self) -> list[float]:
        """How long its last few successful starts took, oldest first."""
        return self._lifecycle.start_seconds

    @property
    def memory_bytes(self) -> int | None:
        return self._footprint.memory_bytes

    @property
    def vram_bytes(self) -> int | None:
        return self._footprint.vram_bytes

    @property
    def peak_memory_bytes(self) -> int | None:
        return self._footprint.peak_memory_bytes

    @property
    def peak_vram_bytes(self) -> int | None:
        return self._footprint.peak_vram_bytes

    # --- requests ----------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return self._requests.in_flight

    @property
    def waiting(self) -> int:
        return self._requests.waiting

    @property
    def last_used_at(self) -> float | None:
        return self._requests.last_used_at

    def idle_seconds(self) -> float:
        """Seconds since the model was last used (or became ready), on the monotonic clock."""
        return self._requests.idle_seconds()

    def idle_seconds_left(self) -> float | None:
        """Seconds before the idle timer stops the model: counting down while it is ready
        and unused, the whole idle_timeout while requests are in flight (the count starts
        when the last one ends); None when it is not ready or never stops when idle (a
        request's keep_alive counts: see `keep_alive`)."""
        timeout = self._lifecycle.idle.limit()
        if self.state is not ModelState.READY or timeout is None:
            return None
        if self.in_flight:
            return timeout
        return max(0.0, timeout - self.idle_seconds())

    def keep_alive(self, seconds: float | None) -> None:
        """A request's word on how long the model stays up once idle (Ollama's keep_alive),
        instead of idle_timeout: 0 stops it as soon as the requests in flight are answered
        (a stop that gives way to a request arriving meanwhile), math.inf never idle-stops
        it, N idle-stops it after N seconds; None goes back to idle_timeout. It holds for
        the upstream running now, until the next keep_alive: a restart clears it. A remote
        endpoint, which is never stopped, ignores it."""
        if self._lifecycle.spec.remote is None:
            self._lifecycle.idle.keep_alive(seconds)

    def try_enter(self) -> bool:
        """Count one request in flight if the model is ready and has a free slot now."""
        lifecycle = self._lifecycle
        if lifecycle.state is ModelState.READY and not self._requests.saturated(
            lifecycle.spec.max_concurrency
        ):
            self._requests.enter()
            return True
        return False

    async def acquire(self) -> None:
        """Make the model ready (starting it if needed) and count one request in flight.
        Beyond max_concurrency, requests wait here too (within max_queue)."""
        if self.try_enter():
            return
        lifecycle, requests = self._lifecycle, self._requests
        lifecycle.check_retired()
        if requests.waiting >= lifecycle.spec.max_queue:
            raise QueueFull(self.name, lifecycle.spec.max_queue, self._retry_after())
        # Cancelled at any await below, it leaves nothing behind: in_flight only changes in
        # the synchronous enter() after the last await, and `waiting` is restored.
        requests.join_queue()
        try:
            while True:
                lifecycle.check_retired()
                if not self.ready:
                    await lifecycle.ensure_started()
                elif requests.saturated(lifecycle.spec.max_concurrency):
                    await requests.slot()
                else:
                    break
            requests.enter()
        finally:
            requests.leave_queue()

    async def await_ready(self) -> None:
        """For a request already counted in flight: wait until the model is ready again."""
        while not self.ready:
            self._lifecycle.check_retired()
            await self._lifecycle.ensure_started()

    def release(self) -> None:
        if self._requests.leave():
            self._lifecycle.idle.arm()
            for listener in self._idle_listeners:
                listener(self)

    @contextlib.asynccontextmanager
    async def use(self) -> AsyncIterator[Model]:
        await self.acquire()
        try:
            yield self
        finally:
            self.release()

    def _retry_after(self) -> int:
        return max(1, int(self._lifecycle.spec.start_timeout / 4))

    # --- what requests tell of the upstream --------------------------------------------

    async def confirm_exit(self, timeout: float) -> bool:
        """After a refused connection: True once the upstream is known to have exited (at
        once if it already has, or if the model is no longer ready, e.g. starting a new
        upstream after the crash); False if it is still alive after `timeout`, and at once
        for a remote endpoint: no restart of ours will bring it back."""
        if self._lifecycle.spec.remote is not None:
            return False
        upstream = self._lifecycle.upstream
        if self.state not in (ModelState.READY, ModelState.STOPPING) or upstream is None:
            return True
        status = upstream.exited()
        if status is None:
            try:
                status = await asyncio.wait_for(upstream.wait(), timeout)
            except TimeoutError:
                return upstream is not self._lifecycle.upstream  # replaced meanwhile
        self._lifecycle.note_exit(upstream, status)  # now, not when the exit watcher does
        return True

    def upstream_answered(self) -> None:
        """The upstream answered a request in time (called on every success: keep trivial)."""
        self._lifecycle.upstream_answered()

    def upstream_timed_out(self, reason: str) -> None:
        """A request to the upstream timed out; after max_timeouts in a row the model fails
        and a fresh upstream starts (Lifecycle.upstream_timed_out)."""
        if self._lifecycle.upstream_timed_out(reason):
            self.start_soon()

    # --- management --------------------------------------------------------------------

    async def start(self) -> None:
        """Start (or join a start in progress) and wait until ready; raise if it fails.
        A start asked for by hand does not wait for the crash back-off."""
        while not self.ready:
            self._lifecycle.check_retired()
            await self._lifecycle.ensure_started(force=True)
        self._requests.touch()
        self._lifecycle.idle.arm()

    def start_soon(self) -> asyncio.Task[None]:
        """Begin starting now (the state shows `starting` at once); finish in the background.
        On a retired model the task fails with ModelRetired and nothing starts."""
        self._lifecycle.begin_start_soon()
        task = asyncio.create_task(self.start())
        task.add_done_callback(swallow_outcome)
        return task

    async def stop(self, reason: str = "requested", *, only_if_idle: bool = False) -> None:
        """See Lifecycle.stop: after the requests in flight; only_if_idle may give up."""
        await self._lifecycle.stop(reason, only_if_idle=only_if_idle)

    async def sleep(self, reason: str = "requested") -> bool:
        """Put the model to sleep (vLLM's sleep mode, models with `sleep`), if it is ready and
        idle (nothing in flight or queued), or join the sleep in progress. Whether it is
        asleep now: False if it cannot sleep, is not ready, a request came first, it is
        waking, or the sleep call failed (then it is FAILED, its upstream being killed).
        Asleep it keeps its upstream (holds_upstream) but not its VRAM; at level 1 its
        weights are in host RAM. The next request wakes it (WAKING: admitted again)."""
        return await self._lifecycle.sleep(reason)

    async def retire(self, reason: RetireReason) -> None:
        """Stop for good; every waiter gets ModelRetired at once (see Lifecycle.retire)."""
        await self._lifecycle.retire(reason)

    async def restart(self) -> None:
        await self.stop("restart")
        await self.start()

    def update_settings(self, spec: ModelSpec) -> None:
        """Take settings that do not change how the upstream runs (same config hash)."""
        self._lifecycle.update_settings(spec)

    def reconfigure(self, spec: ModelSpec, runtime: Runtime) -> bool:
        """Take new settings that change how the upstream runs. A running model restarts
        (in the background, after its in-flight requests); returns whether it will."""
        running = self._lifecycle.reconfigure(spec, runtime)
        if running:
            task = asyncio.create_task(self._restart_for_config())
            task.add_done_callback(swallow_outcome)
        return running

    async def _restart_for_config(self) -> None:
        await self.stop("config changed")
        await self.start()

    async def adopt(self, upstream: Upstream, port: int) -> bool:
        """Take over an upstream an earlier run started, if it still answers health."""
        return await self._lifecycle.adopt(upstream, port)

    def status(self) -> dict[str, Any]:
        lifecycle = self._lifecycle
        upstream = lifecycle.upstream
        spec = lifecycle.spec
        return {
            "name": self.name,
            "state": lifecycle.state.value,
            "runtime": spec.runtime,
            "base_url": spec.remote.base_url if spec.remote else None,
            "runtime_id": upstream.runtime_id if upstream else None,
            "port": lifecycle.port if upstream else None,
            # Where it runs, on a multi-node runtime (None: this machine, or not running).
            "node": {
                "id": lifecycle.node.id,
                "name": lifecycle.node.name,
                "address": lifecycle.node.address,
            }
            if upstream and lifecycle.node is not None
            else None,
            "constraints": list(spec.constraints),
            "aliases": list(spec.aliases),
            "fallbacks": list(spec.fallbacks),
            "started_at": lifecycle.started_at,
            "last_used_at": self.last_used_at,
            "in_flight": self.in_flight,
            "queue": self.waiting,
            "memory_bytes": self.memory_bytes if upstream else None,
            "vram_bytes": self.vram_bytes if upstream else None,
            "pinned": spec.pinned,
            "preload": spec.preload,
            "sleep_level": spec.sleep_level,
            "sleeps": lifecycle.sleep_mode.sleeps,
            "wakes": lifecycle.sleep_mode.wakes,
            # The indexes it was given, while it runs; else the config's fixed list, if any.
            "gpus": list(lifecycle.gpus)
            if upstream and lifecycle.gpus is not None
            else list(spec.gpus)
            if isinstance(spec.gpus, tuple)
            else None,
            "gpu_request": list(spec.gpus)
            if isinstance(spec.gpus, tuple)
            else spec.gpus
            or (
                "auto"
                if spec.gpu_count == 1
                else {"count": spec.gpu_count}
                if spec.gpu_count
                else None
            ),
            "last_error": lifecycle.last_error,
            "idle_timeout": spec.idle_timeout,
            "idle_stop_at": lifecycle.idle.stop_at(),
            "starts": lifecycle.starts,
            "progress": progress.as_dict() if (progress := self.progress) else None,
            "failures": lifecycle.failures,
            "retry_in": round(lifecycle.backoff_remaining(), 3) or None,
        }
