"""API keys: Bearer or x-api-key, compared in constant time."""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Sequence

from modelberth.errors import APIError

AUTH_HEADERS = (b"authorization", b"x-api-key")


def presented_key(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer":
                return token.strip()
        elif lowered == b"x-api-key":
            return value.decode("latin-1").strip()
    return None


def key_allowed(key: str | None, keys: Sequence[str]) -> bool:
    if not keys:
        return True
    if key is None:
        return False
    matched = False
    for candidate in keys:  # no early exit: the time taken does not tell which key matched
        matched |= hmac.compare_digest(key.encode(), candidate.encode())
    return matched


def check(headers: Iterable[tuple[bytes, bytes]], keys: Sequence[str]) -> None:
    if keys and not key_allowed(presented_key(headers), keys):
        raise APIError(
            401,
            "Invalid or missing API key. Send it as 'Authorization: Bearer <key>'.",
            type="invalid_request_error",
            code="invalid_api_key",
        )
