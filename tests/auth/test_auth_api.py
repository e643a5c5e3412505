"""First-run setup, login, refresh rotation, logout, me, and least-role enforcement."""

from __future__ import annotations

import time

import jwt

from tests.helpers import StationHandle


async def test_first_start_announces_a_one_time_setup_link(station: StationHandle) -> None:
    r = await station.client.get("/api/v1/auth/setup")
    assert r.json() == {"needed": True}
    token = station.setup_token()
    assert token.startswith("wss_")
    r = await station.client.post(
        "/api/v1/auth/setup",
        json={"token": "wss_wrong-token-xxxx", "username": "o", "password": "password-1"},
    )
    assert r.status_code == 403 and r.json()["code"] == "SETUP_TOKEN_INVALID"
    await station.owner_headers()
    r = await station.client.get("/api/v1/auth/setup")
    assert r.json() == {"needed": False}
    r = await station.client.post(
        "/api/v1/auth/setup", json={"token": token, "username": "o2", "password": "password-2"}
    )
    assert r.status_code == 409 and r.json()["code"] == "SETUP_ALREADY_DONE"


async def test_login_me_and_token_claims(station: StationHandle) -> None:
    await station.owner_headers()
    r = await station.client.post(
        "/api/v1/auth/login", json={"username": "owner", "password": "owner-password-1"}
    )
    assert r.status_code == 200
    pair = r.json()
    assert pair["token_type"] == "bearer" and pair["expires_in"] == 15 * 60
    claims = jwt.decode(pair["access_token"], options={"verify_signature": False})
    assert {"sub", "role", "jti", "iat", "exp", "iss"} <= set(claims)
    assert claims["role"] == "owner" and claims["exp"] - claims["iat"] == 900
    me = await station.client.get(
        "/api/v1/auth/me", headers={"Authorization": f"Bearer {pair['access_token']}"}
    )
    assert me.json()["username"] == "owner" and me.json()["role"] == "owner"


async def test_wrong_password_and_unknown_user_look_the_same(station: StationHandle) -> None:
    await station.owner_headers()
    a = await station.client.post("/api/v1/auth/login", json={"username": "owner", "password": "nope-nope"})
    b = await station.client.post("/api/v1/auth/login", json={"username": "nobody", "password": "nope-nope"})
    assert a.status_code == b.status_code == 401
    assert a.json()["code"] == b.json()["code"] == "INVALID_CREDENTIALS"
    assert a.json()["detail"] == b.json()["detail"]


