"""Whether the upstream a model serves with is still good: it has not exited, its requests
do not time out `max_timeouts` times in a row, and, with `probe`, it still generates.

A piece of one model's Lifecycle, like its idle timer. The lifecycle calls `serving` each
time the model becomes ready (launched, adopted, or awake again): the count of timeouts and
the probe start afresh then. It tells the lifecycle when the upstream is lost, through the
hooks it was given (`on_exit(upstream, status)`, `on_wedged(reason)`); the lifecycle fails
the model, since it alone changes the state. `pause` stops the probing the moment the model
leaves READY; `stop` also waits until no probe task is left.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp

from modelberth.config import ModelSpec
from modelberth.models.events import EventBus
from modelberth.models.probe import GenerationProbe
from modelberth.runtimes.base import ExitStatus, Upstream


class Supervision:
    __slots__ = ("_on_exit", "_probe", "_timeouts", "_watch")

    def __init__(
        self,
        name: str,
        events: EventBus,
        http: aiohttp.ClientSession,
        busy: Callable[[], bool],
        on_exit: Callable[[Upstream, ExitStatus], None],
        on_wedged: Callable[[str], None],
    ) -> None:
        self._probe = GenerationProbe(name, events, http, busy, on_wedged)
        self._on_exit = on_exit
        self._timeouts = 0  # upstream timeouts in a row
        # Ends when the upstream exits, which every upstream does (Kills sees to it).
        self._watch: asyncio.Task[None] | None = None

    def serving(self, spec: ModelSpec, base_url: str, upstream: Upstream | None = None) -> None:
        """Ready: with `upstream`, a new one (watched until it exits); None: the same one,
        awake again."""
        self._timeouts = 0
        if upstream is not None:
            self._watch = asyncio.create_task(self._wait_for_exit(upstream))
        self._probe.begin(spec.probe, base_url)

    def reconfigured(self, spec: ModelSpec, base_url: str) -> None:
        """A reload added, changed or removed the probe of a ready model."""
        self._probe.begin(spec.probe, base_url)

    def answered(self) -> None:
        """The upstream answered a request in time (on every success: keep it trivial)."""
        self._timeouts = 0
        self._probe.answered = True  # it generates: the next probe can be skipped

    def timed_out(self, limit: int) -> int | None:
        """One more timeout in a row: the count once it reaches `limit` (and from zero
        again), else None."""
        self._timeouts += 1
        if self._timeouts < limit:
            return None
        count, self._timeouts = self._timeouts, 0
        return count

    def pause(self) -> None:
        self._probe.cancel()

    async def stop(self) -> None:
        await self._probe.stop()

    async def _wait_for_exit(self, upstream: Upstream) -> None:
        self._on_exit(upstream, await upstream.wait())
