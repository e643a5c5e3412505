"""Shared bits of the rules tests."""

from __future__ import annotations

from typing import Any

from tests.helpers import StationHandle, wait_for

# Small backoffs so webhook retries happen within a test.
FAST = {"delivery_backoff_base_seconds": 0.05, "delivery_poll_seconds": 0.05}


async def create_rule(
    station: StationHandle, headers: dict[str, str] | None = None, expect: int = 201, **body: Any
) -> dict[str, Any]:
    r = await station.client.post(
        "/api/v1/rules", headers=headers or await station.owner_headers(), json=body
    )
    assert r.status_code == expect, r.text
    return dict(r.json())


def temperature_rule(device_id: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "Too warm",
        "channel": f"device:{device_id}/temperature",
        "operator": "gt",
        "threshold": 30,
        "actions": [{"type": "log"}],
    }
    body.update(extra)
    return body


async def firings(station: StationHandle, rule_id: int, **params: Any) -> list[dict[str, Any]]:
    r = await station.client.get(
        f"/api/v1/rules/{rule_id}/firings", headers=await station.owner_headers(), params=params
    )
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


async def wait_firings(station: StationHandle, rule_id: int, count: int, timeout: float = 10.0) -> list[dict]:
    """Wait until the rule has `count` firings whose actions all finished; newest first."""

    async def done() -> list[dict] | None:
        items = await firings(station, rule_id)
        if len(items) >= count and all(f["status"] != "running" for f in items):
            return items
        return None

    return await wait_for(done, timeout=timeout, message=f"{count} firing(s) of rule {rule_id}")