async def test_refresh_rotates_and_reuse_revokes_the_family(station: StationHandle) -> None:
    await station.owner_headers()
    pair = (
        await station.client.post(
            "/api/v1/auth/login", json={"username": "owner", "password": "owner-password-1"}
        )
    ).json()
    r = await station.client.post("/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert r.status_code == 200
    second = r.json()
    assert second["refresh_token"] != pair["refresh_token"]
    # Replaying the first refresh token is theft: it fails and kills the newer one too.
    r = await station.client.post("/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert r.status_code == 401 and r.json()["code"] == "TOKEN_INVALID"
    r = await station.client.post("/api/v1/auth/refresh", json={"refresh_token": second["refresh_token"]})
    assert r.status_code == 401


async def test_logout_revokes_the_refresh_token(station: StationHandle) -> None:
    await station.owner_headers()
    pair = (
        await station.client.post(
            "/api/v1/auth/login", json={"username": "owner", "password": "owner-password-1"}
        )
    ).json()
    headers = {"Authorization": f"Bearer {pair['access_token']}"}
    r = await station.client.post(
        "/api/v1/auth/logout", headers=headers, json={"refresh_token": pair["refresh_token"]}
    )
    assert r.status_code == 204
    r = await station.client.post("/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert r.status_code == 401


async def test_tampered_expired_and_alg_none_tokens_are_rejected(station: StationHandle) -> None:
    headers = await station.owner_headers()
    token = headers["Authorization"].split()[1]
    claims = jwt.decode(token, options={"verify_signature": False})
    forged_none = jwt.encode({**claims, "role": "owner"}, key=None, algorithm="none")
    forged_key = jwt.encode(claims, "not-the-station-key-at-all-000000", algorithm="HS256")
    for bad in (forged_none, forged_key, token[:-2] + "xx", "garbage"):
        r = await station.client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {bad}"})
        assert r.status_code == 401, bad
        assert r.json()["code"] == "TOKEN_INVALID"
        assert r.headers["www-authenticate"] == "Bearer"
    expired = {**claims, "exp": int(time.time()) - 10}
    signer = station.ctx.signer
    kid = signer.current_kid
    assert kid is not None
    key = signer._keys[kid].secret  # the real key: only the expiry is wrong
    forged = jwt.encode(expired, key, algorithm="HS256", headers={"kid": kid})
    r = await station.client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {forged}"})
    assert r.status_code == 401


async def test_no_token_is_401_problem(station: StationHandle) -> None:
    r = await station.client.get("/api/v1/devices")
    assert r.status_code == 401
    assert r.headers["content-type"].startswith("application/problem+json")


async def test_viewer_reads_but_cannot_change_anything(station: StationHandle) -> None:
    await station.create_device("rv-1", "light")
    viewer = await station.user_headers("vera", "viewer")
    assert (await station.client.get("/api/v1/devices", headers=viewer)).status_code == 200
    assert (await station.client.get("/api/v1/devices/rv-1", headers=viewer)).status_code == 200
    writes = [
        ("POST", "/api/v1/devices", {"type": "light"}),
        ("PATCH", "/api/v1/devices/rv-1", {"name": "x"}),
        ("DELETE", "/api/v1/devices/rv-1", None),
        ("POST", "/api/v1/devices/rv-1/commands", {"action": "reboot"}),
        ("POST", "/api/v1/users", {"username": "z", "password": "password-z", "role": "viewer"}),
    ]
    for method, path, body in writes:
        r = await station.client.request(method, path, headers=viewer, json=body)
        assert r.status_code == 403, (method, path, r.text)
        assert r.json()["code"] == "INSUFFICIENT_ROLE"


async def test_member_may_command_but_not_manage_devices(station: StationHandle) -> None:
    await station.create_device("rm-1", "light")
    member = await station.user_headers("mia", "member")
    r = await station.client.post("/api/v1/devices/rm-1/commands", headers=member, json={"action": "reboot"})
    assert r.status_code == 202
    r = await station.client.post("/api/v1/devices", headers=member, json={"type": "light"})
    assert r.status_code == 403


async def test_admin_cannot_create_an_owner_and_weak_passwords_are_refused(station: StationHandle) -> None:
    admin = await station.user_headers("ada", "admin")
    r = await station.client.post(
        "/api/v1/users", headers=admin, json={"username": "boss", "password": "password-b", "role": "owner"}
    )
    assert r.status_code == 403
    owner = await station.owner_headers()
    r = await station.client.post(
        "/api/v1/users", headers=owner, json={"username": "weak", "password": "short", "role": "viewer"}
    )
    assert r.status_code == 422
    r = await station.client.post(
        "/api/v1/users", headers=owner, json={"username": "ada", "password": "password-a", "role": "viewer"}
    )
    assert r.status_code == 409 and r.json()["code"] == "USER_EXISTS"


async def test_password_change_ends_sessions(station: StationHandle) -> None:
    owner = await station.owner_headers()
    await station.user_headers("pat", "member")
    pair = (
        await station.client.post(
            "/api/v1/auth/login", json={"username": "pat", "password": "pat-password-1"}
        )
    ).json()
    r = await station.client.patch("/api/v1/users/pat", headers=owner, json={"password": "a-new-password-9"})
    assert r.status_code == 200
    r = await station.client.post("/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert r.status_code == 401
    r = await station.client.post(
        "/api/v1/auth/login", json={"username": "pat", "password": "a-new-password-9"}
    )
    assert r.status_code == 200


async def test_writes_are_audited_without_secrets(station: StationHandle) -> None:
    owner = await station.owner_headers()
    await station.create_device("au-1", "climate")
    await station.user_headers("sam", "viewer")
    r = await station.client.get("/api/v1/audit", headers=owner, params={"limit": 2})
    body = r.json()
    assert len(body["items"]) == 2 and body["next_cursor"]
    r2 = await station.client.get("/api/v1/audit", headers=owner, params={"cursor": body["next_cursor"]})
    actions = [i["action"] for i in body["items"] + r2.json()["items"]]
    assert "device.create" in actions and "user.create" in actions and "auth.setup" in actions
    assert "sam-password-1" not in r.text + r2.text
    r = await station.client.get("/api/v1/audit", headers=owner, params={"action": "device.create"})
    assert [i["target"] for i in r.json()["items"]] == ["device:au-1"]
