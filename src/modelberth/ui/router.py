"""Serves the dashboard's static files at /ui (and redirects / there).

The files hold no data (every figure is fetched from the API by the page, with the key the
user types), so they need no key. They are sent with a strict Content-Security-Policy: no
inline script or style, nothing fetched from any other origin.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse

from modelberth.errors import APIError

STATIC = (Path(__file__).parent / "static").resolve()

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
}

router = APIRouter(tags=["ui"], include_in_schema=False)


def _not_found(path: str) -> APIError:
    return APIError(404, f"No file /ui/{path}.", code="not_found")


def _file(relative: str) -> FileResponse:
    """The static file at `relative`, only if it lies inside STATIC (no traversal, no
    symlink out of it) and has a known type."""
    try:
        target = (STATIC / relative).resolve()
    except (OSError, RuntimeError, ValueError):
        raise _not_found(relative) from None
    if not target.is_relative_to(STATIC) or not target.is_file():
        raise _not_found(relative)
    media = CONTENT_TYPES.get(target.suffix.lower())
    if media is None:
        raise _not_found(relative)
    return FileResponse(target, media_type=media, headers=HEADERS)


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/ui", status_code=307)


@router.get("/ui")
async def index() -> FileResponse:
    return _file("index.html")


@router.get("/ui/{path:path}")
async def static(path: str) -> FileResponse:
    if "\x00" in path or path.startswith("/"):
        raise _not_found(path)
    return _file(path)
