"""The running config, as it may be shown (GET /api/config), and how the last reload went."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from modelberth.api.deps import registry, require_admin_key
from modelberth.config.redact import redacted

router = APIRouter(prefix="/api", tags=["management"], dependencies=[Depends(require_admin_key)])


@router.get("/config")
async def get_config(request: Request) -> dict[str, Any]:
    """The running config with its secrets replaced by `***`, the file it came from, and
    the last reload (API, SIGHUP or --watch): what changed, or why it was rejected, with
    line numbers."""
    reg = registry(request)
    last = reg.last_reload
    return {
        "path": str(reg.config_path) if reg.config_path else None,
        "config": redacted(reg.config),
        "last_reload": last.as_dict() if last else None,
    }
