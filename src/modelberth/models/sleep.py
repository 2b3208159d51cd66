"""The warm tier, vLLM's sleep mode: an idle model gives its GPU memory back but keeps its
process, and wakes for the next request far faster than it would start.

vLLM run with --enable-sleep-mode and VLLM_SERVER_DEV_MODE=1 (the vllm template adds both
with `sleep`) serves `POST /sleep?level=N`, which answers once asleep, `POST /wake_up` and
`GET /is_sleeping` ({"is_sleeping": bool}). Level 1 keeps the weights in host RAM; level 2
drops them, so its wake also loads them again (`POST /collective_rpc` {"method":
"reload_weights"}) and empties the prefix cache, computed with the weights dropped
(`POST /reset_prefix_cache`).

`SleepMode` is a piece of one model's Lifecycle, like its Kills and IdleTimer: it owns the
one sleep or wake in progress, in a task of its own, since whoever asked for it may go away
(a client, an idle watcher replaced by a keep_alive) while others wait on it, and a call cut
short would leave the upstream half asleep. It is the lifecycle's own procedure, kept in a
module of its own for size: it changes the state only through `Lifecycle._transition`, lets
go of the upstream only through `_drop_upstream` and `_fail`, and serves again through
`_awake`, as the lifecycle's own code does.

- sleep: READY -> SLEEPING at once, so from then on requests wait instead of reaching an
  upstream that is letting go of its memory; then the call. Only an idle model sleeps:
  nothing in flight, nothing queued. A failed call leaves the upstream in a state nobody
  knows: FAILED, and it is killed in the background.
- wake (a request, or a start by hand, found it asleep): SLEEPING -> WAKING at once, then
  the scheduler's gate (the room it needs again, on the GPUs it already runs on), the calls,
  and `is_sleeping` polled until false, those within start_timeout; then READY. No room:
  back to SLEEPING, nothing was woken. A failed call: FAILED and killed, so the next request
  starts a fresh upstream.

An upstream that exits while asleep or waking fails the model through the lifecycle's exit
watcher; a call under way then fails at once (its connection is gone), and finds the model
FAILED already.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Coroutine, Iterator
from typing import TYPE_CHECKING, Any

import aiohttp
from opentelemetry.trace import Span, Status, StatusCode, Tracer

from modelberth.errors import StartFailed
from modelberth.models.launch import with_tail
from modelberth.models.state import WARM, ModelState
from modelberth.models.tasks import swallow_outcome
from modelberth.runtimes.base import Upstream

if TYPE_CHECKING:
    from modelberth.models.admission import Admission
    from modelberth.models.lifecycle import Lifecycle

S = ModelState
# is_sleeping is polled as health is (health.py): soon, then each wait 1.3x longer.
_FIRST_POLL = 0.005
_MAX_POLL = 0.25
# The least a sleep may take: level 1 copies every weight to host RAM first.
_MIN_SLEEP_TIMEOUT = 30.0


class SleepCallFailed(Exception):
    """A sleep endpoint answered an error, or nothing in time, or could not be reached."""


class SleepMode:
    __slots__ = ("_http", "_lifecycle", "_requests", "_task", "_tracer", "sleeps", "wakes")

    def __init__(
        self, lifecycle: Lifecycle, http: aiohttp.ClientSession, requests: Admission, tracer: Tracer
    ) -> None:
        self._lifecycle = lifecycle
        self._http = http
        self._requests = requests  # the Model's: only an idle model sleeps
        self._tracer = tracer
        self._task: asyncio.Task[bool] | None = None  # the sleep or wake in progress, if any
        self.sleeps = 0  # that took
        self.wakes = 0

    def _running(self) -> asyncio.Task[bool] | None:
        task = self._task
        return task if task is not None and not task.done() else None

    async def sleep(self, reason: str) -> bool:
        """Put the model to sleep if it has a sleep level, is ready and idle; or join the
        sleep in progress. Whether it is asleep when this returns (False while waking)."""
        lc, requests = self._lifecycle, self._requests
        task = self._running()
        if task is None:
            if lc.state is S.SLEEPING:
                return True
            if (
                lc.spec.sleep_level is None
                or lc.state is not S.READY
                or lc.retiring
                or requests.in_flight
                or requests.waiting
            ):
                return False
            lc._transition(S.READY, S.SLEEPING, reason, level=lc.spec.sleep_level)
            task = self._own(self._fall_asleep())
        elif lc.state is S.WAKING:
            return False
        await asyncio.wait({task})  # never cancels it: requests may be waiting on it too
        return not task.cancelled() and task.exception() is None and task.result()

    def step(self) -> asyncio.Task[bool]:
        """For Lifecycle.ensure_started on a sleeping or waking model: the task to wait for,
        the sleep still under way or the one wake (begun now, WAKING at once, if need be)."""
        task = self._running()
        if task is None:
            self._lifecycle._transition(S.SLEEPING, S.WAKING, "wake")
            task = self._own(self._wake())
        return task

    async def cancel(self) -> None:
        """For a stop: call the sleep or wake in progress off (the upstream goes anyway)."""
        task = self._running()
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    async def adopted(self) -> None:
        """After an adoption: an upstream that an earlier run put to sleep is still asleep,
        and so is the model, or the first request would reach it asleep."""
        lc = self._lifecycle
        if lc.spec.sleep_level is None:
            return
        try:
            asleep = _asleep(await self._call("GET", "/is_sleeping", 5.0))
        except SleepCallFailed:
            return  # it answers health; taken as awake
        if asleep and lc.state is S.READY:
            lc._transition(S.READY, S.SLEEPING, "adopted asleep")

    def _own(self, work: Coroutine[Any, Any, bool]) -> asyncio.Task[bool]:
        task = self._task = asyncio.create_task(work)
        task.add_done_callback(swallow_outcome)  # its waiters, if any, get the error
        return task

    async def _fall_asleep(self) -> bool:
        lc = self._lifecycle
        upstream, spec = lc.upstream, lc.spec
        with self._span("modelberth.model.sleep") as span:
            try:
                await self._call(
                    "POST",
                    f"/sleep?level={spec.sleep_level}",
                    max(spec.stop_timeout, _MIN_SLEEP_TIMEOUT),
                )
            except SleepCallFailed as exc:
                self._give_up(span, upstream, f"sleep failed: {exc}")
                return False
        self.sleeps += 1
        return True

    async def _wake(self) -> bool:
        lc = self._lifecycle
        upstream, spec = lc.upstream, lc.spec
        with self._span("modelberth.model.wake") as span:
            if lc._admit is not None:
                try:
                    # Its placement is not used: the upstream stays on the GPUs it has.
                    await lc._admit()
                except StartFailed as exc:
                    span.set_status(Status(StatusCode.ERROR, exc.reason[:500]))
                    if lc.state is S.WAKING:
                        lc._transition(S.WAKING, S.SLEEPING, f"no room to wake: {exc.reason}")
                    raise
            began = time.monotonic()
            try:
                await self._calls_to_wake(spec.sleep_level, spec.start_timeout)
            except Exception as exc:  # never leave it WAKING with nobody waking it
                why = str(exc) if isinstance(exc, SleepCallFailed) else repr(exc)
                self._give_up(span, upstream, f"wake failed: {why}")
                raise self._wake_error(f"wake failed: {why}") from None
            if lc.state is not S.WAKING or lc.upstream is not upstream:  # it exited just now
                raise self._wake_error("exited while waking")
        self.wakes += 1
        lc._awake("woke", wake_seconds=round(time.monotonic() - began, 3))
        return True

    def _give_up(self, span: Span, upstream: Upstream | None, reason: str) -> None:
        """After a failed call the upstream is in a state nobody knows: FAILED, and killed
        in the background (unless its exit got there first)."""
        span.set_status(Status(StatusCode.ERROR, reason[:500]))
        lc = self._lifecycle
        if lc.state in WARM and lc.upstream is upstream:
            lc._drop_upstream()
            lc._fail(reason)

    def _wake_error(self, reason: str) -> StartFailed:
        """What the waiters get: why the model failed (the failed call, or the upstream's
        exit if that came first), with the upstream's last log lines."""
        lc = self._lifecycle
        if lc.state is S.FAILED and lc.last_error:
            return StartFailed(lc.name, lc.last_error)
        return StartFailed(lc.name, with_tail(lc.logs, reason))

    async def _calls_to_wake(self, level: int | None, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout

        def left() -> float:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise SleepCallFailed(f"still asleep after start_timeout ({timeout:g}s)")
            return remaining

        await self._call("POST", "/wake_up", left())
        if level == 2:  # the weights were dropped: load them, forget what the old ones made
            await self._call("POST", "/collective_rpc", left(), {"method": "reload_weights"})
            await self._call("POST", "/reset_prefix_cache", left())
        delay = _FIRST_POLL
        while _asleep(await self._call("GET", "/is_sleeping", left())):
            await asyncio.sleep(min(delay, left()))
            delay = min(delay * 1.3, _MAX_POLL)

    async def _call(self, method: str, path: str, timeout: float, body: Any = None) -> str:
        """One call to the upstream: the text of its 200 answer, or SleepCallFailed."""
        url = self._lifecycle.base_url + path
        try:
            async with self._http.request(
                method, url, json=body, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as resp:
                text = (await resp.read()).decode(errors="replace")
        except TimeoutError:
            raise SleepCallFailed(f"{method} {path}: no answer within {timeout:.3g}s") from None
        except aiohttp.ClientError as exc:
            raise SleepCallFailed(f"{method} {path}: {exc}") from None
        if resp.status != 200:
            raise SleepCallFailed(f"{method} {path} answered {resp.status}: {text[:300]}")
        return text

    @contextlib.contextmanager
    def _span(self, name: str) -> Iterator[Span]:
        with self._tracer.start_as_current_span(
            name, attributes={"modelberth.model": self._lifecycle.name}
        ) as span:
            yield span


def _asleep(text: str) -> bool:
    """GET /is_sleeping's answer: {"is_sleeping": bool}."""
    try:
        answer = json.loads(text)
    except ValueError:
        answer = None
    asleep = answer.get("is_sleeping") if isinstance(answer, dict) else None
    if not isinstance(asleep, bool):
        raise SleepCallFailed(f"GET /is_sleeping answered {text[:100]!r}")
    return asleep
