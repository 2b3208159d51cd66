"""One state machine per model: start on demand, health, in-flight count, idle TTL, stop.

Every state change goes through `Model._transition`, which compares the state with the one
its caller expected, checks `state.TRANSITIONS` and
publishes a StateEvent. Only the Model's own coroutines change its fields; callers use
`acquire`/`release`, `start`, `stop`, `retire` and `status`.

Every upstream a model launches is stopped by a task the model owns (`_stop_in_background`):
a stop never lets a cancellation cut an upstream's kill short, a failed start answers its
waiters without waiting for the kill, and nothing starts, stops or retires for good before
those kills have finished. RETIRED is final: a retired model never launches again.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import aiohttp
from loguru import logger
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode, Tracer

from modelberth.config import ModelSpec
from modelberth.errors import QueueFull, StartFailed, StartTimeout
from modelberth.models.admission import Admission
from modelberth.models.events import EventBus
from modelberth.models.health import Readiness, probe, wait_healthy
from modelberth.models.state import (
    IDLE,
    ModelRetired,
    ModelState,
    RetireReason,
    StateEvent,
    check_transition,
)
from modelberth.runtimes.base import ExitStatus, Runtime, RuntimeStartError, Upstream
from modelberth.runtimes.logbuffer import LogBuffer

_LOG_TAIL = 15
# After repeated failures a model waits before the next automatic start: 1 s after the second
# failure in a row, doubling up to a minute. Manual starts do not wait.
_BACKOFF_BASE = 1.0
_BACKOFF_MAX = 60.0
_RUNNING = frozenset({ModelState.STARTING, ModelState.READY})


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class Model:
    def __init__(self, spec: ModelSpec, runtime: Runtime, events: EventBus,
                 http: aiohttp.ClientSession, tracer: Tracer | None = None) -> None:
        self.spec = spec
        self._tracer = tracer or trace.NoOpTracer()
        self.logs = LogBuffer()
        self._runtime = runtime
        self._events = events
        self._http = http
        self.state = ModelState.STOPPED
        self.port: int | None = None
        self.started_at: float | None = None
        self._requests = Admission()
        self.last_error: str | None = None
        self.starts = 0
        self.failures = 0  # consecutive failed starts or crashes
        self._failed_at = 0.0
        # Sampled by resources.Monitor; the peaks are what the model really costs.
        self.memory_bytes: int | None = None
        self.vram_bytes: int | None = None
        self.peak_memory_bytes: int | None = None
        self.peak_vram_bytes: int | None = None
        self._admit: Callable[[Model], Awaitable[None]] | None = None  # the scheduler's gate
        self._idle_listeners: list[Callable[[Model], None]] = []  # told when in_flight hits 0
        # Told after every state change, and when an upstream stopped in the background is
        # gone (the scheduler counts a model's memory until then).
        self._state_listeners: list[Callable[[Model], None]] = []
        self._upstream: Upstream | None = None
        self._start_task: asyncio.Task[None] | None = None
        self._stop_task: asyncio.Task[None] | None = None
        self._stop_only_if_idle = False  # whether _stop_task may give up
        self._watch_task: asyncio.Task[None] | None = None
        self._idle_task: asyncio.Task[None] | None = None
        self._kills: set[asyncio.Task[None]] = set()  # upstreams being stopped
        self._retired: ModelRetired | None = None  # set the moment retire() is called
        self._retired_future: asyncio.Future[None] | None = None  # done once retiring
        self._retire_task: asyncio.Task[None] | None = None
        self._timeouts = 0  # upstream timeouts in a row

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def upstream(self) -> Upstream | None:
        return self._upstream

    @property
    def holds_upstream(self) -> bool:
        """Whether an upstream of this model may still be alive (running, or being stopped)."""
        return self._upstream is not None or bool(self._kills)

    def idle_seconds(self) -> float:
        """Seconds since the model was last used (or became ready), on the monotonic clock."""
        return self._requests.idle_seconds()

    @property
    def retiring(self) -> bool:
        """retire() was called: the model never starts again."""
        return self._retired is not None

    def record_usage(self, memory: int | None, vram: int | None) -> None:
        self.memory_bytes, self.vram_bytes = memory, vram
        if memory and memory > (self.peak_memory_bytes or 0):
            self.peak_memory_bytes = memory
        if vram and vram > (self.peak_vram_bytes or 0):
            self.peak_vram_bytes = vram

    def connect(self, admit: Callable[[Model], Awaitable[None]],
                on_idle: Callable[[Model], None], on_state: Callable[[Model], None]) -> None:
        """The scheduler's hooks: `admit` gates every start (room in the budgets), `on_idle`
        hears when the last request in flight finished, `on_state` every state change."""
        self._admit = admit
        self._idle_listeners.append(on_idle)
        self._state_listeners.append(on_state)

    def update_settings(self, spec: ModelSpec) -> None:
        """Take settings that do not change how the upstream runs (aliases, timeouts, queue
        size...): same config hash, no restart."""
        if spec.config_hash() != self.spec.config_hash():
            raise ValueError(f"{self.name}: a new config hash needs reconfigure()")
        self.spec = spec

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- requests ----------------------------------------------------------------------

    def try_enter(self) -> bool:
        """Count one request in flight if the model is ready and has a free slot now."""
        if self.state is ModelState.READY and not self._requests.saturated(
                self.spec.max_concurrency):
            self._requests.enter()
            return True
        return False

    async def acquire(self) -> None:
        """Make the model ready (starting it if needed) and count one request in flight.
        Beyond max_concurrency, requests wait here too (within max_queue)."""
        if self.try_enter():
            return
        self._check_retired()
        requests = self._requests
        if requests.waiting >= self.spec.max_queue:
            raise QueueFull(self.name, self.spec.max_queue, self._retry_after())
        # Cancelled at any await below, it leaves nothing behind: in_flight only changes in
        # the synchronous enter() after the last await, and `waiting` is restored.
        requests.waiting += 1
        try:
            while True:
                self._check_retired()
                if not self.ready:
                    await self._ensure_started()
                elif requests.saturated(self.spec.max_concurrency):
                    await requests.slot()
                else:
                    break
            requests.enter()
        finally:
            requests.waiting -= 1

    @property
    def in_flight(self) -> int:
        return self._requests.in_flight

    @property
    def waiting(self) -> int:
        return self._requests.waiting

    @property
    def last_used_at(self) -> float | None:
        return self._requests.last_used_at

    async def await_ready(self) -> None:
        """For a request already counted in flight: wait until the model is ready again."""
        while not self.ready:
            self._check_retired()
            await self._ensure_started()

    async def confirm_exit(self, timeout: float) -> bool:
        """After a refused connection: True once the upstream is known to have exited (at
        once if it already has, or if the model is no longer ready, e.g. starting a new
        upstream after the crash); False if it is still alive after `timeout`."""
        upstream = self._upstream
        if self.state not in (ModelState.READY, ModelState.STOPPING) or upstream is None:
            return True
        status = upstream.exited()
        if status is None:
            try:
                status = await asyncio.wait_for(upstream.wait(), timeout)
            except TimeoutError:
                return upstream is not self._upstream  # replaced meanwhile
        self._note_exit(upstream, status)  # now, not when the exit watcher gets to it
        return True

    def upstream_answered(self) -> None:
        """The upstream answered a request in time (called on every success: keep trivial)."""
        self._timeouts = 0

    def upstream_timed_out(self, reason: str) -> None:
        """A request to the upstream timed out (no first byte, a stalled stream). After
        `max_timeouts` in a row the upstream is taken as hung: the model is marked failed,
        the upstream killed in the background and a fresh one started."""
        self._timeouts += 1
        if self._timeouts < self.spec.max_timeouts or self.state is not ModelState.READY:
            return
        count, self._timeouts = self._timeouts, 0
        upstream, self._upstream = self._upstream, None
        if upstream is not None:
            self._stop_in_background(upstream)  # counted by the scheduler until it is gone
        self._fail(f"{count} upstream timeouts in a row (last: {reason})")
        if self._retired is None and self._stop_task is None:
            self.start_soon()

    def release(self) -> None:
        if self._requests.leave():
            self._arm_idle_timer()
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
        return max(1, int(self.spec.start_timeout / 4))

    # --- management --------------------------------------------------------------------

    async def start(self) -> None:
        """Start (or join a start in progress) and wait until ready; raise if it fails.
        A start asked for by hand does not wait for the crash back-off."""
        while not self.ready:
            self._check_retired()
            await self._ensure_started(force=True)
        self._requests.touch()
        self._arm_idle_timer()

    def start_soon(self) -> asyncio.Task[None]:
        """Begin starting now (the state shows `starting` at once); finish in the background.
        On a retired model the task fails with ModelRetired and nothing starts."""
        if self._retired is None and self._stop_task is None \
                and self.state in (ModelState.STOPPED, ModelState.FAILED):
            self._begin_start()
        task = asyncio.create_task(self.start())
        task.add_done_callback(swallow_outcome)
        return task

    async def stop(self, reason: str = "requested", *, only_if_idle: bool = False) -> None:
        """Stop after in-flight requests finish (bounded by drain_timeout); idempotent. Once
        it returns (unless it gave up, see only_if_idle) no upstream of the model is left.

        With only_if_idle, give up if a request arrived before the stop could begin. A stop
        without it that finds such a stop in progress waits for it, then stops for real.
        """
        while True:
            task = self._stop_task
            if task is None:
                task = self._stop_task = asyncio.create_task(self._stop(reason, only_if_idle))
                self._stop_only_if_idle = only_if_idle
                await asyncio.shield(task)
                return
            joined_only_if_idle = self._stop_only_if_idle
            await asyncio.shield(task)
            if only_if_idle or not joined_only_if_idle:
                return

    async def retire(self, reason: RetireReason) -> None:
        """Stop for good (the model was removed from the config, or modelberth shuts down).

        At once: nothing can start the model any more, and every waiter (queued requests,
        starts, await_ready) gets ModelRetired. Then the upstream stops (after in-flight
        requests, bounded by drain_timeout), every background kill is awaited, and the model
        ends RETIRED. Idempotent; the first reason is the one kept.
        """
        if self._retire_task is None:
            self._retired = ModelRetired(self.name, reason)
            if self._retired_future is not None and not self._retired_future.done():
                self._retired_future.set_result(None)
            self._requests.wake_waiters()
            if self._idle_task is not None and self._idle_task is not asyncio.current_task():
                self._idle_task.cancel()
            self._retire_task = asyncio.create_task(self._retire(reason.value))
            self._retire_task.add_done_callback(swallow_outcome)
        await asyncio.shield(self._retire_task)

    async def _retire(self, reason: str) -> None:
        with self._tracer.start_as_current_span(
                "modelberth.model.retire",
                attributes={"modelberth.model": self.name, "modelberth.reason": reason}):
            while self.state is not ModelState.RETIRED:
                idle = self._start_task is None and self._stop_task is None
                if idle and self.state in (ModelState.STOPPED, ModelState.FAILED):
                    if not self._kills:
                        self._transition(IDLE, ModelState.RETIRED, reason)
                        continue
                    await self._settle_kills()
                else:
                    await self.stop(reason)

    def _check_retired(self) -> None:
        if self._retired is not None:
            raise self._retired

    def _retirement(self) -> asyncio.Future[None]:
        """A future done once retire() has been called."""
        if self._retired_future is None:
            self._retired_future = asyncio.get_running_loop().create_future()
            if self._retired is not None:
                self._retired_future.set_result(None)
        return self._retired_future

    async def _wait(self, future: asyncio.Future[None]) -> None:
        """Wait for `future` without ever cancelling it; ModelRetired as soon as the model
        is retired, whichever comes first."""
        await asyncio.wait((future, self._retirement()), return_when=asyncio.FIRST_COMPLETED)
        self._check_retired()

    async def restart(self) -> None:
        await self.stop("restart")
        await self.start()

    def reconfigure(self, spec: ModelSpec, runtime: Runtime) -> bool:
        """Take new settings that change how the upstream runs. A running model restarts
        (in the background, after its in-flight requests); returns whether it will."""
        running = self.state in (ModelState.STARTING, ModelState.READY)
        self.spec = spec
        self._runtime = runtime
        self.failures = 0  # a new config deserves a fresh try
        if running:
            task = asyncio.create_task(self._restart_for_config())
            task.add_done_callback(swallow_outcome)
        return running

    async def _restart_for_config(self) -> None:
        await self.stop("config changed")
        await self.start()

    async def adopt(self, upstream: Upstream, port: int) -> bool:
        """Take over an upstream an earlier run started, if it still answers health."""
        self.port = port
        healthy = await probe(self._http, f"{self.base_url}{self.spec.health_path}", 5.0)
        if not healthy or self._retired is not None or self.state is not ModelState.STOPPED:
            self._stop_in_background(upstream)
            await self._settle_kills()
            return False
        self._transition(ModelState.STOPPED, ModelState.STARTING, "adopt")
        self._upstream = upstream
        self.started_at = time.time()
        self._requests.touch()
        self._timeouts = 0
        self._transition(ModelState.STARTING, ModelState.READY, "adopted",
                         runtime_id=upstream.runtime_id)
        self._watch_task = asyncio.create_task(self._watch(upstream))
        self._arm_idle_timer()
        return True

    # --- starting ----------------------------------------------------------------------

    async def _ensure_started(self, force: bool = False) -> None:
        """One step towards ready: wait for a stop in progress, or for the (one) start. The
        caller loops; a retired model raises ModelRetired at once."""
        self._check_retired()
        if self._stop_task is not None:
            await self._wait(self._stop_task)
            return
        if self.state is ModelState.READY:
            return
        if not force and self.state is ModelState.FAILED and self._start_task is None:
            self._check_backoff()
        task = self._begin_start()
        await self._wait(task)
        if task.cancelled():
            return  # the start was called off by a stop: the caller loops and tries again
        task.result()  # the start's error, if it failed

    def backoff_remaining(self) -> float:
        if self.failures < 2:
            return 0.0
        delay = min(_BACKOFF_BASE * 2.0 ** (self.failures - 2), _BACKOFF_MAX)
        return max(0.0, self._failed_at + delay - time.monotonic())

    def _check_backoff(self) -> None:
        wait = self.backoff_remaining()
        if wait > 0:
            first_line = (self.last_error or "").splitlines()[0] if self.last_error else ""
            raise StartFailed(
                self.name,
                f"{self.failures} failures in a row, next try in {wait:.1f}s "
                f"(last: {first_line})",
                retry_after=max(1, round(wait)),
            )

    def _begin_start(self) -> asyncio.Task[None]:
        """The one start in progress, created (and STARTING entered) synchronously."""
        self._check_retired()
        if self._start_task is None:
            self._transition(IDLE, ModelState.STARTING, "start")
            self._start_task = asyncio.create_task(self._start())
            self._start_task.add_done_callback(swallow_outcome)
        return self._start_task

    async def _start(self) -> None:
        with self._tracer.start_as_current_span(
                "modelberth.model.start", attributes={"modelberth.model": self.name}) as span:
            try:
                await self._start_upstream()
            except BaseException as exc:
                span.set_status(Status(StatusCode.ERROR, str(exc)[:500]))
                if isinstance(exc, Exception) and self.state is ModelState.STARTING:
                    # Not a failure the start knew (those are FAILED already): never leave
                    # the model starting with nobody starting it.
                    upstream, self._upstream = self._upstream, None
                    if upstream is not None:
                        self._stop_in_background(upstream)
                    self._fail(f"start failed: {exc!r}")
                raise
            finally:
                self._start_task = None

    async def _start_upstream(self) -> None:
        await self._settle_kills()  # an earlier upstream still being killed goes first
        if self._admit is not None:
            try:
                await self._admit(self)
            except StartFailed as exc:
                self._fail(exc.reason)
                raise
        self.port = self.spec.fixed_port or free_port()
        began = time.monotonic()
        try:
            self._upstream = await self._launch(self.port)
        except RuntimeStartError as exc:
            self._fail(str(exc))
            raise StartFailed(self.name, str(exc)) from None
        self.starts += 1
        await self._await_health(self._upstream)
        self.started_at = time.time()
        self.last_error = None
        self.failures = 0
        self._timeouts = 0
        self._requests.touch()
        self._transition(ModelState.STARTING, ModelState.READY, "healthy",
                         start_seconds=round(time.monotonic() - began, 3))
        self._watch_task = asyncio.create_task(self._watch(self._upstream))
        self._arm_idle_timer()  # even if every request that asked for it has gone

    async def _launch(self, port: int) -> Upstream:
        """runtime.start, but a stop arriving meanwhile never leaves an upstream behind."""
        launch = asyncio.ensure_future(self._runtime.start(self.spec, port, self.logs))
        try:
            return await asyncio.shield(launch)
        except asyncio.CancelledError:
            self._own_kill(self._stop_when_launched(launch))
            raise

    async def _stop_when_launched(self, launch: asyncio.Future[Upstream]) -> None:
        try:
            upstream = await launch
        except Exception:
            return  # it never started
        await self._stop_quietly(upstream)

    async def _await_health(self, upstream: Upstream) -> None:
        """Wait for the health path to answer, failing the start if the upstream exits or
        start_timeout passes."""
        url = f"{self.base_url}{self.spec.health_path}"
        exited = asyncio.ensure_future(upstream.wait())

        def progress(elapsed: float) -> None:
            self._events.notify("start_progress", self.name, elapsed_seconds=round(elapsed, 1))

        try:
            readiness = await wait_healthy(self._http, url, self.spec.start_timeout,
                                           exited, progress)
        except asyncio.CancelledError:  # a stop called the start off
            if self._upstream is upstream:
                self._upstream = None
            self._stop_in_background(upstream)
            raise
        finally:
            exited.cancel()
        if readiness is Readiness.EXITED:
            reason = f"exited during start ({exited.result().describe()})"
            self._abort_start(upstream, reason)
            raise StartFailed(self.name, self._with_tail(reason))
        if readiness is Readiness.TIMED_OUT:
            reason = f"not healthy at {url}"
            self._abort_start(upstream, f"start timed out: {reason}")
            raise StartTimeout(self.name, self.spec.start_timeout, self._with_tail(reason))

    def _abort_start(self, upstream: Upstream, reason: str) -> None:
        """Fail the start now; the upstream is killed in the background (stop_timeout may be
        long, and the waiters are owed an answer at start_timeout)."""
        self._upstream = None
        self._stop_in_background(upstream)
        self._fail(reason)

    def _fail(self, reason: str) -> None:
        self.failures += 1
        self._failed_at = time.monotonic()
        self.started_at = None
        self.last_error = self._with_tail(reason)
        self._transition(_RUNNING, ModelState.FAILED, reason)

    def _with_tail(self, reason: str) -> str:
        tail = self.logs.tail_text(_LOG_TAIL)
        return f"{reason}; last log lines:\n{tail}" if tail else reason

    async def _watch(self, upstream: Upstream) -> None:
        self._note_exit(upstream, await upstream.wait())

    def _note_exit(self, upstream: Upstream, status: ExitStatus) -> None:
        """The upstream has exited: if it was serving, the model has failed (idempotent)."""
        if self._upstream is upstream and self.state is ModelState.READY:
            self._upstream = None
            self._stop_in_background(upstream)  # reaps it, and whatever it left in its group
            self._fail(f"upstream exited unexpectedly ({status.describe()})")

    # --- stopping upstreams (owned tasks) ------------------------------------------------

    def _stop_in_background(self, upstream: Upstream) -> None:
        self._own_kill(self._stop_quietly(upstream))

    def _own_kill(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._kills.add(task)
        task.add_done_callback(self._kill_done)

    def _kill_done(self, task: asyncio.Task[None]) -> None:
        self._kills.discard(task)
        swallow_outcome(task)
        if not self._kills:
            self._tell_state_listeners()

    async def _stop_quietly(self, upstream: Upstream) -> None:
        try:
            status = await upstream.stop(self.spec.stop_timeout)
        except Exception as exc:
            logger.bind(model=self.name).opt(exception=exc).warning(
                "{}: stopping upstream {} failed", self.name, upstream.runtime_id)
            return
        self.logs.append("modelberth", f"stopped ({status.describe()})")

    async def _settle_kills(self) -> None:
        """Wait (never cancelling them) until every upstream being stopped is gone."""
        while self._kills:
            await asyncio.wait(set(self._kills))

    # --- stopping ----------------------------------------------------------------------

    async def _stop(self, reason: str, only_if_idle: bool = False) -> None:
        name = "modelberth.model.evict" if reason.startswith("evicted") else \
            "modelberth.model.stop"
        with self._tracer.start_as_current_span(
                name, attributes={"modelberth.model": self.name, "modelberth.reason": reason}):
            await self._stop_upstream(reason, only_if_idle)

    async def _stop_upstream(self, reason: str, only_if_idle: bool) -> None:
        try:
            if only_if_idle and (self.in_flight or self.waiting):
                return
            if self._start_task is not None:
                self._start_task.cancel()
                with contextlib.suppress(BaseException):
                    await self._start_task
            if self.state is ModelState.FAILED:
                await self._settle_kills()
                self._transition(ModelState.FAILED, ModelState.STOPPED, reason)
                return
            if self.state not in (ModelState.STARTING, ModelState.READY):
                await self._settle_kills()
                return
            self._transition(_RUNNING, ModelState.STOPPING, reason)
            if self.in_flight:
                await self._requests.drained(self.spec.drain_timeout)
            upstream, self._upstream = self._upstream, None
            if upstream is not None:
                self._stop_in_background(upstream)
            await self._settle_kills()
            self.started_at = None
            self._transition(ModelState.STOPPING, ModelState.STOPPED, reason)
        finally:
            self._stop_task = None

    def _arm_idle_timer(self) -> None:
        if self.spec.idle_timeout <= 0 or self._retired is not None:
            return
        if self._idle_task is None or self._idle_task.done():
            self._idle_task = asyncio.create_task(self._idle_watch())

    async def _idle_watch(self) -> None:
        while self.state is ModelState.READY and self.in_flight == 0 and self._retired is None:
            idle_for = self.idle_seconds()  # never the wall clock: it can jump
            if idle_for >= self.spec.idle_timeout:
                logger.info("{}: idle for {:.1f}s, stopping", self.name, idle_for)
                await self.stop("idle", only_if_idle=True)
                return
            await asyncio.sleep(self.spec.idle_timeout - idle_for)

    # --- state -------------------------------------------------------------------------

    def _transition(self, expected: ModelState | frozenset[ModelState], new: ModelState,
                    reason: str, **detail: Any) -> None:
        """The one place the state changes: compare (`expected`, and the table), then set,
        then tell everyone (an event for logs, metrics and /api/events; the listeners)."""
        old = self.state
        check_transition(self.name, old, expected, new, reason)
        self.state = new
        if new is ModelState.FAILED and self.last_error:
            detail.setdefault("error", self.last_error)
        self._events.publish(StateEvent(self.name, old, new, reason, detail=detail))
        self._tell_state_listeners()

    def _tell_state_listeners(self) -> None:
        for listener in self._state_listeners:
            listener(self)

    def status(self) -> dict[str, Any]:
        upstream = self._upstream
        return {
            "name": self.name,
            "state": self.state.value,
            "runtime": self.spec.runtime,
            "runtime_id": upstream.runtime_id if upstream else None,
            "port": self.port if upstream else None,
            "aliases": list(self.spec.aliases),
            "started_at": self.started_at,
            "last_used_at": self.last_used_at,
            "in_flight": self.in_flight,
            "queue": self.waiting,
            "memory_bytes": self.memory_bytes if upstream else None,
            "vram_bytes": self.vram_bytes if upstream else None,
            "pinned": self.spec.pinned,
            "last_error": self.last_error,
            "idle_timeout": self.spec.idle_timeout,
            "starts": self.starts,
            "failures": self.failures,
            "retry_in": round(self.backoff_remaining(), 3) or None,
        }


def swallow_outcome(task: asyncio.Task[None]) -> None:
    """Mark a background task's outcome as seen; its waiters (if any) get the error."""
    if not task.cancelled():
        task.exception()
