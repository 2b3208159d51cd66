"""GET /health: is modelberth up, and how are its models."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from modelberth import __version__, auth
from modelberth.api.deps import registry
from modelberth.models.registry import Registry

router = APIRouter(tags=["health"])


def _guard(request: Request) -> Registry:
    reg = registry(request)
    server = reg.config.server
    if server.protect_health:
        auth.check(request.scope["headers"], [*server.api_keys, *server.admin_keys])
    return reg


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    """Liveness, models per state, and each runtime's health (docker: engine reachable)."""
    reg = _guard(request)
    states = Counter(m.state.value for m in reg.models.values())
    runtimes = await reg.runtime_health()
    status = "ok" if all(v == "ok" for v in runtimes.values()) else "degraded"
    return {"status": status, "version": __version__, "models": dict(states), "runtimes": runtimes}


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus text: requests, latency, tokens, queue, model states, RAM/VRAM, GPUs."""
    _guard(request)
    body = await asyncio.to_thread(generate_latest, request.app.state.telemetry.prometheus)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@router.get("/openapi.json", include_in_schema=False)
async def openapi(request: Request) -> dict[str, Any]:
    _guard(request)
    schema: dict[str, Any] = request.app.openapi()
    return schema


@router.get("/docs", include_in_schema=False)
async def swagger(request: Request) -> HTMLResponse:
    _guard(request)
    return get_swagger_ui_html(openapi_url="/openapi.json", title="modelberth API")


@router.get("/redoc", include_in_schema=False)
async def redoc(request: Request) -> HTMLResponse:
    _guard(request)
    return get_redoc_html(openapi_url="/openapi.json", title="modelberth API")
