"""Export → a fresh data directory and database → import: every entity arrives equal, secrets sealed
with the new station's key still work, and the file is real age (the `age` CLI opens it)."""

from __future__ import annotations

import asyncio
import os
import pty
import shutil
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook as StandardWebhook

from tests.helpers import HttpReceiver, StationHandle, start_station, wait_for
from tests.snapshots.support import ENTITIES, PASSPHRASE, export, import_, populate, tables
from waystation.auth.security import sha256_hex
from waystation.broker.models import BrokerOutbox, DeviceCredential
from waystation.config import Settings
from waystation.db import Base
from waystation.snapshots.tables import EXCLUDED, SPECS, UNUSABLE_PASSWORD

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
async def receiver() -> AsyncIterator[HttpReceiver]:
    rx = HttpReceiver()
    await rx.start()
    yield rx
    await rx.stop()


def test_every_table_is_either_in_snapshots_or_excluded_on_purpose() -> None:
    import waystation.models  # noqa: F401 - every table registered

    included = {spec.table.name for spec in SPECS}
    assert included.isdisjoint(EXCLUDED)
    assert set(Base.metadata.tables) == included | set(EXCLUDED)


def without(rows: list[dict[str, Any]], *fields: str) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k not in fields} for row in rows]


def audit_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["ts"], row["actor"], row["action"], row["target"], row["summary"])


@pytest.mark.slow(14)
async def test_round_trip_into_a_fresh_station_keeps_every_entity(
    station: StationHandle, target_settings: Callable[..., Settings], receiver: HttpReceiver
) -> None:
    secrets = await populate(station, receiver.url)
    source = await tables(station.settings)  # read first: the export adds its own audit row
    data = await export(station)
    for entity in ENTITIES:
        if entity not in {"agent_wifi", "cloud_config"}:  # made by their own slices' setup, if at all
            assert source[entity], f"the test populates {entity}"
    # Sealed secrets travel in clear inside the encrypted file, owners without a password hash.
    assert {h["secret"] for h in source["webhooks"]} == {secrets.webhook_secret}
    assert next(u for u in source["users"] if u["role"] == "owner").get("password_hash") is None

    async with start_station(target_settings()) as target:
        await target.owner_headers()  # the target's own owner, "owner" too: they keep their password
        before = await tables(target.settings)
        dry = await import_(target, data, dry_run=True)
        assert dry.status_code == 200, dry.text
        assert dry.json()["applied"] is False
        assert dry.json()["diff"]["entities"]["devices"]["counts"]["added"] == 1
        assert await tables(target.settings) == before  # a dry run changes nothing

        r = await import_(target, data)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["applied"] is True and body["schema_version"] == 1
        # The target's own default station gave way to the snapshot's.
        assert body["diff"]["entities"]["stations"]["counts"]["removed"] == 1
        imported = await tables(target.settings)

        for entity in ENTITIES:
            if entity in {"audit", "users"}:
                continue
            assert imported[entity] == source[entity], entity
        # Users too, but the owner kept this installation's password and its change time.
        assert imported["users"][1:] == source["users"][1:]
        assert without(imported["users"][:1], "password_changed_at") == without(
            source["users"][:1], "password_changed_at"
        )
        # The audit log gains the snapshot's entries (new ids) plus the import itself.
        assert {audit_key(a) for a in source["audit"]} <= {audit_key(a) for a in imported["audit"]}
        assert imported["audit"][-1]["action"] == "snapshot.import"
        assert PASSPHRASE not in orjson.dumps(imported["audit"]).decode()

        # The running services followed: the new default station, the device, the flow, the webhook.
        assert target.ctx.default_station_id == station.station_id
        assert "climate-1" in target.ctx.devices.known
        assert "push" in target.ctx.flows.flows
        assert secrets.webhook_id in target.ctx.webhooks.hooks

        # The owner kept the password of this installation (same username); the API token, the device
        # token and the device's broker password are the source's.
        r = await target.client.post(
            "/api/v1/auth/login", json={"username": "owner", "password": "owner-password-1"}
        )
        assert r.status_code == 200, r.text
        r = await target.client.post(
            "/api/v1/auth/login", json={"username": "alice", "password": "alice-password-1"}
        )
        assert r.status_code == 200, r.text
        r = await target.client.get(
            "/api/v1/devices/climate-1", headers={"Authorization": f"Bearer {secrets.api_token}"}
        )
        assert r.status_code == 200, r.text
        r = await target.client.post(
            "/api/v1/datapoints/batch",
            headers={"X-Device-Token": secrets.device_token},
            json={"items": [{"channel": "device:climate-1/temperature", "value": 21.5}]},
        )
        assert r.status_code == 200, r.text
        async with target.ctx.db.session() as session:
            cred = await session.get(DeviceCredential, "climate-1")
            assert cred is not None
            assert target.ctx.box.open(cred.password_sealed) == secrets.device_password
            assert cred.password_hash == sha256_hex(secrets.device_password)
            ops = (await session.scalars(select(BrokerOutbox.op))).all()
        assert "reconcile" in ops  # the broker follows through the outbox

        # The webhook secret, now sealed with the target's key, still signs what the source's receiver
        # verifies.
        r = await target.client.post(
            f"/api/v1/webhooks/{secrets.webhook_id}/test", headers=await target.owner_headers()
        )
        assert r.status_code == 200, r.text
        headers, delivered = await wait_for(
            lambda: receiver.received[-1] if receiver.received else None, timeout=15
        )
        StandardWebhook(secrets.webhook_secret).verify(delivered, headers)

        # New rows after an import get fresh ids (PostgreSQL sequences moved past the imported ones).
        r = await target.client.post(
            "/api/v1/webhooks",
            headers=await target.owner_headers(),
            json={"url": receiver.url, "event_types": ["*"]},
        )
        assert r.status_code == 201, r.text
        assert r.json()["id"] > secrets.webhook_id


