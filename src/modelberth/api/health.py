"""GET /health: is modelberth up, and how are its models."""

from __future__ import annotations

from collections import Counter
from typing import Any

from fastapi import APIRouter, Request

from modelberth import __version__, auth
from modelberth.api.deps import registry

router = APIRouter(tags=["health"])


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    """Liveness, models per state, and each runtime's health (docker: engine reachable)."""
    reg = registry(request)
    server = reg.config.server
    if server.protect_health:
        auth.check(request.scope["headers"], [*server.api_keys, *server.admin_keys])
    states = Counter(m.state.value for m in reg.models.values())
    runtimes = await reg.runtime_health()
    status = "ok" if all(v == "ok" for v in runtimes.values()) else "degraded"
    return {"status": status, "version": __version__, "models": dict(states),
            "runtimes": runtimes}
