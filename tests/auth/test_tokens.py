"""API tokens and device tokens: scoped, shown once, stored hashed, revocable; batch ingest accepts both."""

from __future__ import annotations

from sqlalchemy import select

from tests.helpers import StationHandle
from waystation.auth.models import ApiToken
from waystation.devices.models import Device

ITEM = {"channel": "flow:lab/x", "value": 1.5}


async def test_api_token_is_shown_once_and_stored_hashed(station: StationHandle) -> None:
    owner = await station.owner_headers()
    r = await station.client.post(
        "/api/v1/tokens", headers=owner, json={"name": "script", "scopes": ["api:write"]}
    )
    assert r.status_code == 201, r.text
    created = r.json()
    token = created["token"]
    assert token.startswith("wst_") and created["prefix"] == token[:10]
    listed = (await station.client.get("/api/v1/tokens", headers=owner)).json()["items"]
    assert token not in str(listed) and listed[0]["name"] == "script"
    async with station.ctx.db.session() as session:
        stored = (await session.scalars(select(ApiToken.token_hash))).all()
    assert token not in stored and len(stored[0]) == 64
    bearer = {"Authorization": f"Bearer {token}"}
    assert (await station.client.get("/api/v1/devices", headers=bearer)).status_code == 200
    r = await station.client.post("/api/v1/datapoints/batch", headers=bearer, json={"items": [ITEM]})
    assert r.status_code == 200 and r.json()["stored"] == 1
    # api:write acts as a member: no device management.
    assert (
        await station.client.post("/api/v1/devices", headers=bearer, json={"type": "light"})
    ).status_code == 403
    listed = (await station.client.get("/api/v1/tokens", headers=owner)).json()["items"]
    assert listed[0]["last_used_at"] is not None
    assert (await station.client.delete(f"/api/v1/tokens/{created['id']}", headers=owner)).status_code == 204
    r = await station.client.get("/api/v1/devices", headers=bearer)
    assert r.status_code == 401 and r.json()["code"] == "TOKEN_INVALID"


async def test_read_scope_cannot_write_and_mcp_scope_cannot_use_rest(station: StationHandle) -> None:
    owner = await station.owner_headers()
    read = (
        await station.client.post("/api/v1/tokens", headers=owner, json={"name": "r", "scopes": ["api:read"]})
    ).json()["token"]
    mcp = (
        await station.client.post("/api/v1/tokens", headers=owner, json={"name": "m", "scopes": ["mcp:read"]})
    ).json()["token"]
    r = await station.client.post(
        "/api/v1/datapoints/batch", headers={"Authorization": f"Bearer {read}"}, json={"items": [ITEM]}
    )
    assert r.status_code == 403
    assert (
        await station.client.get("/api/v1/devices", headers={"Authorization": f"Bearer {read}"})
    ).status_code == 200
    assert (
        await station.client.get("/api/v1/devices", headers={"Authorization": f"Bearer {mcp}"})
    ).status_code == 403
    r = await station.client.post("/api/v1/tokens", headers=owner, json={"name": "x", "scopes": ["root"]})
    assert r.status_code == 422
    member = await station.user_headers("mel", "member")
    r = await station.client.post(
        "/api/v1/tokens", headers=member, json={"name": "x", "scopes": ["api:read"]}
    )
    assert r.status_code == 403


async def test_device_token_writes_only_its_own_channels(station: StationHandle) -> None:
    owner = await station.owner_headers()
    r = await station.client.post("/api/v1/devices", headers=owner, json={"id": "dt-1", "type": "sensor"})
    token = r.json()["device_token"]
    assert token.startswith("wsd_")
    assert "device_token" not in (await station.client.get("/api/v1/devices/dt-1", headers=owner)).json()
    async with station.ctx.db.session() as session:
        assert await session.scalar(select(Device.token_hash).where(Device.id == "dt-1")) != token
    dev = {"X-Device-Token": token}
    r = await station.client.post(
        "/api/v1/datapoints/batch",
        headers=dev,
        json={"items": [{"channel": "device:dt-1/value", "value": 3}]},
    )
    assert r.status_code == 200 and r.json()["stored"] == 1
    r = await station.client.post(
        "/api/v1/datapoints/batch",
        headers=dev,
        json={"items": [{"channel": "device:other/value", "value": 3}]},
    )
    assert r.status_code == 403
    # A device token opens nothing else.
    assert (await station.client.get("/api/v1/devices", headers=dev)).status_code == 401
    r = await station.client.post("/api/v1/devices/dt-1/token", headers=owner)
    new = r.json()["device_token"]
    assert new != token
    r = await station.client.post(
        "/api/v1/datapoints/batch",
        headers=dev,
        json={"items": [{"channel": "device:dt-1/value", "value": 4}]},
    )
    assert r.status_code == 401 and r.json()["code"] == "TOKEN_INVALID"
    r = await station.client.post(
        "/api/v1/datapoints/batch",
        headers={"X-Device-Token": new},
        json={"items": [{"channel": "device:dt-1/value", "value": 4}]},
    )
    assert r.status_code == 200
