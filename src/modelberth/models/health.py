"""Readiness: poll an upstream's health path fast (5 ms, then each wait 1.3x longer up to
250 ms) while watching for its exit, so a swap costs the upstream's own load time and almost
nothing more."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from typing import Any

import aiohttp

_FIRST_PROBE_DELAY = 0.005
_MAX_PROBE_DELAY = 0.25
_PROBE_TIMEOUT = 5.0


class Readiness(enum.Enum):
    HEALTHY = "healthy"
    EXITED = "exited"
    TIMED_OUT = "timed out"


async def probe(http: aiohttp.ClientSession, url: str, timeout: float) -> bool:
    """One health check: True for a 200."""
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            return resp.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def wait_healthy(http: aiohttp.ClientSession, url: str, timeout: float,
                       exited: asyncio.Future[Any],
                       progress: Callable[[float], None]) -> Readiness:
    """Poll `url` until it answers 200, `exited` is done, or `timeout` seconds pass;
    `progress(elapsed)` is called about once a second meanwhile."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = _FIRST_PROBE_DELAY
    reported = 0.0
    while True:
        if exited.done():
            return Readiness.EXITED
        remaining = deadline - loop.time()
        if remaining <= 0:
            return Readiness.TIMED_OUT
        if await probe(http, url, min(remaining, _PROBE_TIMEOUT)):
            return Readiness.HEALTHY
        await asyncio.wait({exited}, timeout=min(delay, max(deadline - loop.time(), 0)))
        delay = min(delay * 1.3, _MAX_PROBE_DELAY)
        elapsed = timeout - (deadline - loop.time())
        if elapsed >= reported + 1.0:
            reported = int(elapsed)
            progress(elapsed)
