"""Helpers for the snapshot tests: populate a station with one of every snapshot entity through the API,
read a database's snapshot tables, and call the snapshot routes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from tests.helpers import StationHandle
from waystation.config import Settings
from waystation.db import Database
from waystation.secrets_box import SecretBox
from waystation.snapshots import service
from waystation.snapshots.tables import SPECS

PASSPHRASE = "correct horse battery staple"


@dataclass
class Secrets:
    webhook_id: int
    webhook_secret: str
    flow_secret: str
    device_token: str
    device_password: str
    api_token: str


async def ok(response: httpx.Response, status: int = 201) -> dict[str, Any]:
    assert response.status_code == status, response.text
    return dict(response.json())


async def populate(station: StationHandle, hook_url: str) -> Secrets:
    """A second station with a member, users, a device (token and broker account), an MQTT server with a
    password, a signing flow, a rule, a webhook, a dashboard with a widget, a controller with a plugin
    instance and a mapping, an API token, settings and the audit rows all of that leaves."""
    c, owner = station.client, await station.owner_headers()
    await station.user_headers("alice", "admin")
    await station.user_headers("victor", "viewer")
    other = await ok(await c.post("/api/v1/stations", headers=owner, json={"name": "Greenhouse"}))
    r = await c.post(
        f"/api/v1/stations/{other['id']}/members",
        headers=owner,
        json={"username": "victor", "role": "member"},
    )
    assert r.status_code in (200, 201), r.text
    device = await station.create_device("climate-1", name="Living room", zone="ground floor")
    server = await ok(
        await c.post(
            "/api/v1/mqtt-servers",
            headers=owner,
            json={
                "name": "upstream",
                "host": "127.0.0.1",
                "port": 1,
                "username": "u",
                "password": "server-pw",
                "enabled": False,
            },
        )
    )
    flow = await ok(
        await c.post(
            "/api/v1/flows",
            headers=owner,
            json={"code": "push", "topic": "snap/push", "action": "POST_ENDPOINT", "endpoint_url": hook_url},
        )
    )
    await ok(
        await c.post(
            "/api/v1/flows",
            headers=owner,
            json={
                "code": "upstream",
                "topic": "up/#",
                "action": "STORE_DB",
                "mqtt_server_id": server["id"],
                "enabled": False,
            },
        )
    )
    await ok(
        await c.post(
            "/api/v1/rules",
            headers=owner,
            json={
                "name": "too warm",
                "channel": "device:climate-1/temperature",
                "operator": "gt",
                "threshold": 30,
                "actions": [{"type": "log"}],
            },
        )
    )
    hook = await ok(
        await c.post("/api/v1/webhooks", headers=owner, json={"url": hook_url, "event_types": ["device.*"]})
    )
    board = await ok(await c.post("/api/v1/dashboards", headers=owner, json={"name": "Home", "shared": True}))
    await ok(
        await c.post(
            f"/api/v1/dashboards/{board['id']}/widgets",
            headers=owner,
            json={
                "kind": "stat",
                "title": "Temperature",
                "position": {"x": 0, "y": 0, "w": 4, "h": 3},
                "config": {"channel": "device:climate-1/temperature"},
            },
        )
    )
    await ok(await c.post("/api/v1/controllers", headers=owner, json={"id": "rig-1", "name": "Rig"}))
    await ok(
        await c.post(
            "/api/v1/controllers/rig-1/plugins",
            headers=owner,
            json={"name": "sim", "plugin": "simulated", "config": {}, "interval_seconds": 2.5},
        )
    )
    await ok(
        await c.post(
            "/api/v1/controllers/rig-1/mappings",
            headers=owner,
            json={"instance": "sim", "plugin_channel": "temperature", "key": "temp", "unit": "°C"},
        )
    )
    token = await ok(
        await c.post("/api/v1/tokens", headers=owner, json={"name": "script", "scopes": ["api:read"]})
    )
    return Secrets(
        webhook_id=hook["id"],
        webhook_secret=hook["secret"],
        flow_secret=flow["endpoint_secret"],
        device_token=device["device_token"],
        device_password=device["mqtt"]["password"],
        api_token=token["token"],
    )


async def tables(settings: Settings) -> dict[str, list[dict[str, Any]]]:
    """Every snapshot table of a database, with sealed secrets opened with that data dir's key."""
    db = Database(settings)
    try:
        async with db.session() as session:
            return await service.export_entities(session, SecretBox(settings.data_dir))
    finally:
        await db.dispose()


async def export(station: StationHandle, passphrase: str = PASSPHRASE) -> bytes:
    r = await station.client.post(
        "/api/v1/snapshots/export", headers=await station.owner_headers(), json={"passphrase": passphrase}
    )
    assert r.status_code == 200, r.text
    assert r.content.startswith(b"age-encryption.org/v1\n")
    return r.content


async def import_(
    station: StationHandle, data: bytes, passphrase: str = PASSPHRASE, dry_run: bool = False
) -> httpx.Response:
    return await station.client.post(
        "/api/v1/snapshots/import",
        headers=await station.owner_headers(),
        files={"file": ("snap.age", data, "application/octet-stream")},
        data={"passphrase": passphrase, "dry_run": "true" if dry_run else "false"},
        timeout=60,
    )


ENTITIES = [spec.entity for spec in SPECS]
