"""Management API: model status, start/stop/restart, logs (the models' and modelberth's
own), resources, reload and the live event stream."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from modelberth.api.deps import registry, require_admin_key, server_log
from modelberth.config import ConfigError
from modelberth.errors import APIError
from modelberth.models.model import Model
from modelberth.models.tasks import swallow_outcome
from modelberth.runtimes.logbuffer import LogBuffer, LogLine

_HEARTBEAT = 15.0  # seconds between comment lines on a quiet /api/events stream

router = APIRouter(prefix="/api", tags=["management"], dependencies=[Depends(require_admin_key)])


@router.get("/models")
async def list_models(request: Request) -> dict[str, Any]:
    """The state of every configured model."""
    reg = registry(request)
    return {"models": [reg.model_status(m) for m in reg.models.values()]}


@router.get("/models/{name}")
async def get_model(name: str, request: Request) -> dict[str, Any]:
    reg = registry(request)
    return reg.model_status(reg.require(name))


async def _act(
    model: Model, action: Callable[[], Coroutine[Any, Any, None]], wait: bool
) -> JSONResponse:
    if not wait:
        task: asyncio.Task[None] = asyncio.create_task(action())
        task.add_done_callback(swallow_outcome)  # it shows in state and last_error
        await asyncio.sleep(0)  # let the action take its first step, so the state shows it
        return JSONResponse(model.status(), status_code=202)
    await action()
    return JSONResponse(model.status())


def _managed(request: Request, name: str, action: str) -> Model:
    """The model, if modelberth runs it: a remote endpoint (runtime: remote) is always ready
    and has nothing to start, stop or restart, which is a conflict with its kind (409)."""
    model = registry(request).require(name)
    if model.spec.remote is not None:
        raise APIError(
            409,
            f"Model '{name}' is a remote endpoint ({model.spec.remote.base_url})"
            f": it is always ready and modelberth cannot {action} it.",
            code="remote_model",
        )
    return model


@router.post("/models/{name}/start")
async def start_model(name: str, request: Request, wait: bool = True) -> JSONResponse:
    """Start the model (no-op if ready); with wait=true, answer once it is healthy. 409 for
    a remote endpoint."""
    model = _managed(request, name, "start")
    if not wait:
        model.start_soon()
        return JSONResponse(model.status(), status_code=202)
    return await _act(model, model.start, wait)


@router.post("/models/{name}/stop")
async def stop_model(name: str, request: Request, wait: bool = True) -> JSONResponse:
    """Stop the model after its in-flight requests finish (bounded by drain_timeout); 409
    for a remote endpoint."""
    model = _managed(request, name, "stop")
    return await _act(model, model.stop, wait)


@router.post("/models/{name}/restart")
async def restart_model(name: str, request: Request, wait: bool = True) -> JSONResponse:
    """Stop, then start the model; 409 for a remote endpoint."""
    model = _managed(request, name, "restart")
    return await _act(model, model.restart, wait)


def _render(line: LogLine, as_json: bool) -> str:
    if as_json:
        return json.dumps({"at": line.at, "stream": line.stream, "text": line.text}) + "\n"
    return line.text + "\n"


@router.get("/models/{name}/logs")
async def model_logs(
    name: str,
    request: Request,
    follow: bool = False,
    tail: int = Query(200, ge=0, le=100_000),
    format: str = Query("text", pattern="^(text|json)$"),
) -> StreamingResponse:
    """The upstream's recent output; follow=true keeps streaming new lines."""
    return _log_stream(registry(request).require(name).logs, follow, tail, format == "json")


def _log_stream(logs: LogBuffer, follow: bool, tail: int, as_json: bool) -> StreamingResponse:
    media = "application/x-ndjson" if as_json else "text/plain; charset=utf-8"

    async def lines() -> AsyncIterator[str]:
        if not follow:
            for line in logs.tail(tail):
                yield _render(line, as_json)
            return
        async for line in logs.follow(tail):
            yield _render(line, as_json)

    return StreamingResponse(
        lines(), media_type=media, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


@router.post("/stop-all")
async def stop_all(request: Request, wait: bool = True) -> JSONResponse:
    """Stop every model, each after its in-flight requests (bounded by drain_timeout); remote
    endpoints stay ready (nothing of theirs runs here)."""
    models = [m for m in registry(request).models.values() if m.spec.remote is None]

    async def stop_each() -> None:
        await asyncio.gather(*(model.stop() for model in models))

    if not wait:
        task = asyncio.create_task(stop_each())
        task.add_done_callback(swallow_outcome)
        await asyncio.sleep(0)  # let the stops take their first step, so the states show it
        return JSONResponse({"models": [m.status() for m in models]}, status_code=202)
    await stop_each()
    return JSONResponse({"models": [m.status() for m in models]})


@router.get("/logs")
async def own_logs(
    request: Request,
    follow: bool = False,
    tail: int = Query(200, ge=0, le=100_000),
    format: str = Query("text", pattern="^(text|json)$"),
) -> StreamingResponse:
    """modelberth's own recent log lines (in json, `stream` is the level); follow=true keeps
    streaming new lines."""
    return _log_stream(server_log(request).buffer, follow, tail, format == "json")


@router.get("/resources")
async def resources(request: Request) -> dict[str, Any]:
    """Host RAM and CPU, every GPU (NVML), and each model's RAM/VRAM: measured and estimated."""
    return await registry(request).resources()


@router.post("/reload")
async def reload_config(request: Request) -> dict[str, Any]:
    """Re-read the config file. Invalid config: 400 with every error; the old one stays."""
    reg = registry(request)
    try:
        result = await reg.reload_from_file()
    except ConfigError as exc:
        raise APIError(
            400,
            exc.render(),
            code="invalid_config",
            extra={"issues": [asdict(issue) for issue in exc.issues]},
        ) from None
    return asdict(result)


@router.get("/events")
async def events(request: Request) -> StreamingResponse:
    """Server-sent events: `state` (every model state change), `eviction` (a model stopped to
    make room, with the reason), `start_progress` (while a model loads: each second and at
    each new phase, with percent, eta_seconds and phase; a last one at 100 once ready) and
    `request` (each finished request, as GET /api/requests shows it)."""
    bus = registry(request).events

    async def stream() -> AsyncIterator[str]:
        yield f": connected {time.time():.3f}\n\n"
        async for event in bus.subscribe(heartbeat=_HEARTBEAT):
            if event is None:
                yield f": alive {time.time():.3f}\n\n"
            else:
                yield f"event: {event.kind}\ndata: {json.dumps(event.as_dict())}\n\n"

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
