"""Ways to re-read the config while serving: SIGHUP and --watch (POST /api/reload is in api/)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

from loguru import logger

from modelberth.config import ConfigError
from modelberth.errors import APIError
from modelberth.models.registry import Registry


async def reload_logged(registry: Registry, why: str) -> None:
    try:
        await registry.reload_from_file()
    except ConfigError as exc:
        logger.error("config not reloaded ({}); the running config stays:\n{}", why, exc.render())
    except APIError as exc:
        logger.error("config not reloaded ({}): {}", why, exc.message)


def install_sighup(registry: Registry) -> None:
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    def on_hup() -> None:
        task = loop.create_task(reload_logged(registry, "SIGHUP"))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGHUP, on_hup)


def _fingerprint(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


async def watch_config(registry: Registry, interval: float = 1.0) -> None:
    """Reload whenever the config file changes (polled: works on every filesystem)."""
    path = registry.config_path
    if path is None:
        return
    last = _fingerprint(path)
    while True:
        await asyncio.sleep(interval)
        current = _fingerprint(path)
        if current is not None and current != last:
            last = current
            await reload_logged(registry, f"{path} changed")
