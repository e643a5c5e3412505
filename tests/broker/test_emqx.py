"""The EMQX 5 REST adapter against the local fake of EMQX's management API, served over real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn
from sqlalchemy import select

from tests.helpers import StationHandle, free_port, start_station, wait_for
from waystation.broker.acl import BrokerAccount, device_rules, device_username, station_rules
from waystation.broker.adapters.base import BrokerUnavailable
from waystation.broker.adapters.emqx import EmqxAdapter
from waystation.broker.fake_emqx import FakeEmqx
from waystation.broker.models import BrokerOutbox
from waystation.config import Settings

USERS = "/api/v5/authentication/password_based%3Abuilt_in_database/users"
RULES = "/api/v5/authorization/sources/built_in_database/rules/users"


@contextlib.asynccontextmanager
async def serve_fake(fake: FakeEmqx) -> AsyncIterator[str]:
    port = free_port()
    config = uvicorn.Config(fake.app, host="127.0.0.1", port=port, log_config=None, lifespan="off")
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    try:
        await wait_for(lambda: server.started, message="fake EMQX start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeEmqx, str]]:
    emqx = FakeEmqx(api_key="key-1", api_secret="secret-1")
    async with serve_fake(emqx) as url:
        yield emqx, url


@pytest.fixture
async def adapter(fake: tuple[FakeEmqx, str]) -> AsyncIterator[EmqxAdapter]:
    emqx, url = fake
    a = EmqxAdapter(url, emqx.api_key, emqx.api_secret, page_limit=10)
    yield a
    await a.close()


def device_account(device_id: str, password: str, station_id: str = "st1") -> BrokerAccount:
    return BrokerAccount(
        username=device_username(device_id),
        password=password,
        client_id=device_id,
        rules=device_rules(station_id, device_id),
        device_id=device_id,
    )


# --- the fake speaks EMQX 5 ------------------------------------------------------------------------


async def test_fake_answers_like_emqx(fake: tuple[FakeEmqx, str]) -> None:
    emqx, url = fake
    async with httpx.AsyncClient(base_url=url, auth=("key-1", "secret-1")) as client:
        r = await client.post(USERS, json={"user_id": "u1", "password": "p1"})
        assert r.status_code == 201 and r.json() == {"user_id": "u1", "is_superuser": False}
        r = await client.post(USERS, json={"user_id": "u1", "password": "p2"})
        assert r.status_code == 409 and r.json()["code"] == "ALREADY_EXISTS"
        r = await client.put(f"{USERS}/nobody", json={"password": "x"})
        assert r.status_code == 404 and r.json() == {"code": "NOT_FOUND", "message": "User not found"}
        r = await client.delete(f"{RULES}/nobody")
        assert r.status_code == 404
        r = await client.get(USERS, params={"page": 1, "limit": 0})
        assert r.status_code == 400 and r.json()["code"] == "INVALID_PARAMETER"
        rules = [{"username": "u1", "rules": [{"topic": "t/1", "permission": "allow", "action": "publish"}]}]
        assert (await client.post(RULES, json=rules)).status_code == 204
        assert (await client.post(RULES, json=rules)).status_code == 409
        r = await client.get(f"{RULES}/u1")
        assert r.json()["rules"][0] == {
            "topic": "t/1",
            "permission": "allow",
            "action": "publish",
            "qos": [0, 1, 2],
            "retain": "all",
        }
        r = await client.get(USERS)
        assert r.json() == {
            "data": [{"user_id": "u1", "is_superuser": False}],
            "meta": {"page": 1, "limit": 100, "count": 1, "hasnext": False},
        }
    async with httpx.AsyncClient(base_url=url, auth=("key-1", "wrong")) as client:
        r = await client.get(USERS)
        assert r.status_code == 401 and r.json()["code"] == "BAD_API_KEY_OR_SECRET"
    async with httpx.AsyncClient(base_url=url) as client:
        assert (await client.get(USERS)).status_code == 401
    assert emqx.check_password("u1", "p1")


# --- the adapter ----------------------------------------------------------------------------------


async def test_create_account(fake: tuple[FakeEmqx, str], adapter: EmqxAdapter) -> None:
    emqx, _ = fake
    await adapter.upsert_account(device_account("d1", "pw-1"))
    assert emqx.check_password("dev-d1", "pw-1")
    assert not emqx.users["dev-d1"].is_superuser
    rules = emqx.rules["dev-d1"]
    assert [(r["action"], r["topic"], r["permission"]) for r in rules] == [
        *((r.action, r.topic, "allow") for r in device_rules("st1", "d1")),
        ("all", "#", "deny"),  # least privilege even where EMQX's no_match is left at allow
    ]
    # Applying the same account again changes nothing and does not fail.
    await adapter.upsert_account(device_account("d1", "pw-1"))
    assert emqx.check_password("dev-d1", "pw-1")
    assert await adapter.list_usernames() == {"dev-d1"}


async def test_existing_account_is_updated_after_409(
    fake: tuple[FakeEmqx, str], adapter: EmqxAdapter
) -> None:
    emqx, _ = fake
    emqx.add_user("dev-d2", "old-password", is_superuser=True)
    emqx.rules["dev-d2"] = [
        {"topic": "#", "permission": "allow", "action": "all", "qos": [0, 1, 2], "retain": "all"}
    ]
    emqx.requests.clear()
    await adapter.upsert_account(device_account("d2", "new-password"))
    assert emqx.check_password("dev-d2", "new-password")
    assert not emqx.check_password("dev-d2", "old-password")
    assert not emqx.users["dev-d2"].is_superuser
    assert [r["topic"] for r in emqx.rules["dev-d2"]] == [*(r.topic for r in device_rules("st1", "d2")), "#"]
    assert emqx.rules["dev-d2"][-1]["permission"] == "deny"
    assert emqx.requests == [
        ("POST", "/api/v5/authentication/password_based:built_in_database/users"),
        ("PUT", "/api/v5/authentication/password_based:built_in_database/users/dev-d2"),
        ("POST", RULES),
        ("PUT", f"{RULES}/dev-d2"),
    ]


async def test_new_password_disconnects_old_sessions(
    fake: tuple[FakeEmqx, str], adapter: EmqxAdapter
) -> None:
    emqx, url = fake
    await adapter.upsert_account(device_account("d7", "first"))
    emqx.connect("d7", "dev-d7")
    await adapter.upsert_account(device_account("d7", "first"))  # re-applied as is (a reconcile)
    assert emqx.kicked == []
    await adapter.upsert_account(device_account("d7", "second"), disconnect=True)  # a rotation row
    assert emqx.kicked == ["d7"] and emqx.check_password("dev-d7", "second")
    # The decision comes from the caller (the outbox row), not from this process's memory: a fresh
    # adapter (the station restarted) kicks for a rotation too, and leaves sessions alone otherwise.
    emqx.connect("d7", "dev-d7")
    fresh = EmqxAdapter(url, emqx.api_key, emqx.api_secret)
    try:
        await fresh.upsert_account(device_account("d7", "second"))
        assert emqx.kicked == ["d7"] and "d7" in emqx.clients
        await fresh.upsert_account(device_account("d7", "third"), disconnect=True)
    finally:
        await fresh.close()
    assert emqx.kicked == ["d7", "d7"] and emqx.check_password("dev-d7", "third")


async def test_station_account_rules(fake: tuple[FakeEmqx, str], adapter: EmqxAdapter) -> None:
    emqx, _ = fake
    account = BrokerAccount("waystation", "station-pw", None, station_rules(("flows/+/in",)))
    await adapter.upsert_account(account)
    assert emqx.check_password("waystation", "station-pw")
    assert {"action": "subscribe", "topic": "flows/+/in"}.items() <= emqx.rules["waystation"][
        -2
    ].items()  # before the final deny-all


async def test_delete_removes_user_rules_and_kicks_clients(
    fake: tuple[FakeEmqx, str], adapter: EmqxAdapter
) -> None:
    emqx, _ = fake
    await adapter.upsert_account(device_account("d3", "pw"))
    await adapter.upsert_account(device_account("d4", "pw"))
    emqx.connect("d3", "dev-d3")
    emqx.connect("d3-second", "dev-d3")
    emqx.connect("d4", "dev-d4")
    await adapter.delete_account("dev-d3")
    assert "dev-d3" not in emqx.users and "dev-d3" not in emqx.rules
    assert sorted(emqx.kicked) == ["d3", "d3-second"]
    assert set(emqx.clients) == {"d4"}
    assert await adapter.list_usernames() == {"dev-d4"}
    # Unknown accounts are fine: deleting is idempotent.
    await adapter.delete_account("dev-d3")
    await adapter.delete_account("never-existed")


async def test_list_walks_every_page(fake: tuple[FakeEmqx, str], adapter: EmqxAdapter) -> None:
    emqx, _ = fake
    for i in range(37):  # page_limit is 10: four pages of users
        emqx.add_user(f"user-{i:02d}", "pw")
    emqx.rules["rules-only"] = []  # a rule set whose user is gone is an account too
    emqx.requests.clear()
    names = await adapter.list_usernames()
    assert names == {f"user-{i:02d}" for i in range(37)} | {"rules-only"}
    user_pages = [p for m, p in emqx.requests if m == "GET" and "authentication" in p]
    assert len(user_pages) == 4


async def test_5xx_and_errors_raise_broker_unavailable(
    fake: tuple[FakeEmqx, str], adapter: EmqxAdapter
) -> None:
    emqx, url = fake
    emqx.fail_next(1)
    with pytest.raises(BrokerUnavailable, match="503"):
        await adapter.upsert_account(device_account("d5", "pw"))
    # The outbox retries: the next attempt goes through.
    await adapter.upsert_account(device_account("d5", "pw"))
    assert emqx.check_password("dev-d5", "pw")

    emqx.fail_next(1, status=500)
    with pytest.raises(BrokerUnavailable):
        await adapter.delete_account("dev-d5")
    emqx.fail_next(1)
    with pytest.raises(BrokerUnavailable):
        await adapter.list_usernames()

    wrong = EmqxAdapter(url, "key-1", "not-the-secret")
    try:
        with pytest.raises(BrokerUnavailable, match="401") as info:
            await wrong.list_usernames()
        assert "not-the-secret" not in str(info.value)
    finally:
        await wrong.close()

    unreachable = EmqxAdapter(f"http://127.0.0.1:{free_port()}", "key-1", "secret-1", timeout=2)
    try:
        with pytest.raises(BrokerUnavailable, match="unreachable"):
            await unreachable.upsert_account(device_account("d6", "pw"))
    finally:
        await unreachable.close()


async def test_fail_next_admin_endpoint(fake: tuple[FakeEmqx, str], adapter: EmqxAdapter) -> None:
    _, url = fake
    async with httpx.AsyncClient(base_url=url, auth=("key-1", "secret-1")) as client:
        r = await client.post("/_fake/fail_next", json={"count": 2, "status": 502})
        assert r.status_code == 204
    for _ in range(2):
        with pytest.raises(BrokerUnavailable, match="502"):
            await adapter.list_usernames()
    assert await adapter.list_usernames() == set()


# --- through the station's broker sync (outbox worker and reconcile) --------------------------------


STATION_PASSWORD = "station-emqx-password"


def emqx_settings(settings_factory, mosquitto, fake: tuple[FakeEmqx, str]) -> Settings:  # type: ignore[no-untyped-def]
    emqx, url = fake
    # The test Mosquitto stands in for EMQX's MQTT side (it lets anyone in); the URL's account is the
    # station's own, which the station creates in EMQX.
    return settings_factory(  # type: ignore[no-any-return]
        broker_admin="emqx",
        mqtt_url=f"mqtt://waystation:{STATION_PASSWORD}@127.0.0.1:{mosquitto.port}",
        emqx_api_url=url,
        emqx_api_key=emqx.api_key,
        emqx_api_secret=emqx.api_secret,
        broker_sync_backoff_base_seconds=0.05,
        broker_sync_backoff_max_seconds=0.2,
    )


@pytest.fixture
async def emqx_station(
    settings_factory, mosquitto, fake: tuple[FakeEmqx, str]
) -> AsyncIterator[StationHandle]:  # type: ignore[no-untyped-def]
    async with start_station(emqx_settings(settings_factory, mosquitto, fake)) as handle:
        sync = handle.ctx.broker_sync
        assert sync is not None
        await wait_for(lambda: sync.last_reconcile_at is not None, message="first reconcile")
        yield handle


async def test_outbox_applies_changes_and_retries_5xx(
    fake: tuple[FakeEmqx, str], emqx_station: StationHandle
) -> None:
    emqx, _ = fake
    created = await emqx_station.create_device("emq-1")
    password = created["mqtt"]["password"]
    await wait_for(lambda: emqx.check_password("dev-emq-1", password), message="account in EMQX")
    assert "dev-emq-1" in emqx.rules

    # EMQX fails for a while: the change waits in the outbox and goes through once EMQX answers again.
    emqx.fail_next(3)
    await emqx_station.create_device("emq-2")
    await wait_for(lambda: "dev-emq-2" in emqx.users, message="account after retries")
    assert emqx.users.keys() == {"waystation", "dev-emq-1", "dev-emq-2"}

    # Disabling removes the account and disconnects the device; enabling brings it back.
    emqx.connect("emq-1", "dev-emq-1")
    owner = await emqx_station.owner_headers()
    r = await emqx_station.client.patch("/api/v1/devices/emq-1", headers=owner, json={"enabled": False})
    assert r.status_code == 200, r.text
    # The account, its rules and the kick are separate calls: wait for all three.
    await wait_for(
        lambda: "dev-emq-1" not in emqx.users and "dev-emq-1" not in emqx.rules and emqx.kicked == ["emq-1"],
        message="account removed, rules removed, session kicked",
    )
    r = await emqx_station.client.patch("/api/v1/devices/emq-1", headers=owner, json={"enabled": True})
    await wait_for(lambda: emqx.check_password("dev-emq-1", password), message="account back")

    # A new password ends the sessions opened with the old one.
    emqx.connect("emq-1", "dev-emq-1")
    r = await emqx_station.client.post("/api/v1/devices/emq-1/mqtt-credentials", headers=owner)
    assert r.status_code == 200, r.text
    rotated = r.json()["password"]
    await wait_for(lambda: emqx.check_password("dev-emq-1", rotated), message="new password")
    await wait_for(lambda: emqx.kicked == ["emq-1", "emq-1"], message="old session kicked")


async def test_reconcile_makes_emqx_equal_the_database(
    fake: tuple[FakeEmqx, str], emqx_station: StationHandle
) -> None:
    emqx, _ = fake
    passwords = {}
    for device_id in ("rc-1", "rc-2", "rc-3"):
        passwords[f"dev-{device_id}"] = (await emqx_station.create_device(device_id))["mqtt"]["password"]
    passwords["waystation"] = STATION_PASSWORD
    await wait_for(lambda: emqx.users.keys() == passwords.keys(), message="accounts synced")

    # EMQX drifts: it lost one account, holds one the station never made, and a rule set of nobody.
    del emqx.users["dev-rc-2"]
    del emqx.rules["dev-rc-2"]
    emqx.add_user("dev-intruder", "guess")
    emqx.rules["dev-intruder"] = [
        {"topic": "#", "permission": "allow", "action": "all", "qos": [0, 1, 2], "retain": "all"}
    ]
    emqx.rules["orphan"] = []
    emqx.connect("intruder-client", "dev-intruder")

    owner = await emqx_station.owner_headers()
    r = await emqx_station.client.post("/api/v1/broker/sync/reconcile", headers=owner)
    assert r.status_code == 202, r.text

    def in_step() -> bool:
        return emqx.users.keys() == passwords.keys() and emqx.rules.keys() == passwords.keys()

    await wait_for(in_step, message="EMQX equal to the database (and the station's own account)")
    for username, password in passwords.items():
        assert emqx.check_password(username, password)
    assert emqx.kicked == ["intruder-client"]
    sync = emqx_station.ctx.broker_sync
    assert sync is not None
    await wait_for(lambda: sync.last_reconcile is not None and sync.last_reconcile["removed"] == 2)
    # Updated: the two devices and the station's own account (EMQX cannot tell what changed).
    assert sync.last_reconcile == {"created": 1, "updated": 3, "removed": 2}


async def test_station_creates_its_own_least_privilege_account(
    fake: tuple[FakeEmqx, str], emqx_station: StationHandle
) -> None:
    emqx, _ = fake
    assert emqx.check_password("waystation", STATION_PASSWORD)
    assert not emqx.users["waystation"].is_superuser
    rules = [(r["action"], r["topic"], r["permission"]) for r in emqx.rules["waystation"]]
    # Written out, not derived from the code under test (docs/broker.md lists the same).
    assert rules == [
        ("publish", "station/+/device/+/command", "allow"),
        ("publish", "station/+/device/+/handshake/ack", "allow"),
        ("subscribe", "station/#", "allow"),
        ("all", "#", "deny"),
    ]
    # An operator who made it a superuser (the old instructions) gets that flag cleared by a reconcile.
    emqx.users["waystation"].is_superuser = True
    r = await emqx_station.client.post(
        "/api/v1/broker/sync/reconcile", headers=await emqx_station.owner_headers()
    )
    assert r.status_code == 202, r.text
    await wait_for(lambda: not emqx.users["waystation"].is_superuser, message="superuser flag cleared")


async def test_rotation_queued_before_a_restart_still_kicks_old_sessions(
    settings_factory,
    mosquitto,
    fake: tuple[FakeEmqx, str],  # type: ignore[no-untyped-def]
) -> None:
    emqx, _ = fake
    settings = emqx_settings(settings_factory, mosquitto, fake)
    async with start_station(settings) as station:
        sync = station.ctx.broker_sync
        assert sync is not None
        await station.create_device("rot-1")
        await station.create_device("rot-2")
        await wait_for(lambda: "dev-rot-2" in emqx.users, message="accounts in EMQX")
        emqx.fail_next(10_000)  # EMQX answers 503 from now on: the changes stay queued
        owner = await station.owner_headers()
        r = await station.client.post("/api/v1/devices/rot-1/mqtt-credentials", headers=owner)
        assert r.status_code == 200, r.text
        rotated = r.json()["password"]
        r = await station.client.patch("/api/v1/devices/rot-2", headers=owner, json={"enabled": False})
        assert r.status_code == 200, r.text

        async def attempted() -> bool:
            async with station.ctx.db.session() as session:
                rows = (
                    await session.scalars(
                        select(BrokerOutbox).where(
                            BrokerOutbox.device_id == "rot-1", BrokerOutbox.done_at.is_(None)
                        )
                    )
                ).all()
            return any(row.attempts > 0 and row.data == {"rotated": True} for row in rows)

        await wait_for(attempted, message="rotation row tried and pending")
    emqx._failures.clear()
    emqx.connect("rot-1", "dev-rot-1")  # a session opened with the old password
    # As if an attempt had removed rot-2's user and rules, then failed before disconnecting its client.
    del emqx.users["dev-rot-2"], emqx.rules["dev-rot-2"]
    emqx.connect("rot-2", "dev-rot-2")
    # A new process, a new adapter: nothing in memory knows about the rotation, only the outbox row.
    async with start_station(emqx_settings(settings_factory, mosquitto, fake)) as station:
        await wait_for(lambda: emqx.check_password("dev-rot-1", rotated), message="new password applied")
        await wait_for(
            lambda: sorted(emqx.kicked) == ["rot-1", "rot-2"], message="sessions kicked after the restart"
        )
        await wait_for(lambda: settled(station), message="rotation row settled")


async def settled(station: StationHandle) -> bool:
    sync = station.ctx.broker_sync
    return sync is not None and (await sync.status())["backlog"] == 0
