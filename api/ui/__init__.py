"""The web UI: hand-written static files (vanilla ES modules, CSS, SVG charts; no build step, no
CDN) served by the API app itself.

``mount_ui(app)`` adds two routes: ``GET /`` (index.html) and ``GET /ui/{asset}`` (a file directly
in ``static/`` with a known suffix, by a plain name: nothing outside that folder can be served,
and the metrics label stays ``/ui/{asset}``). Both answer with a strict
Content-Security-Policy (``'self'`` only, no inline scripts or styles). The UI talks to
``/api/v1`` with the bearer token the user logs in with; it never shadows ``/api/v1``,
``/healthz``, ``/readyz`` or ``/metrics``.
"""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse

from service.errors import NotFound

STATIC_DIR = Path(__file__).parent / "static"

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
    ".png": "image/png",
}


_ASSET_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")


def _asset(static_dir: Path, name: str) -> Path | None:
    """A servable file by name: a plain file of a known type directly in ``static_dir``."""
    if not _ASSET_NAME.match(name) or name == "index.html":
        return None
    path = static_dir / name
    return path if path.suffix in MEDIA_TYPES and path.is_file() else None


def _file(path: Path) -> FileResponse:
    return FileResponse(
        path,
        media_type=MEDIA_TYPES[path.suffix],
        headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"},
    )


def ui_router(static_dir: Path = STATIC_DIR) -> APIRouter:
    index = static_dir / "index.html"
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    def ui_index() -> FileResponse:
        """The single page; its routes are hash routes (#/jobs, #/jobs/<id>, ...)."""
        return _file(index)

    @router.get("/ui/{asset}")
    def ui_asset(asset: str) -> FileResponse:
        path = _asset(static_dir, asset)
        if path is None:
            raise NotFound(f"no UI asset {asset!r}")
        return _file(path)

    return router


def mount_ui(app: FastAPI, static_dir: Path = STATIC_DIR) -> None:
    """Serve the web UI at ``/`` (call after the API routers are included)."""
    app.include_router(ui_router(static_dir))
