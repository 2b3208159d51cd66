"""The proxy's errors in OpenAI's shape: as a JSON body, or as the SSE `error` event that
ends a stream already under way."""

from __future__ import annotations

import json

from modelberth.errors import APIError
from modelberth.models.model import Model
from modelberth.proxy.asgi import Headers
from modelberth.upstream_client import UpstreamTimeout


def too_large(limit: int) -> APIError:
    return APIError(
        413,
        f"Request body is larger than the limit of {limit} bytes (server.max_body_mb).",
        code="request_too_large",
    )


def upstream_error(model: Model, exc: BaseException, mid_stream: bool = False) -> APIError:
    when = "during the response" if mid_stream else "before answering"
    detail = str(exc) or type(exc).__name__
    if model.last_error:
        detail += f"; {model.last_error.splitlines()[0]}"
    return APIError(
        502,
        f"Upstream for model '{model.name}' failed {when}: {detail}",
        type="server_error",
        code="upstream_error",
    )


def timeout_error(model: Model, exc: UpstreamTimeout, mid_stream: bool = False) -> APIError:
    when = "during the response" if mid_stream else "before answering"
    return APIError(
        504,
        f"Upstream for model '{model.name}' timed out {when}: {exc}",
        type="server_error",
        code="upstream_timeout",
    )


def failure(model: Model, exc: BaseException, mid_stream: bool = False) -> APIError:
    """The error for an upstream call that failed; a timeout also counts towards the
    model's `max_timeouts` (upstream_timed_out)."""
    if isinstance(exc, UpstreamTimeout):
        model.upstream_timed_out(str(exc))
        return timeout_error(model, exc, mid_stream)
    return upstream_error(model, exc, mid_stream)


def sse_error_event(error: APIError) -> bytes:
    """The `error` event that ends an SSE answer that has already started."""
    return f"event: error\ndata: {json.dumps(error.body())}\n\n".encode()


def error_body(error: APIError) -> bytes:
    return json.dumps(error.body()).encode()


def error_headers(error: APIError) -> Headers:
    headers = [(b"content-type", b"application/json")]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    return headers
