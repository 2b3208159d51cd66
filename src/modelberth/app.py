"""Assembles the server's two handlers: the proxy for inference traffic (routed to it by the
connection, http1.py) and the ASGI app, FastAPI, for the rest."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from modelberth import __version__
from modelberth.api import admin, errors, health, openai
from modelberth.config import Config
from modelberth.proxy import Proxy
from modelberth.registry import Registry
from modelberth.reload import install_sighup, watch_config


class ModelberthApp:
    """The registry and its two handlers: the server routes POST /v1/* and /upstream/* to
    `proxy` (through `proxy.route`) and everything else, and the lifespan, to `api`."""

    def __init__(self, config: Config, config_path: Path | None = None,
                 watch: bool = False) -> None:
        self.registry = Registry(config, config_path=config_path)
        self.proxy = Proxy(self.registry)
        self.api = _build_api(self.registry, watch)


def _build_api(registry: Registry, watch: bool) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await registry.boot()
        install_sighup(registry)
        watcher = asyncio.create_task(watch_config(registry)) if watch else None
        try:
            yield
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            await registry.shutdown()

    api = FastAPI(
        title="modelberth",
        version=__version__,
        summary="One OpenAI-compatible endpoint in front of many local model servers.",
        lifespan=lifespan,
    )
    api.state.registry = registry
    errors.install(api)
    api.include_router(health.router)
    api.include_router(openai.router)
    api.include_router(admin.router)
    return api


def create_app(config: Config, config_path: Path | None = None,
               watch: bool = False) -> ModelberthApp:
    return ModelberthApp(config, config_path, watch)
