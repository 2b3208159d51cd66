"""The read-only OpenAI routes: GET /v1/models and /v1/models/{id}."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from modelberth.api.deps import registry, require_api_key
from modelberth.errors import APIError
from modelberth.models.model import Model

router = APIRouter(prefix="/v1", tags=["openai"], dependencies=[Depends(require_api_key)])


def _entry(model: Model, model_id: str) -> dict[str, Any]:
    left = model.idle_seconds_left()
    return {
        "id": model_id,
        "object": "model",
        "created": int(model.started_at or 0),
        "owned_by": "modelberth",
        "modelberth": {
            "state": model.state.value,
            "alias_of": None if model_id == model.name else model.name,
            "in_flight": model.in_flight,
            "idle_seconds_left": None if left is None else round(left, 1),
        },
    }


@router.get("/models")
async def list_models(request: Request) -> dict[str, Any]:
    """Every configured model, started or not, and its aliases."""
    data = []
    for model in registry(request).models.values():
        data.append(_entry(model, model.name))
        data += [_entry(model, alias) for alias in model.spec.aliases]
    return {"object": "list", "data": data}


@router.get("/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> dict[str, Any]:
    return _entry(registry(request).require(model_id), model_id)


@router.api_route(
    "/{path:path}", methods=["GET", "PUT", "PATCH", "DELETE"], include_in_schema=False
)
async def wrong_method(path: str, request: Request) -> None:
    raise APIError(
        405,
        f"Method {request.method} is not allowed on /v1/{path}; use POST.",
        code="method_not_allowed",
        headers={"Allow": "POST"},
    )
