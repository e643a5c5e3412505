"""One error tree, problem+json everywhere, and docs/errors.md lists every code."""

from __future__ import annotations

import re
from pathlib import Path

import waystation.app  # noqa: F401 - imports every slice, so every code is registered
from tests.helpers import StationHandle
from waystation.errors import ERROR_CODES

DOCS = Path(__file__).resolve().parents[1] / "docs" / "errors.md"


def test_every_error_code_is_documented() -> None:
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", DOCS.read_text()))
    missing = sorted(set(ERROR_CODES) - documented)
    assert not missing, f"add these codes to docs/errors.md: {missing}"


def test_codes_are_stable_upper_snake_case() -> None:
    for code, (status, title) in ERROR_CODES.items():
        assert re.fullmatch(r"[A-Z][A-Z0-9_]+", code)
        assert 400 <= status <= 599 and title


async def test_unknown_route_is_problem_json(station: StationHandle) -> None:
    r = await station.client.get("/api/v1/no-such-thing")
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == "NOT_FOUND"


async def test_wrong_method_is_problem_json(station: StationHandle) -> None:
    r = await station.client.put("/api/v1/auth/login", json={})
    assert r.status_code == 405
    assert r.json()["code"] == "METHOD_NOT_ALLOWED"


async def test_validation_error_names_the_field_but_not_the_value(station: StationHandle) -> None:
    r = await station.client.post(
        "/api/v1/auth/login", json={"username": "x" * 100, "password": "hunter2-secret"}
    )
    assert r.status_code == 422
    body = r.json()
    assert body["code"] == "VALIDATION_FAILED"
    assert "username" in body["detail"]
    assert "hunter2-secret" not in r.text


async def test_malformed_json_body_is_a_422_problem(station: StationHandle) -> None:
    r = await station.client.post(
        "/api/v1/auth/login", content=b"{oops", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422
    assert r.json()["code"] == "VALIDATION_FAILED"


async def test_unexpected_exception_is_a_generic_500_without_internals(station: StationHandle) -> None:
    from fastapi import APIRouter

    router = APIRouter()

    @router.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internal detail /etc/passwd")

    # Ahead of the web UI's catch-all route, which would otherwise answer /boom with the app's page.
    station.app.router.routes[0:0] = router.routes
    r = await station.client.get("/boom")
    assert r.status_code == 500
    assert r.json()["code"] == "INTERNAL_ERROR"
    assert "secret internal detail" not in r.text
    assert "Traceback" not in r.text