async def test_an_owner_new_to_the_target_gets_an_unusable_password(
    station: StationHandle, target_settings: Callable[..., Settings]
) -> None:
    await station.owner_headers()
    data = await export(station)
    async with start_station(target_settings()) as target:
        r = await target.client.post(
            "/api/v1/auth/setup",
            json={"token": target.setup_token(), "username": "other-owner", "password": "other-password-1"},
        )
        assert r.status_code == 201, r.text
        target._tokens["owner"] = r.json()["access_token"]
        r = await import_(target, data)
        assert r.status_code == 200, r.text
        assert r.json()["diff"]["entities"]["users"]["counts"] == {"added": 1, "changed": 0, "removed": 1}
        users = {u["username"]: u for u in (await tables(target.settings))["users"]}
        assert set(users) == {"owner"}
        async with target.ctx.db.session() as session:
            from waystation.auth.models import User

            owner = await session.scalar(select(User).where(User.username == "owner"))
        assert owner is not None and owner.password_hash == UNUSABLE_PASSWORD
        r = await target.client.post(
            "/api/v1/auth/login", json={"username": "owner", "password": "owner-password-1"}
        )
        assert r.status_code == 401


@pytest.mark.skipif(shutil.which("age") is None, reason="the age CLI is not installed")
async def test_the_age_cli_decrypts_an_exported_snapshot(station: StationHandle, tmp_path: Path) -> None:
    await station.owner_headers()
    path = tmp_path / "snap.age"
    path.write_bytes(await export(station))
    out = tmp_path / "snap.json"
    # age reads a passphrase only from a terminal: give it one.
    status = await asyncio.to_thread(age_decrypt, path, out, PASSPHRASE)
    assert status == 0
    document = orjson.loads(out.read_bytes())
    assert document["format"] == "waystation-snapshot" and document["schema_version"] == 1
    assert {u["username"] for u in document["entities"]["users"]} == {"owner"}


def age_decrypt(path: Path, out: Path, passphrase: str, timeout: float = 60.0) -> int:
    pid, fd = pty.fork()
    if pid == 0:  # the child: age with the pty as its terminal
        os.execvp("age", ["age", "--decrypt", "--output", str(out), str(path)])
    seen, sent = b"", False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                chunk = os.read(fd, 1024)
            except OSError:
                break  # the child closed the terminal: it is done
            if not chunk:
                break
            seen += chunk
            if not sent and b"passphrase" in seen.lower():
                os.write(fd, passphrase.encode() + b"\n")
                sent = True
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)
