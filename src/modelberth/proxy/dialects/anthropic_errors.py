"""Errors in Anthropic's shape, `{"type": "error", "error": {"type", "message"}}`: from an
HTTP status, from an OpenAI-shaped error body, and `DialectError` for a request that cannot be
translated.

Anthropic's clients pick their exception class from the HTTP status and show `error.type`, so
the status decides the type (https://docs.claude.com/en/api/errors); the upstream's own type
(llama.cpp's `exceed_context_size_error`, modelberth's `server_error`...) means nothing to
them and is kept only in the message's wording when it says more than the status.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

# Anthropic's documented types. 413 `request_too_large` is documented but missing from the SDK's
# union of error objects (it parses the body leniently, so it still reaches the client).
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",  # modelberth's 503s (start failed, shutting down) are "try later"
    504: "timeout_error",
    529: "overloaded_error",
}
_MAX_TEXT = 2000  # of a non-JSON error body, quoted in the message


class DialectError(Exception):
    """A request (or an upstream answer) that cannot be translated: answer `status` with
    `body()`, Anthropic's error shape."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message

    def body(self) -> dict[str, Any]:
        return {"type": "error", "error": {"type": self.error_type, "message": self.message}}


def invalid(message: str) -> DialectError:
    return DialectError(400, "invalid_request_error", message)


def error_type(status: int) -> str:
    """Anthropic's error type for an HTTP status ("other 4XX" are invalid_request_error)."""
    known = _TYPES.get(status)
    if known:
        return known
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def error_body(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type(status), "message": message}}


def from_openai_error(body: bytes, status: int) -> dict[str, Any]:
    """An upstream's (or modelberth's) error answer in Anthropic's shape. Takes the shapes
    seen in the wild: OpenAI's `{"error": {"message", ...}}`, `{"error": "text"}` (Ollama),
    `{"object": "error", "message"}` (older vLLM), `{"detail": ...}` (FastAPI), else the
    body's text."""
    return error_body(status, error_message(body) or f"Upstream answered HTTP {status}.")


def error_message(body: bytes | str | Mapping[str, Any]) -> str:
    """The human-readable message of an error body (or of its decoded JSON)."""
    data: Any = body
    if isinstance(body, bytes | str):
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
            return text.strip()[:_MAX_TEXT]
    if isinstance(data, Mapping):
        inner = data.get("error", data)
        if isinstance(inner, str):
            return inner
        if isinstance(inner, Mapping):
            for key in ("message", "detail"):
                if isinstance(inner.get(key), str):
                    return str(inner[key])
            if "detail" in inner:
                return json.dumps(inner["detail"], default=str)[:_MAX_TEXT]
    return json.dumps(data, default=str)[:_MAX_TEXT]


def status_of(error: Any, default: int = 500) -> int:
    """The HTTP status an in-stream error object stands for: llama.cpp puts it in `code`;
    modelberth's mid-stream errors name it (`upstream_timeout`, `upstream_error`)."""
    if isinstance(error, Mapping):
        code = error.get("code")
        if isinstance(code, int) and not isinstance(code, bool) and 400 <= code < 600:
            return code
        if code == "upstream_timeout":
            return 504
        if code == "upstream_error":
            return 502
    return default
