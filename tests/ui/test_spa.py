"""Serving the built UI: cache headers, the history fallback, and the paths it must never answer."""

from __future__ import annotations

from pathlib import Path

import httpx
from fastapi import APIRouter, FastAPI
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from tests.helpers import StationHandle
from waystation.errors import install_error_handlers
from waystation.web.spa import IMMUTABLE, REVALIDATE, install_web


def make_dist(root: Path) -> Path:
    dist = root / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text("<!doctype html><title>ui</title>")
    (dist / "assets" / "index-abc123.js").write_text("console.log(1)")
    (dist / "favicon.svg").write_text("<svg/>")
    (root / "secret.txt").write_text("outside the dist")
    return dist


def make_app(dist: Path) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    api = APIRouter(prefix="/api/v1")

    @api.get("/ping")
    async def ping() -> dict[str, str]:
        return {"pong": "yes"}

    app.include_router(api)
    install_web(app, dist)

    async def mcp(request: Request) -> PlainTextResponse:  # added after the UI, as the MCP endpoint is
        return PlainTextResponse("mcp")

    app.router.routes.append(Route("/mcp", mcp, methods=["GET"]))
    return app


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ui.test")


async def test_assets_are_immutable_and_pages_revalidate(tmp_path: Path) -> None:
    async with client(make_app(make_dist(tmp_path))) as c:
        r = await c.get("/assets/index-abc123.js")
        assert r.status_code == 200 and r.headers["cache-control"] == IMMUTABLE
        assert r.headers["content-type"].startswith("text/javascript")
        for path in ("/", "/devices/demo-0001", "/setup?token=abc", "/flows"):
            r = await c.get(path)
            assert r.status_code == 200 and r.text.startswith("<!doctype html>"), path
            assert r.headers["cache-control"] == REVALIDATE
        r = await c.get("/favicon.svg")
        assert r.status_code == 200 and "immutable" not in r.headers["cache-control"]


async def test_api_probes_and_mcp_are_never_the_page(tmp_path: Path) -> None:
    async with client(make_app(make_dist(tmp_path))) as c:
        assert (await c.get("/api/v1/ping")).json() == {"pong": "yes"}
        for path in ("/api/v1/nope", "/api", "/healthz", "/readyz", "/metrics", "/mcp/x"):
            r = await c.get(path)
            assert r.status_code == 404, path
            assert r.headers["content-type"] == "application/problem+json", path
        assert (await c.get("/mcp")).text == "mcp"  # a route added after the UI still gets its path
        missing = await c.get("/assets/index-old999.js")  # a stale hashed name: 404, not the page
        assert missing.status_code == 404
        escape = await c.get("/assets/..%2F..%2Fsecret.txt")
        assert escape.status_code == 404 and "outside" not in escape.text


async def test_without_a_build_the_landing_and_setup_pages_stay(tmp_path: Path) -> None:
    async with client(make_app(tmp_path / "no-dist")) as c:
        r = await c.get("/")
        assert r.status_code == 200 and "The station is running" in r.text
        r = await c.get("/setup")
        assert r.status_code == 200 and "Create the owner account" in r.text
        assert (await c.get("/devices")).status_code == 404


async def test_a_real_station_serves_the_build(station: StationHandle, ui_build: None) -> None:
    r = await station.client.get("/devices")
    assert r.status_code == 200 and '<div id="app">' in r.text
    assert r.headers["cache-control"] == REVALIDATE
    script = r.text.split('src="', 1)[1].split('"', 1)[0]
    assert script.startswith("/assets/")
    asset = await station.client.get(script)
    assert asset.status_code == 200 and asset.headers["cache-control"] == IMMUTABLE
    assert (await station.client.get("/api/v1/nope")).headers["content-type"] == "application/problem+json"
