"""Assembles the server's one ASGI app: the proxy for inference traffic (POST /v1/*,
/upstream/* and Ollama's POST /api/chat..., a raw ASGI handler) and FastAPI for the rest."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from modelberth import __version__
from modelberth.api import activity, admin, errors, health, ollama, openai, settings
from modelberth.config import Config
from modelberth.models.registry import Registry
from modelberth.proxy.handler import Proxy
from modelberth.reload import install_sighup, watch_config
from modelberth.telemetry.activity import Activity
from modelberth.telemetry.history import History
from modelberth.telemetry.logs import ServerLog
from modelberth.telemetry.metrics import Metrics
from modelberth.telemetry.setup import run_bounded, setup_telemetry
from modelberth.ui import router as ui_router
from modelberth.upstream_client import UpstreamClient

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class ModelberthApp:
    """The composition root: builds telemetry, the registry of models, the metrics read off
    them, and the two handlers behind one ASGI callable: the proxy takes what
    `Proxy.claims`, FastAPI (`api`) everything else, the lifespan included. Each part is
    handed what it uses; nothing else reaches through another part for a service."""

    def __init__(
        self, config: Config, config_path: Path | None = None, watch: bool = False
    ) -> None:
        self.telemetry = setup_telemetry()
        self.registry = Registry(config, config_path=config_path, tracer=self.telemetry.tracer)
        spans = self.telemetry.spans
        self.metrics = Metrics(
            self.telemetry.meter,
            self.registry,
            lambda: spans.batcher.dropped if spans is not None else None,
        )
        self.telemetry.metric_sources.append(self.metrics.collect_histograms)
        self.registry.events.add_listener(self.metrics.on_state_event)
        self.activity = _activity(config, self.registry)
        registry = self.registry
        self.history = History(
            registry.monitor, registry.models.values, lambda: self.activity.total
        )
        registry.events.add_listener(self.history.on_state_event)
        self.server_log = ServerLog()
        self.upstream = UpstreamClient()  # the hot path's; health probes use aiohttp
        self.proxy = Proxy(registry, self.upstream, self.telemetry, self.metrics, self.activity)
        self.api = _build_api(self, watch)

    def end_streams(self) -> None:
        """The server is shutting down: end the streams that never end by themselves
        (/api/events, followed logs), so they do not hold up the graceful shutdown."""
        self.registry.events.close()
        self.server_log.buffer.end_followers()
        for model in self.registry.models.values():
            model.logs.end_followers()

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


def _activity(config: Config, registry: Registry) -> Activity:
    """The ring of recent requests, resized (or its capturing switched) by a reload."""

    def wanted(config: Config) -> tuple[int, bool, int]:
        ring = config.activity
        return ring.size, ring.capture_bodies, ring.capture_kb

    ring = Activity(registry.events, *wanted(config))
    registry.add_reload_listener(lambda new: ring.configure(*wanted(new)))
    return ring


def _build_api(app: ModelberthApp, watch: bool) -> FastAPI:
    registry, telemetry = app.registry, app.telemetry

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        app.server_log.attach()
        await registry.boot()
        install_sighup(registry)
        app.history.start()
        watcher = asyncio.create_task(watch_config(registry)) if watch else None
        try:
            yield
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            await app.history.stop()
            await registry.shutdown()
            await app.upstream.close()
            await run_bounded(telemetry.shutdown, 5.0)  # flush spans, metrics and logs
            app.server_log.detach()

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
    api.state.activity = app.activity
    api.state.history = app.history
    api.state.server_log = app.server_log
    errors.install(api)
    api.include_router(health.router)
    api.include_router(openai.router)
    api.include_router(ollama.router)  # /api/tags...: apart from admin's paths
    api.include_router(admin.router)
    api.include_router(activity.router)
    api.include_router(settings.router)
    api.include_router(ui_router)
    return api


def create_app(
    config: Config, config_path: Path | None = None, watch: bool = False
) -> ModelberthApp:
    return ModelberthApp(config, config_path, watch)
