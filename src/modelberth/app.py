"""Assembles the server's one ASGI app: the proxy for inference traffic (POST /v1/* and
/upstream/*, a raw ASGI handler) and FastAPI for the rest."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from modelberth import __version__
from modelberth.api import admin, errors, health, openai
from modelberth.config import Config
from modelberth.models.registry import Registry
from modelberth.proxy.handler import Proxy
from modelberth.reload import install_sighup, watch_config
from modelberth.telemetry.metrics import Metrics
from modelberth.telemetry.setup import Telemetry, run_bounded, setup_telemetry
from modelberth.upstream_client import UpstreamClient

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class ModelberthApp:
    """The composition root: builds telemetry, the registry of models, the metrics read off
    them, and the two handlers behind one ASGI callable: the proxy takes what
    `Proxy.claims`, FastAPI (`api`) everything else, the lifespan included. Each part is
    handed what it uses; nothing else reaches through another part for a service."""

    def __init__(self, config: Config, config_path: Path | None = None,
                 watch: bool = False) -> None:
        self.telemetry = setup_telemetry()
        self.registry = Registry(config, config_path=config_path, tracer=self.telemetry.tracer)
        spans = self.telemetry.spans
        self.metrics = Metrics(self.telemetry.meter, self.registry,
                               lambda: spans.batcher.dropped if spans is not None else None)
        self.telemetry.metric_sources.append(self.metrics.collect_histograms)
        self.registry.events.add_listener(self.metrics.on_state_event)
        self.upstream = UpstreamClient()  # the hot path's; health probes use aiohttp
        self.proxy = Proxy(self.registry, self.upstream, self.telemetry, self.metrics)
        self.api = _build_api(self.registry, self.upstream, self.telemetry, watch)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if self.proxy.claims(scope["method"], path):
                await self.proxy.handle(scope, receive, send)
                return
            scope = _for_api(scope, path)
        await self.api(scope, receive, send)


def _for_api(scope: Scope, path: str) -> Scope:
    """HEAD is answered as GET without the body (the server drops it: it keeps its own
    scope, which still says HEAD), and a trailing slash is ignored instead of redirected
    (a redirect would build its Location from the client's Host header)."""
    if scope["method"] == "HEAD":
        scope = {**scope, "method": "GET"}
    if len(path) > 1 and path.endswith("/"):
        raw: bytes = scope.get("raw_path") or path.encode()
        scope = {**scope, "path": path.rstrip("/") or "/", "raw_path": raw.rstrip(b"/") or b"/"}
    return scope


def _build_api(registry: Registry, upstream: UpstreamClient, telemetry: Telemetry,
               watch: bool) -> FastAPI:
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
            await upstream.close()
            await run_bounded(telemetry.shutdown, 5.0)  # flush spans, metrics and logs

    api = FastAPI(
        title="modelberth",
        version=__version__,
        summary="One OpenAI-compatible endpoint in front of many local model servers.",
        lifespan=lifespan,
        redirect_slashes=False,
        # Served by api/health.py behind the same guard as /health.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    api.state.registry = registry
    api.state.telemetry = telemetry
    errors.install(api)
    api.include_router(health.router)
    api.include_router(openai.router)
    api.include_router(admin.router)
    return api


def create_app(config: Config, config_path: Path | None = None,
               watch: bool = False) -> ModelberthApp:
    return ModelberthApp(config, config_path, watch)
