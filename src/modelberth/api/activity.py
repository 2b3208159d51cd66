"""What happened lately: the last requests (GET /api/requests) and the last 15 minutes of
the machine (GET /api/history), for the dashboard and for anyone asking why a request was
slow."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request

from modelberth.api.deps import activity, history, require_admin_key
from modelberth.errors import APIError

router = APIRouter(prefix="/api", tags=["activity"], dependencies=[Depends(require_admin_key)])


@router.get("/requests")
async def list_requests(
    request: Request,
    model: str | None = Query(None, description="A model's name or an alias it was asked by."),
    status: str | None = Query(
        None,
        pattern=r"^(ok|error|[1-5]\d\d)$",
        description="'ok' (below 400), 'error' (400 and above) or a status code.",
    ),
    limit: int = Query(100, ge=1, le=10_000),
) -> dict[str, Any]:
    """The last requests through the proxy, newest first (`activity.size` are kept)."""
    ring = activity(request)
    return {
        "size": ring.size,
        "capture_bodies": ring.capture_bodies,
        "requests": [r.as_dict() for r in ring.newest(model, status, limit)],
    }


@router.get("/requests/{request_id}")
async def get_request(request_id: int, request: Request) -> dict[str, Any]:
    """One request, with its bodies if `activity.capture_bodies` was on when it ran."""
    record = activity(request).get(request_id)
    if record is None:
        raise APIError(
            404, f"Request {request_id} is not among the last ones kept.", code="request_not_found"
        )
    return record.detail()


@router.get("/history")
async def get_history(request: Request) -> dict[str, Any]:
    """Host RAM, GPU memory, requests/s and queue length over the last 15 minutes, sampled
    every few seconds, and the evictions in that window."""
    return history(request).report()
