"""Dependencies shared by the routers."""

from __future__ import annotations

from fastapi import Request

from modelberth import auth
from modelberth.models.registry import Registry


def registry(request: Request) -> Registry:
    reg: Registry = request.app.state.registry
    return reg


def require_api_key(request: Request) -> None:
    auth.check(request.scope["headers"], registry(request).config.server.inference_keys)


def require_admin_key(request: Request) -> None:
    server = registry(request).config.server
    auth.check(request.scope["headers"], server.admin_keys or server.api_keys)
