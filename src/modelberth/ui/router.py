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


def _index_files() -> dict[str, tuple[Path, str]]:
    """Every servable file, by its path under /ui/, listed once at import: a request only
    looks a name up, so no path it sends can reach outside STATIC, and no file system call
    runs on the event loop to find out."""
    found = {}
    for path in sorted(STATIC.rglob("*")):
        media = CONTENT_TYPES.get(path.suffix.lower())
        if media is not None and path.is_file() and path.resolve().is_relative_to(STATIC):
            found[path.relative_to(STATIC).as_posix()] = (path, media)
    return found


FILES = _index_files()


def _file(relative: str) -> FileResponse:
    entry = FILES.get(relative)
    if entry is None:
        raise _not_found(relative)
    path, media = entry
    return FileResponse(path, media_type=media, headers=HEADERS)


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/ui", status_code=307)


@router.get("/ui")
async def index() -> FileResponse:
    return _file("index.html")


@router.get("/ui/{path:path}")
async def static(path: str) -> FileResponse:
    return _file(path)
