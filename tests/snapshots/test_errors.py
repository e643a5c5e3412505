"""Imports that must fail change nothing: a wrong passphrase, a damaged or truncated file, a newer schema
version and invalid content each get their own code; only installation admins reach the routes."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from pyrage import passphrase

from tests.helpers import StationHandle
from tests.snapshots.support import PASSPHRASE, export, import_, tables
from waystation.db import Database
from waystation.secrets_box import SecretBox
from waystation.snapshots import envelope, service

pytestmark = pytest.mark.timeout(240)


async def document_of(station: StationHandle) -> dict[str, Any]:
    db = Database(station.settings)
    try:
        async with db.session() as session:
            return envelope.new_document(
                await service.export_entities(session, SecretBox(station.settings.data_dir))
            )
    finally:
        await db.dispose()


@pytest.mark.slow(50)
async def test_bad_files_get_clear_errors_and_change_nothing(station: StationHandle) -> None:
    await station.create_device("climate-1")
    data = await export(station)
    good = await document_of(station)
    before = await tables(station.settings)

    future = {**good, "schema_version": envelope.SCHEMA_VERSION + 1}
    dangling = copy.deepcopy(good)
    dangling["entities"]["devices"][0]["station_id"] = "nowhere"
    mistyped = copy.deepcopy(good)
    mistyped["entities"]["devices"][0]["enabled"] = "maybe"
    mistyped["entities"]["devices"][0]["colour"] = "red"
    cases: list[tuple[bytes, str, str]] = [
        (data, "not the passphrase", "SNAPSHOT_PASSPHRASE_WRONG"),
        (data[: len(data) // 2], PASSPHRASE, "SNAPSHOT_CORRUPT"),
        (data[:-1], PASSPHRASE, "SNAPSHOT_CORRUPT"),
        (data[:30], PASSPHRASE, "SNAPSHOT_CORRUPT"),
        (b'{"format": "waystation-snapshot"}', PASSPHRASE, "SNAPSHOT_CORRUPT"),
        (passphrase.encrypt(b"not json at all", PASSPHRASE), PASSPHRASE, "SNAPSHOT_CORRUPT"),
        (envelope.seal(future, PASSPHRASE), PASSPHRASE, "SNAPSHOT_SCHEMA_UNSUPPORTED"),
        (envelope.seal(dangling, PASSPHRASE), PASSPHRASE, "SNAPSHOT_INVALID"),
        (envelope.seal(mistyped, PASSPHRASE), PASSPHRASE, "SNAPSHOT_INVALID"),
    ]
    answers: dict[str, dict[str, Any]] = {}
    for body, secret, code in cases:
        r = await import_(station, body, secret, dry_run=code == "SNAPSHOT_PASSPHRASE_WRONG")
        assert r.headers["content-type"].startswith("application/problem+json"), r.text
        problem = r.json()
        assert problem["code"] == code, (code, problem)
        assert PASSPHRASE not in r.text
        answers[code] = problem
    assert answers["SNAPSHOT_PASSPHRASE_WRONG"]["status"] == 400
    assert "schema version 2" in answers["SNAPSHOT_SCHEMA_UNSUPPORTED"]["detail"]
    invalid = answers["SNAPSHOT_INVALID"]
    assert invalid["status"] == 422
    fields = {(e["entity"], e.get("field")) for e in invalid["errors"]}
    assert ("devices", "enabled") in fields and ("devices", "colour") in fields

    r = await import_(station, envelope.seal(dangling, PASSPHRASE))
    assert r.json()["errors"] == [
        {
            "entity": "devices",
            "index": 0,
            "field": "station_id",
            "message": "refers to stations 'nowhere', not in the snapshot",
        }
    ]
    assert await tables(station.settings) == before  # not even an audit row


async def test_importing_its_own_snapshot_changes_nothing_but_the_audit_log(station: StationHandle) -> None:
    await station.create_device("climate-1")
    before = await tables(station.settings)
    data = await export(station)
    r = await import_(station, data)
    assert r.status_code == 200, r.text
    assert r.json()["totals"] == {"added": 0, "changed": 0, "removed": 0}
    after = await tables(station.settings)
    assert {k: v for k, v in after.items() if k != "audit"} == {
        k: v for k, v in before.items() if k != "audit"
    }
    assert [a["action"] for a in after["audit"][len(before["audit"]) :]] == [
        "snapshot.export",
        "snapshot.import",
    ]


@pytest.mark.slow(12)
async def test_a_changed_and_a_removed_row_show_in_the_dry_run(station: StationHandle) -> None:
    owner = await station.owner_headers()
    await station.create_device("keep-me", name="Before")
    data = await export(station)
    await station.create_device("new-one")
    r = await station.client.patch("/api/v1/devices/keep-me", headers=owner, json={"name": "After"})
    assert r.status_code == 200, r.text
    r = await import_(station, data, dry_run=True)
    devices = r.json()["diff"]["entities"]["devices"]
    assert [c["key"] for c in devices["removed"]] == ["new-one"]
    assert [(c["key"], c["label"]) for c in devices["changed"]] == [("keep-me", "Before")]
    assert "name" in devices["changed"][0]["fields"]
    r = await import_(station, data)
    assert r.status_code == 200, r.text
    assert (await station.device("keep-me"))["name"] == "Before"
    r = await station.client.get("/api/v1/devices/new-one", headers=owner)
    assert r.status_code == 404
    assert "new-one" not in station.ctx.devices.known


async def test_only_installation_admins_use_snapshots(station: StationHandle) -> None:
    data = await export(station)
    member = await station.user_headers("mia", "member")
    r = await station.client.post("/api/v1/snapshots/export", headers=member, json={"passphrase": PASSPHRASE})
    assert r.status_code == 403 and r.json()["code"] == "INSUFFICIENT_ROLE"
    r = await station.client.post(
        "/api/v1/snapshots/import",
        headers=member,
        files={"file": ("s.age", data)},
        data={"passphrase": PASSPHRASE, "dry_run": "true"},
    )
    assert r.status_code == 403
    r = await station.client.get("/api/v1/snapshots", headers=member)
    assert r.status_code == 403
    r = await station.client.post(
        "/api/v1/snapshots/export", headers=await station.owner_headers(), json={"passphrase": "short"}
    )
    assert r.status_code == 422
    assert orjson.loads(r.content)["code"] == "VALIDATION_FAILED"
