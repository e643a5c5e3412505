"""Schemathesis over every operation of `/api/v1/openapi.json`, against the real station, as its owner.

Checks: no 5xx ever, and every 4xx/5xx is `application/problem+json` with a `code`. Examples are valid
and invalid (schemathesis' positive and negative modes), a fixed number per operation, derandomized, so
a run is repeatable; `WAYSTATION_FUZZ_EXAMPLES=200` digs deeper locally.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode

from tests.helpers import start_station

EXAMPLES = int(os.environ.get("WAYSTATION_FUZZ_EXAMPLES", "20"))
# About 20 s on SQLite or PostgreSQL with the default; deeper runs get time in proportion.
pytestmark = pytest.mark.timeout(120 + 5 * EXAMPLES)
# An owner name no generator will guess, so fuzzed PATCH /users/{username} cannot disable or demote the
# account the whole run is authenticated as.
OWNER, PASSWORD = "fz-owner-q7x2", "fz-owner-password-9"
# Not fuzzed: the SSE stream never ends, so every request would just sit until its timeout.
SKIPPED = {("GET", "/api/v1/events/stream")}
# Fuzzed with a fresh session each time, because they end the session they are called with.
SESSION_ENDING = {("POST", "/api/v1/auth/logout")}
# The only 5xx allowed: a documented 503 for a part this test station does not run. Broker sync is off:
# the suite's station uses a plain external Mosquitto, so WAYSTATION_BROKER_ADMIN=auto resolves to none.
EXPECTED_503_CODES = {"BROKER_SYNC_UNAVAILABLE"}


def expected_unavailable(response: schemathesis.Response) -> bool:
    if response.status_code != 503:
        return False
    try:
        return response.json().get("code") in EXPECTED_503_CODES
    except (ValueError, AttributeError):
        return False


def problem_with(response: schemathesis.Response) -> str | None:
    if response.status_code >= 500 and not expected_unavailable(response):
        return f"server error {response.status_code}: {response.text[:300]}"
    if response.status_code >= 400:
        content_type = ",".join(response.headers.get("content-type", []))
        if not content_type.startswith("application/problem+json"):
            return f"{response.status_code} with content-type {content_type!r}: {response.text[:300]}"
        try:
            body = response.json()
        except ValueError:
            return f"{response.status_code} body is not JSON: {response.text[:300]}"
        if not isinstance(body, dict) or not isinstance(body.get("code"), str):
            return f"{response.status_code} problem without a code: {response.text[:300]}"
    return None


def fuzz_operation(
    operation: Any, base_url: str, session: requests.Session, headers: Callable[[], dict[str, str]]
) -> tuple[list[str], int]:
    """Up to EXAMPLES valid and invalid calls of one operation; the first few failures and the call count."""
    found: list[str] = []
    calls = 0
    strategy = operation.as_strategy(GenerationMode.POSITIVE) | operation.as_strategy(GenerationMode.NEGATIVE)

    @hypothesis.settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: failures are collected, not raised
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.given(case=strategy)
    def run(case: Any) -> None:
        nonlocal calls
        calls += 1
        sent = headers()
        try:
            response = case.call(base_url=base_url, session=session, headers=sent, timeout=30)
        except requests.RequestException as exc:
            problem: str | None = f"request failed: {exc!r}"
        else:
            problem = problem_with(response)
        if problem and len(found) < 3:
            found.append(f"{operation.label}: {problem}\n    {case.as_curl_command(headers=sent)}")

    run()
    return found, calls


def fuzz(base_url: str) -> tuple[list[str], int]:
    """Run every operation; return the failures (with a curl line to reproduce each) and the call count."""
    session = requests.Session()

    def login() -> dict[str, str]:
        r = session.post(
            f"{base_url}/api/v1/auth/login", json={"username": OWNER, "password": PASSWORD}, timeout=30
        )
        r.raise_for_status()
        return {"Authorization": f"Bearer {r.json()['access_token']}"}

    owner = login()
    schema = schemathesis.openapi.from_url(f"{base_url}/api/v1/openapi.json", timeout=30)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 20, "the schema lists fewer operations than expected"
    failures: list[str] = []
    total = 0
    for operation in operations:
        key = (operation.method.upper(), operation.path)
        if key in SKIPPED:
            continue
        found, calls = fuzz_operation(
            operation, base_url, session, login if key in SESSION_ENDING else lambda: owner
        )
        failures.extend(found)
        total += calls
    return failures, total


@pytest.mark.slow(70)
async def test_api_fuzz(settings_factory: Any) -> None:
    # Rate limits up so the fuzzer reaches the handlers instead of a wall of 429s (tests/security covers
    # the limits with their real values).
    settings = settings_factory(
        rate_limit_login_ip="100000/minute",
        rate_limit_login_username="100000/minute",
        rate_limit_setup="100000/minute",
        rate_limit_refresh="100000/minute",
        rate_limit_token_create="100000/minute",
        rate_limit_device_token="100000/minute",
        rate_limit_bind="100000/minute",
        # Fuzzed webhooks and flow endpoints may name any host: deliveries stay on this machine.
        delivery_allowed_hosts="127.0.0.1,localhost",
    )
    async with start_station(settings) as station:
        r = await station.client.post(
            "/api/v1/auth/setup",
            json={"token": station.setup_token(), "username": OWNER, "password": PASSWORD},
        )
        assert r.status_code == 201, r.text
        started = time.monotonic()
        # Schemathesis is synchronous: it runs in a thread while the station serves on this loop.
        failures, calls = await asyncio.to_thread(fuzz, station.base_url)
        elapsed = time.monotonic() - started
    print(f"api fuzz: {calls} calls in {elapsed:.1f}s")
    assert not failures, f"{len(failures)} failing cases:\n" + "\n".join(failures)
