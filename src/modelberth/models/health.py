"""Readiness: poll an upstream's health path fast (5 ms, then each wait 1.3x longer up to
250 ms) while watching for its exit, so a swap costs the upstream's own load time and almost
nothing more. Every answer that is not yet a 200 goes to the caller's `watch`, which may end
the wait as stalled (the stall timeout: launch.py and progress.py)."""

from __future__ import annotations

import asyncio
import enum
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

_FIRST_PROBE_DELAY = 0.005
_MAX_PROBE_DELAY = 0.25
_PROBE_TIMEOUT = 5.0
_BODY_READ = 4096  # enough of a health answer to say what it is
_MESSAGE = re.compile(r'"message"\s*:\s*"([^"]{0,80})')


class Readiness(enum.Enum):
    HEALTHY = "healthy"
    EXITED = "exited"
    TIMED_OUT = "timed out"
    STALLED = "stalled"


@dataclass(frozen=True, slots=True)
class HealthAnswer:
    status: int | None  # None: no answer
    message: str  # what it said, short (llama-server's 503: "Loading model"), or why none

    @property
    def healthy(self) -> bool:
        return self.status == 200


async def ask(http: aiohttp.ClientSession, url: str, timeout: float) -> HealthAnswer:
    """One health check, with what the answer said."""
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            if resp.status == 200:
                return HealthAnswer(200, "")
            body = (await resp.content.read(_BODY_READ)).decode("utf-8", "replace")
    except TimeoutError:
        return HealthAnswer(None, "no answer in time")
    except aiohttp.ClientConnectionError:
        return HealthAnswer(None, "no connection")
    except aiohttp.ClientError as exc:
        return HealthAnswer(None, type(exc).__name__)
    found = _MESSAGE.search(body)  # a JSON error's message, else the body's first bytes
    return HealthAnswer(resp.status, found.group(1) if found else body.strip()[:80])


async def probe(http: aiohttp.ClientSession, url: str, timeout: float) -> bool:
    """One health check: True for a 200."""
    return (await ask(http, url, timeout)).healthy


async def wait_healthy(
    http: aiohttp.ClientSession,
    url: str,
    timeout: float,
    exited: asyncio.Future[Any],
    watch: Callable[[HealthAnswer], bool],
) -> Readiness:
    """Poll `url` until it answers 200, `exited` is done, or `timeout` seconds pass;
    `watch(answer)` hears every other answer, and ends the wait as STALLED by saying True."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = _FIRST_PROBE_DELAY
    while True:
        if exited.done():
            return Readiness.EXITED
        remaining = deadline - loop.time()
        if remaining <= 0:
            return Readiness.TIMED_OUT
        answer = await ask(http, url, min(remaining, _PROBE_TIMEOUT))
        if answer.healthy:
            return Readiness.HEALTHY
        if watch(answer):
            return Readiness.STALLED
        await asyncio.wait({exited}, timeout=min(delay, max(deadline - loop.time(), 0)))
        delay = min(delay * 1.3, _MAX_PROBE_DELAY)
