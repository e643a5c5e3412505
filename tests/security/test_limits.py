"""Abuse limits with their real defaults: login rate limits per address and per username, the other
limited routes, and the request body size limit (declared and streamed)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from tests.helpers import StationHandle, start_station

PROBLEM = "application/problem+json"


def assert_rate_limited(r: httpx.Response) -> int:
    assert r.status_code == 429, r.text
    assert r.headers["content-type"] == PROBLEM
    body = r.json()
    assert body["code"] == "RATE_LIMITED" and body["status"] == 429
    retry_after = int(r.headers["Retry-After"])  # whole seconds
    assert 1 <= retry_after <= 60 and body["retry_after"] == retry_after
    return retry_after


async def login(station: StationHandle, username: str, password: str, **headers: str) -> httpx.Response:
    return await station.client.post(
        "/api/v1/auth/login", json={"username": username, "password": password}, headers=headers
    )


async def test_failed_logins_from_one_address_are_limited(station: StationHandle) -> None:
    await station.owner_headers()
    # Ten attempts a minute per address (defaults), whatever the username; X-Forwarded-For is not
    # believed without a trusted proxy, so changing it does not help.
    for i in range(10):
        r = await login(station, f"guess{i}", "wrong-password", **{"X-Forwarded-For": f"10.0.0.{i}"})
        assert r.status_code == 401 and r.json()["code"] == "INVALID_CREDENTIALS"
    assert_rate_limited(await login(station, "guess-more", "wrong-password"))
    # While limited, even the right password is refused: the limit comes before the password check.
    assert_rate_limited(await login(station, "owner", "owner-password-1"))
    # Other routes are not affected.
    r = await station.client.get("/api/v1/auth/me", headers=await station.owner_headers())
    assert r.status_code == 200


async def test_one_username_is_limited_before_the_address(station: StationHandle) -> None:
    await station.owner_headers()
    for _ in range(5):
        r = await login(station, "owner", "not-the-password")
        assert r.status_code == 401
    assert_rate_limited(await login(station, "owner", "owner-password-1"))
    assert_rate_limited(await login(station, "OWNER", "owner-password-1"))  # same name, other case
    # The same address may still try another account (6 of its 10 attempts used).
    r = await login(station, "someone-else", "not-the-password")
    assert r.status_code == 401 and r.json()["code"] == "INVALID_CREDENTIALS"


async def test_username_limit_holds_across_forwarded_addresses(settings_factory: Any) -> None:
    async with start_station(settings_factory(trusted_proxies="127.0.0.1")) as station:
        await station.owner_headers()
        for i in range(5):
            r = await login(station, "owner", "not-the-password", **{"X-Forwarded-For": f"203.0.113.{i}"})
            assert r.status_code == 401
        r = await login(station, "owner", "owner-password-1", **{"X-Forwarded-For": "198.51.100.7"})
        assert_rate_limited(r)
        # Behind the trusted proxy each forwarded client has its own address budget.
        r = await login(station, "owner", "owner-password-1", **{"X-Forwarded-For": "198.51.100.7"})
        assert_rate_limited(r)
        r = await login(station, "other", "not-the-password", **{"X-Forwarded-For": "198.51.100.7"})
        assert r.status_code == 401


async def test_successful_logins_within_the_limit_work(station: StationHandle) -> None:
    await station.owner_headers()
    for _ in range(5):
        r = await login(station, "owner", "owner-password-1")
        assert r.status_code == 200, r.text


async def test_setup_refresh_bind_and_token_creation_are_limited(station: StationHandle) -> None:
    owner = await station.owner_headers()  # one setup call
    for _ in range(9):
        r = await station.client.post(
            "/api/v1/auth/setup", json={"token": "x" * 20, "username": "late", "password": "late-password"}
        )
        assert r.status_code in (403, 409), r.text
    assert_rate_limited(
        await station.client.post(
            "/api/v1/auth/setup", json={"token": "x" * 20, "username": "late", "password": "late-password"}
        )
    )

    for _ in range(30):
        r = await station.client.post("/api/v1/auth/refresh", json={"refresh_token": "wsr_" + "x" * 40})
        assert r.status_code == 401
    assert_rate_limited(
        await station.client.post("/api/v1/auth/refresh", json={"refresh_token": "wsr_" + "x" * 40})
    )

    bind = {"bind_token": "wsb_" + "x" * 30}
    for _ in range(10):
        r = await station.client.post("/api/v1/client/bind", json=bind)
        assert r.status_code == 404 and r.json()["code"] == "BIND_TOKEN_INVALID"
    assert_rate_limited(await station.client.post("/api/v1/client/bind", json=bind))

    for i in range(20):
        r = await station.client.post(
            "/api/v1/tokens", headers=owner, json={"name": f"t{i}", "scopes": ["api:read"]}
        )
        assert r.status_code == 201, r.text
    assert_rate_limited(
        await station.client.post("/api/v1/tokens", headers=owner, json={"name": "t", "scopes": ["api:read"]})
    )


async def raw_request(port: int, head: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send request headers on a plain socket (no body) and read the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout=10)  # the server closes after a 413
    finally:
        writer.close()
    head_part, _, body = data.partition(b"\r\n\r\n")
    lines = head_part.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


async def test_declared_oversized_body_is_refused_before_it_is_sent(station: StationHandle) -> None:
    head = (
        b"POST /api/v1/auth/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1048577\r\n\r\n"
    )
    status, headers, body = await raw_request(station.settings.http_port, head)
    assert status == 413
    assert headers["content-type"] == PROBLEM
    problem = orjson.loads(body)
    assert problem["code"] == "PAYLOAD_TOO_LARGE" and problem["status"] == 413
    assert problem["instance"] == "/api/v1/auth/login"


async def test_streamed_oversized_body_is_cut_off(station: StationHandle) -> None:
    headers = await station.owner_headers()
    chunk = b" " * 65536

    async def body() -> AsyncIterator[bytes]:
        yield b'{"items": ['
        for _ in range(17):  # 17 x 64 KiB: just over the 1 MiB default, with no Content-Length
            yield chunk
        yield b"]}"

    r = await station.client.post(
        "/api/v1/datapoints/batch",
        headers={**headers, "Content-Type": "application/json"},
        content=body(),
    )
    assert r.status_code == 413, r.text
    assert r.headers["content-type"] == PROBLEM and r.json()["code"] == "PAYLOAD_TOO_LARGE"
    # The station is fine afterwards.
    assert (await station.client.get("/api/v1/auth/me", headers=headers)).status_code == 200


async def test_largest_datapoint_batch_fits(station: StationHandle) -> None:
    headers = await station.owner_headers()
    # 500 items (the most a batch takes) with the longest channel ids the pattern allows.
    source = "c" + "x" * 119
    items = [
        {"channel": f"flow:{source}/{'k' * 60}{i % 50:04d}", "value": i + 0.123456789, "ts": ts}
        for i, ts in enumerate(
            f"2026-11-22T10:{m:02d}:{s:02d}.123456+00:00" for m in range(50) for s in range(10)
        )
    ]
    assert len(orjson.dumps({"items": items})) > 100_000
    r = await station.client.post("/api/v1/datapoints/batch", headers=headers, json={"items": items})
    assert r.status_code == 200, r.text
    assert r.json()["received"] == 500


async def test_per_path_limit_overrides_the_default(settings_factory: Any) -> None:
    settings = settings_factory(max_body_bytes_by_path={"/api/v1/auth/*": 2048})
    async with start_station(settings) as station:
        big = {"username": "owner", "password": "p" * 200, "pad": "x" * 3000}
        r = await station.client.post("/api/v1/auth/login", json=big)
        assert r.status_code == 413 and r.json()["code"] == "PAYLOAD_TOO_LARGE"
        # Paths without an override keep the default.
        r = await station.client.post("/api/v1/tokens", json={"name": "x" * 3000, "scopes": ["api:read"]})
        assert r.status_code == 401
