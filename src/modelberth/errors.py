"""The errors that reach a client, in OpenAI's shape, and the lifecycle's own."""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    """An error that reaches the client in OpenAI's shape {"error": {message, type, code}}."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        headers: dict[str, str] | None = None,
        param: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.headers = headers or {}
        self.param = param
        self.extra = extra  # more fields of the error object, e.g. a config's issues

    def body(self) -> dict[str, Any]:
        error = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        if self.extra:
            error.update(self.extra)
        return {"error": error}


def model_not_found(name: str) -> APIError:
    return APIError(
        404,
        f"The model '{name}' does not exist or is not configured in modelberth.",
        code="model_not_found",
    )


class StartFailed(APIError):
    def __init__(self, model: str, reason: str, retry_after: int | None = None) -> None:
        super().__init__(
            503,
            f"Model '{model}' failed to start: {reason}",
            type="server_error",
            code="model_start_failed",
            headers={"Retry-After": str(retry_after)} if retry_after else None,
        )
        self.reason = reason


class StartTimeout(APIError):
    """A start gave up: `limit` names the timeout that fired, start_timeout (the hard cap)
    or stall_timeout (nothing moved for that long)."""

    def __init__(
        self, model: str, seconds: float, reason: str = "", limit: str = "start_timeout"
    ) -> None:
        tail = f": {reason}" if reason else ""
        head = (
            f"stalled while starting: nothing moved for {seconds:g}s"
            if limit == "stall_timeout"
            else f"did not become healthy within {seconds:g}s"
        )
        super().__init__(
            504,
            f"Model '{model}' {head} ({limit}){tail}",
            type="server_error",
            code="model_start_timeout",
        )
        self.limit = limit


class QueueFull(APIError):
    def __init__(self, model: str, limit: int, retry_after: int) -> None:
        super().__init__(
            429,
            f"Too many requests waiting for model '{model}' (max_queue={limit}); retry later.",
            type="rate_limit_error",
            code="queue_full",
            headers={"Retry-After": str(retry_after)},
        )
