"""Every error the API returns has OpenAI's shape {"error": {message, type, param, code}}."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from modelberth.errors import APIError

_TYPES = {
    401: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    429: "rate_limit_error",
}
_CODES = {401: "invalid_api_key", 404: "not_found", 405: "method_not_allowed"}


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    kind = _TYPES.get(
        exc.status_code, "server_error" if exc.status_code >= 500 else "invalid_request_error"
    )
    message = str(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = f"No route for {request.method} {request.url.path}."
    if exc.status_code == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}."
    error = APIError(
        exc.status_code,
        message,
        type=kind,
        code=_CODES.get(exc.status_code),
        headers=dict(exc.headers or {}),
    )
    return error_response(error)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    param = ".".join(str(p) for p in first["loc"])
    return error_response(
        APIError(400, f"{param}: {first['msg']}", param=param, code="invalid_request")
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
