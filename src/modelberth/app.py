"""Assembles the ASGI app: the raw proxy for inference traffic, FastAPI for the rest."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from modelberth import __version__
from modelberth.api import admin, errors, health, openai
from modelberth.config import Config
from modelberth.proxy import Proxy, Receive, Scope, Send
from modelberth.registry import Registry


class ModelberthApp:
    """Routes POST /v1/* and /upstream/* to the proxy; everything else to FastAPI."""

    def __init__(self, config: Config) -> None:
        self.registry = Registry(config)
        self.proxy = Proxy(self.registry)
        self.api = _build_api(self.registry)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith("/upstream/") or (
                path.startswith("/v1/") and scope["method"] == "POST"
            ):
                await self.proxy(scope, receive, send)
                return
        await self.api(scope, receive, send)


def _build_api(registry: Registry) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await registry.boot()
        try:
            yield
        finally:
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


def create_app(config: Config) -> ModelberthApp:
    return ModelberthApp(config)
