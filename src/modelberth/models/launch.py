"""Bringing an upstream up: a port for it, the wait until it is healthy, and what a failed
launch says.

Nothing here changes the model. `until_healthy` raises LaunchFailed, which carries both
the reason the model records (its FAILED state and last_error) and the error its waiters
get; the Lifecycle makes the change itself. The runtime's start goes through Kills.launch,
so a stop arriving meanwhile never leaves the upstream behind."""

from __future__ import annotations

import asyncio
import socket

import aiohttp

from modelberth.config import ModelSpec
from modelberth.errors import APIError, StartFailed, StartTimeout
from modelberth.models.events import EventBus
from modelberth.models.health import Readiness, wait_healthy
from modelberth.runtimes.base import Upstream
from modelberth.runtimes.logbuffer import LogBuffer

_LOG_TAIL = 15


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


async def until_healthy(upstream: Upstream, spec: ModelSpec, base_url: str,
                        http: aiohttp.ClientSession, events: EventBus,
                        logs: LogBuffer) -> None:
    """Wait for the health path to answer, publishing the start's progress meanwhile;
    LaunchFailed if the upstream exits first or start_timeout passes."""
    url = f"{base_url}{spec.health_path}"
    exited = asyncio.ensure_future(upstream.wait())

    def progress(elapsed: float) -> None:
        events.notify("start_progress", spec.name, elapsed_seconds=round(elapsed, 1))

    try:
        readiness = await wait_healthy(http, url, spec.start_timeout, exited, progress)
    finally:
        exited.cancel()
    if readiness is Readiness.EXITED:
        reason = f"exited during start ({exited.result().describe()})"
        raise LaunchFailed(reason, StartFailed(spec.name, with_tail(logs, reason)))
    if readiness is Readiness.TIMED_OUT:
        reason = f"not healthy at {url}"
        raise LaunchFailed(f"start timed out: {reason}",
                           StartTimeout(spec.name, spec.start_timeout, with_tail(logs, reason)))
