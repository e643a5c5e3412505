"""Plain cloud messages and their effect on the database: members, station name, passwords, reset."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from tests.cloud.support import claim, cloud_status
from tests.helpers import DeviceClient, StationHandle, wait_for
from waystation.auth.models import ApiToken, User
from waystation.auth.security import hash_password
from waystation.cloud.fake import FakeCloud, FakeStation
from waystation.cloud.models import CloudConfig
from waystation.station.models import StationMember


async def users(st: StationHandle) -> dict[str, dict[str, Any]]:
    """Cloud-managed users by cloud id: username, global role, role at the default station."""
    async with st.ctx.db.session() as session:
        rows = (await session.execute(select(User).where(User.cloud_user_id.is_not(None)))).scalars().all()
        out = {}
        for user in rows:
            member = await session.get(StationMember, (st.station_id, user.id))
            out[str(user.cloud_user_id)] = {
                "username": user.username,
                "role": user.role,
                "station_role": member.role if member else None,
            }
        return out


async def audit_actions(st: StationHandle, action: str) -> list[dict[str, Any]]:
    r = await st.client.get("/api/v1/audit", params={"action": action}, headers=await st.owner_headers())
    return list(r.json()["items"])


async def send_and_wait_audit(
    st: StationHandle, fake: FakeCloud, station: FakeStation, message: dict[str, Any]
) -> str:
    action = f"cloud.{message['type']}"
    before = len(await audit_actions(st, action))
    await fake.send(station.chip_id, message)

    async def audited() -> list[dict[str, Any]] | None:
        items = await audit_actions(st, action)
        return items if len(items) > before else None

    items = await wait_for(audited, message=action)
    assert items[0]["actor"] == "cloud"
    return str(items[0]["summary"])


async def test_identity_sync_upserts_members_renames_and_removes(
    linked: StationHandle, fake_cloud: FakeCloud
) -> None:
    station = await claim(linked, fake_cloud)
    sync = {
        "type": "identity_sync",
        "stationName": "Greenhouse",
        "ownerCloudUserId": "c-ann",
        "members": [
            {"cloudUserId": "c-ann", "username": "ann", "role": "member"},
            {"cloudUserId": "c-bob", "username": "bob", "role": "viewer"},
            {"cloudUserId": "c-own", "username": "owner", "role": "admin"},  # name taken by the local owner
        ],
    }
    await send_and_wait_audit(linked, fake_cloud, station, sync)
    found = await users(linked)
    # Owner and admin are roles at the station only; installation-wide, cloud users are members at most.
    assert found["c-ann"] == {"username": "ann", "role": "member", "station_role": "owner"}
    assert found["c-bob"] == {"username": "bob", "role": "viewer", "station_role": "viewer"}
    assert found["c-own"]["username"].startswith("owner-")
    assert found["c-own"]["role"] == "member" and found["c-own"]["station_role"] == "admin"
    r = await linked.client.get("/api/v1/station", headers=await linked.owner_headers())
    assert r.json()["name"] == "Greenhouse"
    # Cloud users cannot log in until the cloud sends a password hash.
    r = await linked.client.post("/api/v1/auth/login", json={"username": "bob", "password": ""})
    assert r.status_code in (401, 422)

    # A second sync without bob removes him; ann stays owner.
    sync["members"] = sync["members"][:1]
    await send_and_wait_audit(linked, fake_cloud, station, sync)
    found = await users(linked)
    assert set(found) == {"c-ann"}


async def test_member_messages_and_station_rename(linked: StationHandle, fake_cloud: FakeCloud) -> None:
    station = await claim(linked, fake_cloud)
    member = {"cloudUserId": "c-1", "username": "carol", "role": "viewer"}
    await send_and_wait_audit(linked, fake_cloud, station, {"type": "member_added", "member": member})
    assert (await users(linked))["c-1"]["station_role"] == "viewer"
    member = {**member, "role": "member", "username": "carol.b"}
    await send_and_wait_audit(linked, fake_cloud, station, {"type": "member_updated", "member": member})
    assert (await users(linked))["c-1"] == {"username": "carol.b", "role": "member", "station_role": "member"}
    await send_and_wait_audit(linked, fake_cloud, station, {"type": "member_removed", "cloudUserId": "c-1"})
    assert await users(linked) == {}
    await send_and_wait_audit(linked, fake_cloud, station, {"type": "station_renamed", "name": "Barn"})
    r = await linked.client.get("/api/v1/station", headers=await linked.owner_headers())
    assert r.json()["name"] == "Barn"
    summary = await send_and_wait_audit(
        linked, fake_cloud, station, {"type": "member_added", "member": {"cloudUserId": "x"}}
    )
    assert summary.startswith("refused")


async def test_the_last_owner_is_never_removed_by_the_cloud(
    linked: StationHandle, fake_cloud: FakeCloud
) -> None:
    station = await claim(linked, fake_cloud)
    boss = {"cloudUserId": "c-boss", "username": "boss", "role": "admin"}
    sync = {"type": "identity_sync", "ownerCloudUserId": "c-boss", "members": [boss]}
    await send_and_wait_audit(linked, fake_cloud, station, sync)
    # The local owner leaves the station: the cloud's owner is now its only owner.
    r = await linked.client.delete(
        f"/api/v1/stations/{linked.station_id}/members/owner", headers=await linked.owner_headers()
    )
    assert r.status_code in (200, 204), r.text
    summary = await send_and_wait_audit(
        linked, fake_cloud, station, {"type": "member_removed", "cloudUserId": "c-boss"}
    )
    assert "last owner" in summary
    assert (await users(linked))["c-boss"]["station_role"] == "owner"
    summary = await send_and_wait_audit(
        linked, fake_cloud, station, {"type": "member_updated", "member": {**boss, "role": "viewer"}}
    )
    assert "last owner" in summary and (await users(linked))["c-boss"]["station_role"] == "owner"


async def test_the_cloud_cannot_make_installation_owners_or_admins(
    linked: StationHandle, fake_cloud: FakeCloud
) -> None:
    station = await claim(linked, fake_cloud)
    # Owner only through ownerCloudUserId: a member message (or a sync listing someone else) is refused.
    evil = {"cloudUserId": "c-evil", "username": "evil", "role": "owner"}
    summary = await send_and_wait_audit(linked, fake_cloud, station, {"type": "member_added", "member": evil})
    assert summary.startswith("refused")
    sync = {"type": "identity_sync", "ownerCloudUserId": "c-other", "members": [evil]}
    assert (await send_and_wait_audit(linked, fake_cloud, station, sync)).startswith("refused")
    assert await users(linked) == {}

    # A cloud admin is admin of the default station, not of the installation.
    await send_and_wait_audit(
        linked, fake_cloud, station, {"type": "member_added", "member": {**evil, "role": "admin"}}
    )
    assert (await users(linked))["c-evil"] == {"username": "evil", "role": "member", "station_role": "admin"}
    headers = await cloud_login(linked, fake_cloud, station, "c-evil", "evil")
    other = await linked.client.post(
        "/api/v1/stations", headers=await linked.owner_headers(), json={"name": "B"}
    )
    assert other.status_code == 201
    r = await linked.client.get(f"/api/v1/stations/{other.json()['id']}", headers=headers)
    assert r.status_code == 404  # another station is invisible to them
    assert (await linked.client.get("/api/v1/users", headers=headers)).status_code == 403
    r = await linked.client.get("/api/v1/cloud/status", headers=headers)
    assert r.status_code == 200 and r.json()["claim_secret"] is None


async def cloud_login(
    st: StationHandle, fake: FakeCloud, station: FakeStation, cloud_id: str, username: str
) -> dict[str, str]:
    """Give a cloud user a password (as the cloud does) and log in as them."""
    password = f"{username}-pass-1"
    message = {
        "type": "station_password_changed",
        "cloudUserId": cloud_id,
        "passwordHash": hash_password(password),
    }
    await send_and_wait_audit(st, fake, station, message)
    r = await st.client.post("/api/v1/auth/login", json={"username": username, "password": password})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


async def api_token(st: StationHandle, headers: dict[str, str]) -> dict[str, str]:
    r = await st.client.post(
        "/api/v1/tokens", headers=headers, json={"name": "script", "scopes": ["api:write"]}
    )
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


async def test_a_removed_members_api_tokens_stop_working(
    linked: StationHandle, fake_cloud: FakeCloud
) -> None:
    station = await claim(linked, fake_cloud)
    member = {"cloudUserId": "c-eve", "username": "eve", "role": "admin"}
    await send_and_wait_audit(linked, fake_cloud, station, {"type": "member_added", "member": member})
    headers = await cloud_login(linked, fake_cloud, station, "c-eve", "eve")
    token = await api_token(linked, headers)
    assert (await linked.client.get("/api/v1/devices", headers=token)).status_code == 200

    await send_and_wait_audit(linked, fake_cloud, station, {"type": "member_removed", "cloudUserId": "c-eve"})
    assert (await linked.client.get("/api/v1/devices", headers=token)).status_code == 401
    assert (await linked.client.get("/api/v1/auth/me", headers=headers)).status_code == 401
    async with linked.ctx.db.session() as session:
        row = await session.scalar(select(ApiToken).where(ApiToken.name == "script"))
        assert row is not None and row.revoked_at is not None


async def test_unclaim_removes_the_clouds_users_but_never_the_last_owner(
    linked: StationHandle, fake_cloud: FakeCloud
) -> None:
    station = await claim(linked, fake_cloud)
    sync = {
        "type": "identity_sync",
        "ownerCloudUserId": "c-ann",
        "members": [
            {"cloudUserId": "c-ann", "username": "ann", "role": "admin"},
            {"cloudUserId": "c-bob", "username": "bob", "role": "admin"},
        ],
    }
    await send_and_wait_audit(linked, fake_cloud, station, sync)
    bob = await cloud_login(linked, fake_cloud, station, "c-bob", "bob")
    bob_token = await api_token(linked, bob)
    r = await linked.client.delete(
        f"/api/v1/stations/{linked.station_id}/members/owner", headers=await linked.owner_headers()
    )
    assert r.status_code in (200, 204), r.text  # ann is now the station's only owner

    r = await linked.client.post("/api/v1/cloud/unclaim", headers=await linked.owner_headers())
    assert r.status_code == 200, r.text
    assert await users(linked) == {}  # no cloud manages anyone any more
    for headers in (bob, bob_token):
        assert (await linked.client.get("/api/v1/devices", headers=headers)).status_code == 401
    async with linked.ctx.db.session() as session:
        ann = await session.scalar(select(User).where(User.username == "ann"))
        assert ann is not None and ann.cloud_user_id is None  # kept, as a local account
        assert (await session.get(StationMember, (linked.station_id, ann.id))).role == "owner"  # type: ignore[union-attr]
        assert await session.scalar(select(User).where(User.username == "bob")) is None
    items = await audit_actions(linked, "cloud.unclaim")
    assert "removed 1 cloud users; kept ann" in items[0]["summary"]


async def test_password_hash_sets_a_password_and_ends_sessions(
    linked: StationHandle, fake_cloud: FakeCloud
) -> None:
    station = await claim(linked, fake_cloud)
    member = {"cloudUserId": "c-dan", "username": "dan", "role": "member"}
    await send_and_wait_audit(linked, fake_cloud, station, {"type": "member_added", "member": member})
    message = {
        "type": "station_password_changed",
        "cloudUserId": "c-dan",
        "passwordHash": hash_password("first-pass-1"),
    }
    await send_and_wait_audit(linked, fake_cloud, station, message)
    r = await linked.client.post("/api/v1/auth/login", json={"username": "dan", "password": "first-pass-1"})
    assert r.status_code == 200, r.text
    access = r.json()["access_token"]
    me = await linked.client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {access}"})
    assert me.status_code == 200

    # A plaintext "hash" is refused and changes nothing.
    plain = {"type": "station_password_changed", "cloudUserId": "c-dan", "passwordHash": "second-pass-2"}
    assert (await send_and_wait_audit(linked, fake_cloud, station, plain)).startswith("refused")
    r = await linked.client.post("/api/v1/auth/login", json={"username": "dan", "password": "second-pass-2"})
    assert r.status_code == 401

    message["passwordHash"] = hash_password("second-pass-2")
    await send_and_wait_audit(linked, fake_cloud, station, message)
    me = await linked.client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {access}"})
    assert me.status_code == 401  # the old session ended with the password change
    r = await linked.client.post("/api/v1/auth/login", json={"username": "dan", "password": "second-pass-2"})
    assert r.status_code == 200


async def test_station_reset_wipes_config_resets_devices_and_exits(
    linked: StationHandle, fake_cloud: FakeCloud
) -> None:
    await linked.create_device("clim-1", "climate")
    await linked.create_device("clim-2", "climate")  # offline: its factory_reset waits in the queue
    # Another station of the same installation: the link does not speak for it, the reset spares it.
    owner = await linked.owner_headers()
    other = (await linked.client.post("/api/v1/stations", headers=owner, json={"name": "B"})).json()["id"]
    await linked.create_device("far-1", "climate", station_id=other)
    exits: list[bool] = []
    assert linked.ctx.cloud is not None
    linked.ctx.cloud.exit_process = lambda: exits.append(True)
    station = await claim(linked, fake_cloud)
    member = {"cloudUserId": "c-1", "username": "carol", "role": "admin"}
    await send_and_wait_audit(linked, fake_cloud, station, {"type": "member_added", "member": member})
    async with DeviceClient(linked.mqtt_port, linked.station_id, "clim-1") as device:
        await device.publish("heartbeat", {"status": "online"})
        await wait_for(lambda: linked.ctx.devices and linked.ctx.devices.known["clim-1"].status == "online")
        await fake_cloud.send(station.chip_id, {"type": "station_reset"})
        await wait_for(lambda: exits, message="exit requested")
        await wait_for(lambda: any(m.get("action") == "factory_reset" for m in device.messages("command")))
    r = await linked.client.get("/api/v1/devices/clim-2/commands", headers=await linked.owner_headers())
    assert r.json()["items"][0]["action"] == "factory_reset"
    r = await linked.client.get("/api/v1/devices/far-1/commands", headers=await linked.owner_headers())
    assert r.status_code == 200 and r.json()["items"] == []
    async with linked.ctx.db.session() as session:
        assert await session.scalar(select(func.count()).select_from(CloudConfig)) == 0
    await wait_for(lambda: not station.connected, message="link closed")
    assert len(await users(linked)) == 0
    assert (await cloud_status(linked))["claimed"] is False
