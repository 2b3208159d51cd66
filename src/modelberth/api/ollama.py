"""Ollama's catalog routes: GET /api/version, /api/tags and /api/ps, POST /api/show; and its
model management routes (/api/pull, push, delete, create, copy), which answer 501: models
come from the config file. Ollama's inference routes (/api/chat, /api/generate, /api/embed,
/api/embeddings) are the proxy's (proxy/translation.py).

They take inference keys, as the OpenAI routes do (Ollama's clients are inference clients),
and answer errors in Ollama's shape, {"error": message}, which its SDK raises as
ResponseError. None of these paths is one of the management API's (/api/models...,
/api/requests...), which keep their admin keys."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from modelberth.api.deps import registry, require_api_key
from modelberth.config import ModelSpec
from modelberth.errors import APIError
from modelberth.models.model import Model
from modelberth.models.registry import Registry
from modelberth.proxy.dialects import ollama
from modelberth.proxy.translation import INFERENCE_PATHS

_MODEL_FLAGS = ("-m", "--model")


class _OllamaShaped(APIRoute):
    """Errors raised in these routes (the key check included) in Ollama's shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def shaped(request: Request) -> Response:
            try:
                return await handler(request)
            except APIError as error:
                return _error(error.status, error.message, error.headers)

        return shaped


router = APIRouter(
    prefix="/api",
    tags=["ollama"],
    route_class=_OllamaShaped,
    dependencies=[Depends(require_api_key)],
)


@router.get("/version")
async def version() -> dict[str, str]:
    return ollama.version()


@router.get("/tags")
async def tags(request: Request) -> dict[str, Any]:
    """Every configured model, started or not (aliases are not listed, but resolve)."""
    return ollama.tags(_describe(m) for m in registry(request).models.values())


@router.get("/ps")
async def ps(request: Request) -> dict[str, Any]:
    """The models that are up; `expires_at` is when the idle timer (or a keep_alive) will
    stop each."""
    return ollama.ps(_describe(m) for m in registry(request).models.values())


@router.post("/show")
async def show(request: Request) -> Response:
    body = await _body(request)
    name = body.get("model") or body.get("name")  # `name` is the older clients' field
    if not isinstance(name, str) or not name:
        return _error(400, "'model' is required: say which model to show.")
    model = _find(registry(request), name)
    if model is None:
        return _error(404, f"model '{name}' not found")
    return JSONResponse(ollama.show(_describe(model)))


async def _management(request: Request) -> Response:
    return JSONResponse(ollama.management_error(request.url.path), status_code=501)


for _route in ollama.MANAGEMENT_ROUTES:
    router.add_api_route(
        _route.removeprefix("/api"),
        _management,
        methods=["GET", "POST", "DELETE", "PUT"],
        include_in_schema=False,
    )


async def _post_only(request: Request) -> Response:
    return _error(
        405,
        f"Method {request.method} is not allowed on {request.url.path}; use POST.",
        {"Allow": "POST"},
    )


for _route in sorted(INFERENCE_PATHS):
    router.add_api_route(
        _route.removeprefix("/api"),
        _post_only,
        methods=["GET", "PUT", "PATCH", "DELETE"],
        include_in_schema=False,
    )


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(ollama.error_body(message), status_code=status, headers=headers)


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except (ValueError, RecursionError):
        body = None
    if not isinstance(body, dict):
        raise APIError(400, "The request body must be a JSON object.")
    return body


def _find(reg: Registry, name: str) -> Model | None:
    known = [n for m in reg.models.values() for n in (m.name, *m.spec.aliases)]
    resolved = ollama.resolve_name(name, known)
    return reg.get(resolved) if resolved is not None else None


def _describe(model: Model) -> dict[str, Any]:
    """The model's status, and what its weights file tells (path, size, mtime): the
    catalog's input (see ollama_catalog.py)."""
    described = model.status()
    path = _weights(model.spec)
    if path is not None:
        described["model_path"] = path
        try:
            stat = Path(path).stat()
        except OSError:
            pass
        else:
            described["size_bytes"] = stat.st_size
            described["modified_at"] = stat.st_mtime
        if path.endswith(".gguf"):
            described["format"] = "gguf"
    return described


def _weights(spec: ModelSpec) -> str | None:
    """The weights a model's command names (llama-server's -m or LLAMA_ARG_MODEL), else its
    model_path."""
    command = list(spec.command)
    for position, arg in enumerate(command[:-1]):
        if arg in _MODEL_FLAGS:
            return command[position + 1]
    for arg in command:
        if arg.startswith("--model="):
            return arg.removeprefix("--model=")
    return spec.env.get("LLAMA_ARG_MODEL") or spec.model_path
