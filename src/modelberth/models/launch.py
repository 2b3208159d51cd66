"""Bringing an upstream up: a port for it, the wait until it is healthy, and what a failed
launch says.

Nothing here changes the model. `until_healthy` raises LaunchFailed, which carries both
the reason the model records (its FAILED state and last_error) and the error its waiters
get; the Lifecycle makes the change itself. The runtime's start goes through Kills.launch,
so a stop arriving meanwhile never leaves the upstream behind.

While it waits, `until_healthy` feeds the start's StartProgress (progress.py) every health
answer, publishes `start_progress` events from it, and gives up at whichever comes first:
start_timeout (the hard cap) or stall_timeout (nothing moved: no output line, no change in
the health answer). An upstream that keeps printing is never stalled."""

from __future__ import annotations

import asyncio
import socket

import aiohttp

from modelberth.config import ModelSpec
from modelberth.errors import APIError, StartFailed, StartTimeout
from modelberth.models.events import EventBus
from modelberth.models.health import HealthAnswer, Readiness, wait_healthy
from modelberth.models.progress import StartProgress
from modelberth.runtimes.base import Upstream
from modelberth.runtimes.logbuffer import LogBuffer

_LOG_TAIL = 15
_REPORT_EVERY = 1.0  # a start_progress event at least this often, for the elapsed time
_REPORT_CHANGE = 0.25  # and on a new percent or phase, at most this often


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def with_tail(logs: LogBuffer, reason: str) -> str:
    """`reason` and the upstream's last log lines, where why it failed usually is."""
    tail = logs.tail_text(_LOG_TAIL)
    return f"{reason}; last log lines:\n{tail}" if tail else reason


class LaunchFailed(Exception):
    """The upstream exited or was not healthy in time: `reason` is for the model's state,
    `error` for its waiters (with the log tail)."""

    def __init__(self, reason: str, error: APIError) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error


class _Reports:
    """One start's `start_progress` events: when the upstream reaches a new phase (its own
    lines say so), else once a second (the clock's share of the percent moves smoothly
    enough for that). The last one, at 100, is announce_ready's."""

    def __init__(self, name: str, events: EventBus, progress: StartProgress) -> None:
        self._name = name
        self._events = events
        self._progress = progress
        self._phase = "starting"
        self._at = 0.0

    def poll(self) -> None:
        now = self._progress.snapshot()
        since = now.elapsed_seconds - self._at
        if since >= _REPORT_EVERY or (since >= _REPORT_CHANGE and now.phase != self._phase):
            self._phase, self._at = now.phase, now.elapsed_seconds
            self._events.notify("start_progress", self._name, **now.as_dict())


def announce_ready(events: EventBus, name: str, progress: StartProgress) -> None:
    """A start's last `start_progress` event (100, "ready"), even for a start too quick for
    any other; published once the model is READY, so its state event comes first."""
    events.notify("start_progress", name, **progress.snapshot().as_dict())


async def until_healthy(
    upstream: Upstream,
    spec: ModelSpec,
    base_url: str,
    http: aiohttp.ClientSession,
    events: EventBus,
    logs: LogBuffer,
    progress: StartProgress,
) -> None:
    """Wait for the health path to answer, publishing the start's progress meanwhile;
    LaunchFailed if the upstream exits first, stalls for stall_timeout (0: never) or is
    not healthy within start_timeout."""
    url = f"{base_url}{spec.health_path}"
    exited = asyncio.ensure_future(upstream.wait())
    reports = _Reports(spec.name, events, progress)
    progress.launched()

    def watch(answer: HealthAnswer) -> bool:
        progress.observe(answer.status, answer.message)
        reports.poll()
        return progress.stalled(spec.stall_timeout)

    try:
        readiness = await wait_healthy(http, url, spec.start_timeout, exited, watch)
    finally:
        exited.cancel()
    if readiness is Readiness.HEALTHY:
        progress.healthy()
        return
    if readiness is Readiness.EXITED:
        reason = f"exited during start ({exited.result().describe()})"
        raise LaunchFailed(reason, StartFailed(spec.name, with_tail(logs, reason)))
    if readiness is Readiness.STALLED:
        limit = spec.stall_timeout
        seen = _last_seen(progress)
        raise LaunchFailed(
            f"start stalled: nothing moved for {limit:g}s (stall_timeout: no output line, "
            f"no change in the health answer); {seen}",
            StartTimeout(spec.name, limit, with_tail(logs, seen), limit="stall_timeout"),
        )
    reason = f"not healthy at {url}"
    raise LaunchFailed(
        f"start timed out: not healthy within {spec.start_timeout:g}s (start_timeout) at {url}",
        StartTimeout(spec.name, spec.start_timeout, with_tail(logs, reason)),
    )


def _last_seen(progress: StartProgress) -> str:
    """Where a stalled start was: its phase and the health path's last answer."""
    seen = f"last phase: {progress.snapshot().phase}"
    if progress.health is not None:
        status, message = progress.health
        seen += f"; health: {message}" if status is None else f"; health: {status} {message}"
    return seen.rstrip()
