"""Assembles the ASGI app: the raw proxy for inference traffic, FastAPI for the rest."""

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
from modelberth.proxy import Proxy, Receive, Scope, Send
from modelberth.registry import Registry
from modelberth.reload import install_sighup, watch_config


class ModelberthApp:
    """Routes POST /v1/* and /upstream/* to the proxy; everything else to FastAPI."""

    def __init__(self, config: Config, config_path: Path | None = None,
                 watch: bool = False) -> None:
        self.registry = Registry(config, config_path=config_path)
        self.proxy = Proxy(self.registry)
        self.api = _build_api(self.registry, watch)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith("/upstream/") or (
                path.startswith("/v1/") and scope["method"] == "POST"
            ):
                await self.proxy(scope, receive, send)
                return
        await self.api(scope, receive, send)


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
