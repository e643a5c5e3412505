"""Serve the built web UI (`web/` → `src/waystation/web/dist/`) at `/`, with the history fallback.

Hashed files under `/assets/` are cached for a year (`immutable`); `index.html` is always revalidated
(`no-cache`) so a new build is picked up at once. Without a build, the small landing page stays.
The fallback route refuses the paths other routers own (`/api`, `/mcp`, probes), also ones mounted
after it, so an unknown API path still answers a problem+json 404 instead of the page.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Match, Route
from starlette.types import Scope

from waystation.web.pages import landing, setup_page

DIST = Path(__file__).parent / "dist"

#: Paths the SPA never answers: their own routers do (or their 404 does).
RESERVED_PREFIXES = ("/api", "/mcp", "/healthz", "/readyz", "/metrics")

IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
SHORT = "public, max-age=3600"

# Some minimal images lack these; the browser refuses module scripts served as text/plain.
mimetypes.add_type("text/javascript", ".js")
mimetypes.add_type("text/css", ".css")
mimetypes.add_type("image/svg+xml", ".svg")


def is_reserved(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in RESERVED_PREFIXES)


class SpaRoute(Route):
    """A GET route that does not match reserved paths, so routes registered later still get them."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope.get("type") == "http" and is_reserved(scope.get("path", "")):
            return Match.NONE, {}
        return super().matches(scope)


def _inside(root: Path, relative: str) -> Path | None:
    """`root/relative` if it is a file inside root (no `..` escapes), else None."""
    try:
        candidate = (root / relative).resolve()
        candidate.relative_to(root.resolve())
    except (ValueError, OSError):
        return None
    return candidate if candidate.is_file() else None


def make_handler(dist: Path) -> Callable[[Request], Awaitable[Response]]:
    async def serve(request: Request) -> Response:
        path = request.path_params.get("path", "")
        index = dist / "index.html"
        if not index.is_file():
            # No build: keep the build-free pages (landing and first-run setup).
            if path == "":
                return Response(await landing(), media_type="text/html")
            if path == "setup":
                return Response(await setup_page(), media_type="text/html")
            raise HTTPException(404, "Not Found")
        if path.startswith("assets/"):
            asset = _inside(dist, path)
            if asset is None:
                raise HTTPException(404, "Not Found")  # a stale hashed name: never answer the page
            return FileResponse(asset, headers={"Cache-Control": IMMUTABLE})
        if path and "/" not in path and (top := _inside(dist, path)) is not None and path != "index.html":
            return FileResponse(top, headers={"Cache-Control": SHORT})  # favicon and friends
        return FileResponse(index, media_type="text/html", headers={"Cache-Control": REVALIDATE})

    return serve


def install_web(app: FastAPI, dist: Path = DIST) -> None:
    """Add the UI routes; call after every other router (it answers whatever they do not)."""
    handler = make_handler(dist)
    app.router.routes.append(
        SpaRoute("/{path:path}", handler, methods=["GET", "HEAD"], include_in_schema=False)
    )
