"""GET /health: is modelberth up, and how are its models."""

from __future__ import annotations

from collections import Counter
from typing import Any

from fastapi import APIRouter, Request

from modelberth import __version__
from modelberth.api.deps import registry

router = APIRouter(tags=["health"])


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    reg = registry(request)
    states = Counter(m.state.value for m in reg.models.values())
    runtimes = await reg.runtime_health()
    status = "ok" if all(v == "ok" for v in runtimes.values()) else "degraded"
    return {"status": status, "version": __version__, "models": dict(states),
            "runtimes": runtimes}
