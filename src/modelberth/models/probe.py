"""The generation probe: finds an upstream that answers health but no longer generates.

A wedged server (a stuck CUDA kernel, a dead scheduler thread in vLLM, a llama-server slot
that never frees) keeps answering its health path, so readiness never notices; only a real
generation does. While a model with `probe` configured is ready, this sends one small
generation (POST `path` with `body`) every `interval` seconds straight to its upstream, not
through the proxy: it is no request of anyone's, so it neither queues, nor counts as use for
the idle timer, nor shows in the activity. A 2xx answer with a JSON body is a success;
anything else (no answer within `timeout`, a refused connection, a 5xx, a body that is not
JSON) a failure, published as a `probe_failed` notice. After `failures` in a row the
lifecycle is told (`on_wedged`): it fails the model and starts a fresh upstream.

A probe is skipped, costing nothing, when the model proved it generates by itself: a
request was answered since the last probe (`answered`, which the proxy's success path sets:
one attribute write) or one is in flight. An in-flight request is watched by its own
first_byte_timeout and stream_stall_timeout, and a probe sent beside it would queue behind
it on a single-slot server (llama-server -np 1) and fail although the model is generating.

Owned by the lifecycle: `begin` when the model becomes ready (the count starts afresh for
each upstream), `cancel` the moment it leaves READY (synchronous, so no probe is sent once
a stop has begun), `stop` (cancel and await) before a stop or a retirement ends, so no probe
task outlives the model.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import aiohttp
from loguru import logger

from modelberth.config.sections import ProbeConfig
from modelberth.models.events import EventBus

# In the reason of the failure a probe causes; telemetry counts those restarts by it.
WEDGED = "probes failed in a row"


class GenerationProbe:
    __slots__ = ("_busy", "_events", "_http", "_name", "_on_wedged", "_tasks", "answered")

    def __init__(
        self,
        name: str,
        events: EventBus,
        http: aiohttp.ClientSession,
        busy: Callable[[], bool],
        on_wedged: Callable[[str], None],
    ) -> None:
        """`busy`: whether a request is in flight now; `on_wedged(reason)`: `failures`
        probes in a row failed (called from the probe's task, which then ends)."""
        self._name = name
        self._events = events
        self._http = http
        self._busy = busy
        self._on_wedged = on_wedged
        # One running at most; a cancelled one stays here until it has ended, so `stop`
        # can await it.
        self._tasks: set[asyncio.Task[None]] = set()
        self.answered = False  # a request was answered since the last probe (the proxy's)

    def begin(self, config: ProbeConfig | None, base_url: str) -> None:
        """Probe the upstream at `base_url` (just become ready), with a fresh count; None:
        no probing. Replaces a probe of an earlier upstream or config."""
        self.cancel()
        self.answered = False
        if config is not None:
            task = asyncio.create_task(self._run(config, base_url))
            self._tasks.add(task)
            task.add_done_callback(self._done)

    def cancel(self) -> None:
        """End the probing now (the model left READY). Not the probe's own task when it is
        the caller: it is failing the model and ends by itself."""
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()

    async def stop(self) -> None:
        """Cancel, and wait until no probe task is left."""
        self.cancel()
        current = asyncio.current_task()
        while others := {task for task in self._tasks if task is not current}:
            await asyncio.wait(others)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.bind(model=self._name).opt(exception=exc).error(
                "{}: the probe ended on an error", self._name
            )

    async def _run(self, config: ProbeConfig, base_url: str) -> None:
        url = f"{base_url}{config.path}"
        body = {"model": self._name, **config.body}
        failed = 0
        while True:
            await asyncio.sleep(config.interval)
            if self.answered:
                self.answered = False
                failed = 0  # it generates: the failures before were no wedge
                continue
            if self._busy():
                continue
            error = await self._send(url, body, config.timeout)
            if error is None:
                failed = 0
                continue
            failed += 1
            self._events.notify(
                "probe_failed", self._name, failures=failed, limit=config.failures, error=error
            )
            if failed < config.failures:
                logger.bind(model=self._name).info(
                    "{}: probe {} of {} failed: {}", self._name, failed, config.failures, error
                )
                continue
            reason = f"{failed} {WEDGED} (last: {error}): restarting"
            logger.bind(model=self._name).warning("{}: {}", self._name, reason)
            self._on_wedged(reason)
            return

    async def _send(self, url: str, body: dict[str, object], timeout: float) -> str | None:
        """One probe: None if the upstream generated an answer, else what went wrong."""
        try:
            async with self._http.post(
                url, json=body, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as resp:
                status, answer = resp.status, await resp.read()
        except TimeoutError:
            return f"timed out after {timeout:g}s"
        except aiohttp.ClientError as exc:
            return f"{type(exc).__name__}: {exc}"
        if not 200 <= status < 300:
            return f"HTTP {status}"
        try:
            json.loads(answer)  # a probe's answer is a few hundred bytes
        except ValueError:  # not JSON, or not UTF-8
            return f"HTTP {status} but not JSON"
        return None
