"""A model's lifecycle: its state, its upstream, and the one start, stop or retirement at a time.

Every state change goes through `Lifecycle._transition`: compare with the state the caller
expected and `state.TRANSITIONS`, set, publish a StateEvent. Only this class writes its
fields (state, upstream, port, started_at, last_error, starts, spec); the Model reads them,
takes one step towards ready at a time (`ensure_started`) and calls `stop`, `retire`...
It alone changes its pieces: the crash back-off (backoff.py), the idle timer (idle.py), the
retirement (retirement.py: RETIRED is final), the sleep mode (sleep.py: vLLM's sleep and
wake, the lifecycle's own procedure kept apart) and `Kills` (kills.py), which stops each
upstream let go of in a task of its own: no cancellation cuts a kill short, a failed start
answers its waiters without waiting for it, and nothing starts, stops or retires for good
before the kills are done. launch.py brings an upstream up, or says why not.

The requests are the Model's (admission.py): a stop drains them and the idle timer goes by
them; the lifecycle also restarts their idle clock when the model becomes ready and wakes
the queued ones at retirement. It never imports the Model: the hooks come bound to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aiohttp
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode, Tracer

from modelberth.config import ModelSpec
from modelberth.errors import StartFailed
from modelberth.models.backoff import Backoff
from modelberth.models.events import EventBus
from modelberth.models.health import probe
from modelberth.models.idle import IdleTimer
from modelberth.models.kills import Kills
from modelberth.models.launch import (
    LaunchFailed,
    announce_ready,
    free_port,
    until_healthy,
    with_tail,
)
from modelberth.models.placement import Placement
from modelberth.models.progress import StartProgress
from modelberth.models.retirement import Retirement
from modelberth.models.sleep import SleepMode
from modelberth.models.state import (
    IDLE,
    WARM,
    ModelRetired,
    ModelState,
    RetireReason,
    StateEvent,
    check_transition,
)
from modelberth.models.supervision import Supervision
from modelberth.models.tasks import swallow_outcome
from modelberth.runtimes.base import ExitStatus, Node, Runtime, RuntimeStartError, Upstream
from modelberth.runtimes.logbuffer import LogBuffer

if TYPE_CHECKING:
    from modelberth.models.admission import Admission

_RUNNING = frozenset({ModelState.STARTING, ModelState.READY, *WARM})


class Lifecycle:
    def __init__(
        self,
        spec: ModelSpec,
        runtime: Runtime,
        events: EventBus,
        http: aiohttp.ClientSession,
        tracer: Tracer | None,
        requests: Admission,
    ) -> None:
        self.spec = spec
        self._tracer = tracer or trace.NoOpTracer()
        self.logs = LogBuffer()
        self._runtime = runtime
        self._events = events
        self._http = http
        self._requests = requests  # the Model's; see the module docstring for what is done
        self.state = ModelState.STOPPED
        self.port: int | None = None
        self.started_at: float | None = None
        self.last_error: str | None = None
        self.starts = 0
        # The GPUs the upstream runs on (the scheduler's placement, or the fixed list), for
        # as long as it holds an upstream.
        self.gpus: tuple[int, ...] | None = None
        self.node: Node | None = None  # the node it runs on, on a multi-node runtime
        self.start_seconds: list[float] = []  # the last few starts' durations, oldest first
        self.progress: StartProgress | None = None  # the start under way's, while it runs
        self._backoff = Backoff()
        # The scheduler's gate: room in the budgets, and the GPUs it placed the start on.
        self._admit: Callable[[], Awaitable[Placement]] | None = None
        # Told after every state change, and when an upstream stopped in the background is
        # gone (the scheduler counts a model's memory until then).
        self._state_listeners: list[Callable[[], None]] = []
        self._upstream: Upstream | None = None
        self._start_task: asyncio.Task[None] | None = None
        self._stop_task: asyncio.Task[None] | None = None
        self._stop_only_if_idle = False  # whether _stop_task may give up
        self._idle = IdleTimer(
            spec.name,
            lambda: self.spec.idle_timeout,
            self._idle_for,
            lambda: (
                self.sleep_mode.sleep("idle")
                if self.spec.sleep_level
                else self.stop("idle", only_if_idle=True)
            ),
        )
        self._kills = Kills(
            spec.name, self.logs, lambda: self.spec.stop_timeout, self._tell_state_listeners
        )  # upstreams being stopped
        self._retirement = Retirement()  # declared the moment retire() is called
        self._retire_task: asyncio.Task[None] | None = None
        self.sleep_mode = SleepMode(self, http, requests, self._tracer)  # the one sleep/wake
        # Exits, timeouts in a row, the probe: begun in _serve and _awake, paused in
        # _transition on leaving READY.
        self._supervision = Supervision(
            spec.name,
            events,
            http,
            lambda: requests.in_flight > 0,
            self.note_exit,
            self._probe_failed,
        )

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

    @property
    def stopping_upstreams(self) -> list[Upstream]:
        """Upstreams let go of and still being stopped in the background."""
        return self._kills.upstreams

    @property
    def retiring(self) -> bool:
        """retire() was called: the model never starts again."""
        return self._retirement.declared

    @property
    def failures(self) -> int:
        """Failed starts or crashes in a row."""
        return self._backoff.failures

    def backoff_remaining(self) -> float:
        return self._backoff.remaining()

    @property
    def base_url(self) -> str:
        remote = self.spec.remote
        return remote.origin if remote is not None else f"http://{self.host}:{self.port}"

    @property
    def host(self) -> str:
        """Where its upstream is reached: its node's address, or this machine."""
        return self.node.address if self.node is not None else "127.0.0.1"

    def connect(
        self, admit: Callable[[], Awaitable[Placement]], on_state: Callable[[], None]
    ) -> None:
        """The scheduler's hooks, bound to the Model: `admit` gates every start (room in the
        budgets), `on_state` hears every state change."""
        self._admit = admit
        self._state_listeners.append(on_state)

    def update_settings(self, spec: ModelSpec) -> None:
        """Take settings that do not change how the upstream runs (aliases, timeouts, queue
        size...): same config hash, no restart."""
        if not spec.runs_like(self.spec):
            raise ValueError(f"{self.name}: a new config hash needs reconfigure()")
        if spec.probe != self.spec.probe and self.state is ModelState.READY:
            self._supervision.reconfigured(spec, self.base_url)
        self.spec = spec

    def check_retired(self) -> None:
        """Raise ModelRetired if retire() was called."""
        self._retirement.check()

    @property
    def idle(self) -> IdleTimer:
        """The idle timer, which owns its own state: the Model arms it when the last request
        finishes and sets keep_alive through it."""
        return self._idle

    def upstream_answered(self) -> None:
        """The upstream answered a request in time (called on every success: keep trivial)."""
        self._supervision.answered()

    def upstream_timed_out(self, reason: str) -> bool:
        """A request to the upstream timed out (no first byte, a stalled stream). After
        `max_timeouts` in a row the upstream is taken as hung: the model is marked failed
        and the upstream killed in the background. True if a fresh one should start. A
        remote endpoint has nothing to restart: its timeouts are only the clients' errors."""
        if self.spec.remote is not None:
            return False
        count = self._supervision.timed_out(self.spec.max_timeouts)
        if count is None or self.state is not ModelState.READY:
            return False
        self._drop_upstream()  # counted by the scheduler until it is gone
        self._fail(f"{count} upstream timeouts in a row (last: {reason})")
        return not self.retiring and self._stop_task is None

    def _probe_failed(self, reason: str) -> None:
        """`probe.failures` probes in a row failed: the upstream answers health but does
        not generate. As after too many timeouts: fail, kill it in the background, and
        start a fresh one (unless retiring or being stopped: begin_start_soon)."""
        if self.state is ModelState.READY:
            self._drop_upstream()  # counted by the scheduler until it is gone
            self._fail(reason)
            self.begin_start_soon()

    # --- management --------------------------------------------------------------------

    def begin_start_soon(self) -> None:
        """For Model.start_soon: enter STARTING now, with the one start task, unless the
        model is retired, being stopped, or already running."""
        if (
            not self.retiring
            and self._stop_task is None
            and self.state in (ModelState.STOPPED, ModelState.FAILED)
        ):
            self._begin_start()

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

    async def sleep(self, reason: str) -> bool:
        """Put a ready, idle model with `sleep` to sleep (sleep.py); whether it is asleep."""
        return await self.sleep_mode.sleep(reason)

    async def retire(self, reason: RetireReason) -> None:
        """Stop for good (the model was removed from the config, or modelberth shuts down).

        At once: nothing can start the model any more, and every waiter (queued requests,
        starts, await_ready) gets ModelRetired. Then the upstream stops (after in-flight
        requests, bounded by drain_timeout), every background kill is awaited, and the model
        ends RETIRED. Idempotent; the first reason is the one kept.
        """
        if self._retire_task is None:
            self._retirement.declare(ModelRetired(self.name, reason))
            self._requests.wake_waiters()
            self._idle.disarm()
            self._retire_task = asyncio.create_task(self._retire(reason.value))
            self._retire_task.add_done_callback(swallow_outcome)
        await asyncio.shield(self._retire_task)

    async def _retire(self, reason: str) -> None:
        with self._tracer.start_as_current_span(
            "modelberth.model.retire",
            attributes={"modelberth.model": self.name, "modelberth.reason": reason},
        ):
            while self.state is not ModelState.RETIRED:
                idle = self._start_task is None and self._stop_task is None
                if idle and self.state in (ModelState.STOPPED, ModelState.FAILED):
                    if not self._kills:
                        self._transition(IDLE, ModelState.RETIRED, reason)
                        continue
                    await self._kills.settle()
                else:
                    await self.stop(reason)
            await self._supervision.stop()  # paused on leaving READY: ended before this returns

    def reconfigure(self, spec: ModelSpec, runtime: Runtime) -> bool:
        """Take new settings that change how the upstream runs; whether the model was
        running (then Model.reconfigure restarts it)."""
        running = self.state in _RUNNING  # asleep too: it would wake with the old settings
        self.spec = spec
        self._runtime = runtime
        self._backoff.reset()  # a new config deserves a fresh try
        return running

    async def adopt(self, upstream: Upstream, port: int) -> bool:
        """Take over an upstream an earlier run started, if it still answers health."""
        self.port = port
        self.node = upstream.node
        healthy = await probe(self._http, f"{self.base_url}{self.spec.health_path}", 5.0)
        if not healthy or self.retiring or self.state is not ModelState.STOPPED:
            self._kills.stop_in_background(upstream)
            await self._kills.settle()
            return False
        self._transition(ModelState.STOPPED, ModelState.STARTING, "adopt")
        self.gpus = upstream.gpus
        self._serve(upstream, "adopted", runtime_id=upstream.runtime_id)
        await self.sleep_mode.adopted()  # an earlier run may have put it to sleep
        return True

    # --- starting ----------------------------------------------------------------------

    async def ensure_started(self, force: bool = False) -> None:
        """One step towards ready: wait for a stop in progress, or for the (one) start. The
        caller loops; a retired model raises ModelRetired at once."""
        self._retirement.check()
        if self._stop_task is not None:
            await self._retirement.wait(self._stop_task)
            return
        if self.state is ModelState.READY:
            return
        if self.state in WARM:  # the sleep under way, then the one wake
            warm = self.sleep_mode.step()
            await self._retirement.wait(warm)
            if not warm.cancelled():
                warm.result()  # the wake's error, if it failed
            return
        if not force and self.state is ModelState.FAILED and self._start_task is None:
            self._backoff.check(self.name, self.last_error)
        task = self._begin_start()
        await self._retirement.wait(task)
        if task.cancelled():
            return  # the start was called off by a stop: the caller loops and tries again
        task.result()  # the start's error, if it failed

    def _begin_start(self) -> asyncio.Task[None]:
        """The one start in progress, created (and STARTING entered) synchronously."""
        self._retirement.check()
        if self._start_task is None:
            self._transition(IDLE, ModelState.STARTING, "start")
            self._start_task = asyncio.create_task(self._start())
            self._start_task.add_done_callback(swallow_outcome)
        return self._start_task

    async def _start(self) -> None:
        with self._tracer.start_as_current_span(
            "modelberth.model.start", attributes={"modelberth.model": self.name}
        ) as span:
            try:
                await self._start_upstream()
            except BaseException as exc:
                span.set_status(Status(StatusCode.ERROR, str(exc)[:500]))
                if isinstance(exc, Exception) and self.state is ModelState.STARTING:
                    # Not a failure the start knew (those are FAILED already): never leave
                    # the model starting with nobody starting it.
                    self._drop_upstream()
                    self._fail(f"start failed: {exc!r}")
                raise
            finally:
                self._start_task = None

    async def _start_upstream(self) -> None:
        if self.spec.remote is not None:
            self._serve_remote()
            return
        await self._kills.settle()  # an earlier upstream still being killed goes first
        placement = Placement(self.spec.devices)
        if self._admit is not None:
            try:
                placement = await self._admit()
            except StartFailed as exc:
                self._fail(exc.reason)
                raise
        self.gpus, self.node = placement.gpus, placement.node
        node = placement.node
        spec = self.spec.placed_on(
            placement.gpus, node.id if node else None, node.address if node else None
        )
        self.port = self.spec.fixed_port or free_port()
        began = time.monotonic()
        # Made before the launch, so the upstream's first lines count too; dropped once the
        # start is over, however it ends.
        self.progress = progress = StartProgress(self.logs, self.start_seconds)
        try:
            upstream = self._upstream = await self._kills.launch(
                self._runtime.start(spec, self.port, self.logs)
            )
        except RuntimeStartError as exc:
            self.progress = None
            self._fail(str(exc))
            raise StartFailed(self.name, str(exc)) from None
        self.starts += 1
        try:
            await until_healthy(
                upstream, self.spec, self.base_url, self._http, self._events, self.logs, progress
            )
        except (LaunchFailed, asyncio.CancelledError) as exc:  # failed, or a stop called it off
            # Killed in the background: stop_timeout may be long, and the waiters are owed
            # an answer at start_timeout.
            if self._upstream is upstream:
                self._upstream = None
            self._kills.stop_in_background(upstream)
            if isinstance(exc, LaunchFailed):
                self._fail(exc.reason)
                raise exc.error from None
            raise
        finally:
            self.progress = None
        self.last_error = None
        self._backoff.reset()
        took = round(time.monotonic() - began, 3)
        self.start_seconds = [*self.start_seconds[-4:], took]
        self._serve(upstream, "healthy", start_seconds=took)
        announce_ready(self._events, self.name, progress)

    def _serve(self, upstream: Upstream, reason: str, **detail: Any) -> None:
        """STARTING -> READY, serving with `upstream` (launched, or adopted)."""
        self._upstream = upstream
        self.started_at = time.time()
        self._requests.touch()
        self._transition(ModelState.STARTING, ModelState.READY, reason, **detail)
        self._supervision.serving(self.spec, self.base_url, upstream)
        self._idle.keep_alive(None)  # a keep_alive was said for the upstream before this one
        self._idle.arm()  # even if every request that asked for it has gone

    def _serve_remote(self) -> None:
        """STARTING -> READY for a remote endpoint (runtime: remote): nothing is launched,
        admitted, supervised or idle-stopped; it stays ready until it is reconfigured or
        retired."""
        self.started_at = time.time()
        self.last_error = None
        self._backoff.reset()
        self._requests.touch()
        self._transition(ModelState.STARTING, ModelState.READY, "remote endpoint")

    def _awake(self, reason: str, **detail: Any) -> None:
        """WAKING -> READY (sleep.py's wake): serving again, with the same upstream."""
        self._requests.touch()  # the idle clock starts again, as at a start
        self._transition(ModelState.WAKING, ModelState.READY, reason, **detail)
        self._supervision.serving(self.spec, self.base_url)
        self._idle.arm()

    def _fail(self, reason: str) -> None:
        self._backoff.failed()
        self.started_at = None
        self.last_error = with_tail(self.logs, reason)
        self._transition(_RUNNING, ModelState.FAILED, reason)

    def note_exit(self, upstream: Upstream, status: ExitStatus) -> None:
        """The upstream has exited: if it was serving, the model has failed (idempotent)."""
        if self._upstream is upstream and self.state in (ModelState.READY, *WARM):
            self._drop_upstream()  # reaps it, and whatever it left in its group
            self._fail(f"upstream exited unexpectedly ({status.describe()})")

    def _drop_upstream(self) -> None:
        """Let go of the upstream, if any: it is stopped in the background (by _kills)."""
        upstream, self._upstream = self._upstream, None
        if upstream is not None:
            self._kills.stop_in_background(upstream)

    # --- stopping ----------------------------------------------------------------------

    async def _stop(self, reason: str, only_if_idle: bool) -> None:
        name = "modelberth.model.evict" if reason.startswith("evicted") else "modelberth.model.stop"
        requests = self._requests
        with self._tracer.start_as_current_span(
            name, attributes={"modelberth.model": self.name, "modelberth.reason": reason}
        ):
            try:
                if only_if_idle and (requests.in_flight or requests.waiting):
                    return
                await self._supervision.stop()  # no probe in the drain, none left once stopped
                if self._start_task is not None:
                    self._start_task.cancel()
                    with contextlib.suppress(BaseException):
                        await self._start_task
                await self.sleep_mode.cancel()  # a sleep or wake: the upstream goes anyway
                if self.state is ModelState.FAILED:
                    await self._kills.settle()
                    self._transition(ModelState.FAILED, ModelState.STOPPED, reason)
                    return
                if self.state not in _RUNNING:
                    await self._kills.settle()
                    return
                self._transition(_RUNNING, ModelState.STOPPING, reason)
                if requests.in_flight:
                    await requests.drained(self.spec.drain_timeout)
                self._drop_upstream()
                await self._kills.settle()
                self.started_at = None
                self._transition(ModelState.STOPPING, ModelState.STOPPED, reason)
            finally:
                self._stop_task = None

    def _idle_for(self) -> float | None:
        """For the idle timer: seconds idle, or None unless the model is ready and unused."""
        if self.state is ModelState.READY and self._requests.in_flight == 0 and not self.retiring:
            return self._requests.idle_seconds()
        return None

    # --- state -------------------------------------------------------------------------

    def _transition(
        self,
        expected: ModelState | frozenset[ModelState],
        new: ModelState,
        reason: str,
        **detail: Any,
    ) -> None:
        """The one place the state changes: compare (`expected`, and the table), then set,
        then tell everyone (an event for logs, metrics and /api/events; the listeners)."""
        old = self.state
        check_transition(self.name, old, expected, new, reason)
        self.state = new
        if old is ModelState.READY:
            self._supervision.pause()  # at once: no probe more once a stop or failure began
        if new is ModelState.FAILED and self.last_error:
            detail.setdefault("error", self.last_error)
        self._events.publish(StateEvent(self.name, old, new, reason, detail=detail))
        self._tell_state_listeners()

    def _tell_state_listeners(self) -> None:
        for listener in self._state_listeners:
            listener()
