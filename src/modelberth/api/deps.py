"""Dependencies shared by the routers."""

from __future__ import annotations

from fastapi import Request

from modelberth import auth
from modelberth.models.registry import Registry
from modelberth.telemetry.activity import Activity
from modelberth.telemetry.history import History
from modelberth.telemetry.logs import ServerLog


def registry(request: Request) -> Registry:
    reg: Registry = request.app.state.registry
    return reg


def require_api_key(request: Request) -> None:
    auth.check(request.scope["headers"], registry(request).config.server.inference_keys)


def require_admin_key(request: Request) -> None:
    server = registry(request).config.server
    auth.check(request.scope["headers"], server.admin_keys or server.api_keys)


def activity(request: Request) -> Activity:
    found: Activity = request.app.state.activity
    return found


def history(request: Request) -> History:
    found: History = request.app.state.history
    return found


def server_log(request: Request) -> ServerLog:
    found: ServerLog = request.app.state.server_log
    return found
