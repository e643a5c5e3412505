"""Signing keys (kid, rotation, retirement), revocation (logout, password change), the agent token and
HMAC-signed internal calls."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from httpx import Response
from sqlalchemy import select, update
from starlette.requests import Request

from tests.helpers import StationHandle, start_station
from waystation.auth.internal import InternalVerifier, sign
from waystation.auth.keys import KeyRing
from waystation.auth.models import SeenSignature, SigningKey
from waystation.auth.tokens import TokenSigner, UnknownSigningKey
from waystation.config import Settings
from waystation.db import Database
from waystation.errors import SignatureInvalid
from waystation.secrets_box import SecretBox


async def _login(station: StationHandle, username: str, password: str) -> dict[str, str]:
    r = await station.client.post("/api/v1/auth/login", json={"username": username, "password": password})
    assert r.status_code == 200, r.text
    return dict(r.json())


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _refresh(station: StationHandle, refresh_token: str) -> dict[str, str]:
    r = await station.client.post("/api/v1/auth/refresh", json={"refresh_token": refresh_token})
    assert r.status_code == 200, r.text
    return dict(r.json())


async def _me(station: StationHandle, pair: dict[str, str]) -> Response:
    return await station.client.get("/api/v1/auth/me", headers=_bearer(pair["access_token"]))


async def test_access_token_claims_and_kid(station: StationHandle) -> None:
    owner = await station.owner_headers()
    token = owner["Authorization"].split()[1]
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "HS256"
    assert header["kid"] == station.ctx.signer.current_kid
    claims = jwt.decode(token, options={"verify_signature": False})
    assert {"sub", "role", "jti", "iat", "exp", "iss"} <= set(claims)
    assert claims["role"] == "owner" and claims["iss"] == "waystation"


async def test_unknown_kid_and_wrong_key_are_rejected(station: StationHandle) -> None:
    owner = await station.owner_headers()
    claims = jwt.decode(owner["Authorization"].split()[1], options={"verify_signature": False})
    kid = station.ctx.signer.current_kid
    for token in (
        jwt.encode(claims, "x" * 32, algorithm="HS256", headers={"kid": kid}),  # right kid, wrong key
        jwt.encode(claims, "x" * 32, algorithm="HS256", headers={"kid": "nope"}),
        jwt.encode(claims, "x" * 32, algorithm="HS256"),  # no kid at all
        jwt.encode(claims, None, algorithm="none", headers={"kid": kid}),
    ):
        r = await station.client.get("/api/v1/auth/me", headers=_bearer(token))
        assert r.status_code == 401, token
        assert r.json()["code"] == "TOKEN_INVALID"


async def test_rotation_on_demand_keeps_old_tokens_until_they_expire(station: StationHandle) -> None:
    owner = await station.owner_headers()
    old_token = owner["Authorization"].split()[1]
    old_kid = jwt.get_unverified_header(old_token)["kid"]

    r = await station.client.post("/api/v1/auth/keys/rotate", headers=owner)
    assert r.status_code == 201, r.text
    new_kid = r.json()["kid"]
    assert new_kid != old_kid

    # The old token still verifies; new tokens carry the new kid.
    assert (await station.client.get("/api/v1/auth/me", headers=owner)).status_code == 200
    fresh = await _login(station, "owner", "owner-password-1")
    assert jwt.get_unverified_header(fresh["access_token"])["kid"] == new_kid

    keys = (await station.client.get("/api/v1/auth/keys", headers=owner)).json()["items"]
    by_kid = {k["kid"]: k for k in keys}
    assert by_kid[new_kid]["current"] is True and by_kid[new_kid]["retired_at"] is None
    assert by_kid[old_kid]["current"] is False and by_kid[old_kid]["verify_until"] is not None
    assert "secret" not in json.dumps(keys) and "sealed" not in json.dumps(keys)

    # Once the retired key's last token would have expired, the key is dropped: its tokens stop working.
    async with station.ctx.db.session() as session:
        await session.execute(
            update(SigningKey)
            .where(SigningKey.kid == old_kid)
            .values(verify_until=datetime.now(UTC) - timedelta(seconds=1))
        )
    assert station.ctx.keys is not None
    await station.ctx.keys.load()
    r = await station.client.get("/api/v1/auth/me", headers=owner)
    assert r.status_code == 401
    assert (
        await station.client.get("/api/v1/auth/me", headers=_bearer(fresh["access_token"]))
    ).status_code == 200
    kids = {k.kid for k in await station.ctx.keys.list_keys()}
    assert old_kid not in kids


async def test_automatic_rotation_when_the_key_is_due(station: StationHandle) -> None:
    owner = await station.owner_headers()
    before = station.ctx.signer.current_kid
    period = timedelta(days=station.settings.signing_key_rotation_days)
    async with station.ctx.db.session() as session:
        await session.execute(
            update(SigningKey)
            .where(SigningKey.kid == before)
            .values(created_at=datetime.now(UTC) - period - timedelta(minutes=1))
        )
    assert station.ctx.keys is not None
    await station.ctx.keys.load()
    assert station.ctx.signer.current_kid != before
    assert (await station.client.get("/api/v1/auth/me", headers=owner)).status_code == 200


def _ring(settings: Settings, db: Database) -> KeyRing:
    """One worker's key ring: its own signer, the shared database and data directory."""
    return KeyRing(settings, db, SecretBox(settings.data_dir), TokenSigner(timedelta(minutes=15)))


async def test_a_key_rotated_by_another_worker_is_accepted_at_once(
    settings_factory,  # type: ignore[no-untyped-def]
    two_workers: tuple[Database, Database],
) -> None:
    settings = settings_factory()
    a, b = _ring(settings, two_workers[0]), _ring(settings, two_workers[1])
    await a.load()
    await b.load()
    assert a.signer.current_kid == b.signer.current_kid

    new_kid = await a.rotate()  # worker A rotates; B's periodic reload is up to a minute away
    token, _ = a.signer.issue(1, "owner", "owner", sid="s1", pwv=0)
    assert jwt.get_unverified_header(token)["kid"] == new_kid
    with pytest.raises(UnknownSigningKey):
        b.signer.verify(token)  # B's ring as it was
    claims = await b.verify(token)  # an unknown kid: B reads the ring again before refusing
    assert claims.sub == "1" and b.signer.knows(new_kid)


async def test_unknown_kids_reload_the_ring_at_most_once_a_second(
    settings_factory,  # type: ignore[no-untyped-def]
    two_workers: tuple[Database, Database],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ring = _ring(settings_factory(), two_workers[0])
    await ring.load()
    reloads = 0
    real_reload = ring.reload

    async def counted() -> None:
        nonlocal reloads
        reloads += 1
        await real_reload()

    monkeypatch.setattr(ring, "reload", counted)
    claims = {
        "sub": "1",
        "iat": int(time.time()),
        "exp": int(time.time()) + 60,
        "jti": "j",
        "iss": "waystation",
    }
    bogus = [
        jwt.encode(claims, "x" * 32, algorithm="HS256", headers={"kid": f"bogus-{i}"}) for i in range(50)
    ]
    outcomes = await asyncio.gather(*(ring.verify(t) for t in bogus), return_exceptions=True)
    assert all(isinstance(o, UnknownSigningKey) for o in outcomes)
    assert reloads == 1  # a flood of made-up kids costs one read of the ring
    long_kid = jwt.encode(claims, "x" * 32, algorithm="HS256", headers={"kid": "k" * 33})
    await asyncio.sleep(1.05)
    with pytest.raises(UnknownSigningKey):
        await ring.verify(long_kid)  # longer than any kid in the table: not worth a reload
    assert reloads == 1
    with pytest.raises(UnknownSigningKey):
        await ring.verify(bogus[0])
    assert reloads == 2  # a second later, one more


async def test_only_the_owner_manages_keys(station: StationHandle) -> None:
    admin = await station.user_headers("ada", "admin")
    assert (await station.client.post("/api/v1/auth/keys/rotate", headers=admin)).status_code == 403
    assert (await station.client.get("/api/v1/auth/keys", headers=admin)).status_code == 403


async def test_logout_revokes_the_access_token_and_its_refresh_family(station: StationHandle) -> None:
    await station.owner_headers()
    pair = await _login(station, "owner", "owner-password-1")
    headers = _bearer(pair["access_token"])
    assert (await station.client.get("/api/v1/auth/me", headers=headers)).status_code == 200
    r = await station.client.post(
        "/api/v1/auth/logout", headers=headers, json={"refresh_token": pair["refresh_token"]}
    )
    assert r.status_code == 204
    r = await station.client.get("/api/v1/auth/me", headers=headers)
    assert r.status_code == 401 and r.json()["code"] == "TOKEN_INVALID"
    r = await station.client.post("/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert r.status_code == 401
    # Other sessions are untouched.
    assert (
        await station.client.get("/api/v1/auth/me", headers=await station.owner_headers())
    ).status_code == 200


async def test_logout_ends_every_access_token_of_that_login(station: StationHandle) -> None:
    await station.owner_headers()
    first = await _login(station, "owner", "owner-password-1")
    second = await _refresh(station, first["refresh_token"])  # the same login, a newer access token
    elsewhere = await _login(station, "owner", "owner-password-1")  # another login of the same user
    for pair in (first, second, elsewhere):
        assert (await _me(station, pair)).status_code == 200

    r = await station.client.post("/api/v1/auth/logout", headers=_bearer(second["access_token"]))
    assert r.status_code == 204
    # The older access token of that login was never sent to logout, yet it ends too.
    for pair in (first, second):
        r = await _me(station, pair)
        assert r.status_code == 401 and r.json()["code"] == "TOKEN_INVALID"
    r = await station.client.post("/api/v1/auth/refresh", json={"refresh_token": second["refresh_token"]})
    assert r.status_code == 401
    assert (await _me(station, elsewhere)).status_code == 200


async def test_refresh_token_reuse_ends_every_access_token_of_that_login(station: StationHandle) -> None:
    await station.owner_headers()
    first = await _login(station, "owner", "owner-password-1")
    second = await _refresh(station, first["refresh_token"])
    elsewhere = await _login(station, "owner", "owner-password-1")
    assert (await _me(station, first)).status_code == 200 and (await _me(station, second)).status_code == 200

    # The spent refresh token comes back (stolen): the whole login ends at once, access tokens included.
    r = await station.client.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert r.status_code == 401 and r.json()["code"] == "TOKEN_INVALID"
    for pair in (first, second):
        r = await _me(station, pair)
        assert r.status_code == 401 and "login was ended" in r.json()["detail"]
    r = await station.client.post("/api/v1/auth/refresh", json={"refresh_token": second["refresh_token"]})
    assert r.status_code == 401
    assert (await _me(station, elsewhere)).status_code == 200


async def test_password_change_ends_every_session(station: StationHandle) -> None:
    await station.owner_headers()
    await station.user_headers("mia", "member")
    first = await _login(station, "mia", "mia-password-1")
    second = await _login(station, "mia", "mia-password-1")
    await asyncio.sleep(1.05)  # token `iat` has one-second resolution; the change must come in a later second
    r = await station.client.post(
        "/api/v1/auth/password",
        headers=_bearer(first["access_token"]),
        json={"current_password": "wrong-password", "new_password": "mia-new-password"},
    )
    assert r.status_code == 401 and r.json()["code"] == "INVALID_CREDENTIALS"
    r = await station.client.post(
        "/api/v1/auth/password",
        headers=_bearer(first["access_token"]),
        json={"current_password": "mia-password-1", "new_password": "mia-new-password"},
    )
    assert r.status_code == 204, r.text
    for pair in (first, second):
        assert (
            await station.client.get("/api/v1/auth/me", headers=_bearer(pair["access_token"]))
        ).status_code == 401
        r = await station.client.post("/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
        assert r.status_code == 401
    fresh = await _login(station, "mia", "mia-new-password")
    assert (
        await station.client.get("/api/v1/auth/me", headers=_bearer(fresh["access_token"]))
    ).status_code == 200


async def test_disabled_user_token_stops_working(station: StationHandle) -> None:
    owner = await station.owner_headers()
    viewer = await station.user_headers("vic", "viewer")
    assert (await station.client.get("/api/v1/devices", headers=viewer)).status_code == 200
    r = await station.client.patch("/api/v1/users/vic", headers=owner, json={"disabled": True})
    assert r.status_code == 200
    assert (await station.client.get("/api/v1/devices", headers=viewer)).status_code == 401


async def test_the_last_owner_cannot_be_demoted_or_disabled(station: StationHandle) -> None:
    owner = await station.owner_headers()
    for body in ({"role": "admin"}, {"disabled": True}):
        r = await station.client.patch("/api/v1/users/owner", headers=owner, json=body)
        assert r.status_code == 409 and r.json()["code"] == "LAST_OWNER"


async def test_agent_token_is_compared_and_acts_as_admin(settings_factory) -> None:  # type: ignore[no-untyped-def]
    settings = settings_factory(agent_token="agent-secret-value-123")
    async with start_station(settings) as station:
        r = await station.client.get("/api/v1/devices", headers=_bearer("agent-secret-value-123"))
        assert r.status_code == 200
        r = await station.client.post(
            "/api/v1/devices", headers=_bearer("agent-secret-value-123"), json={"type": "light"}
        )
        assert r.status_code == 201, r.text
        r = await station.client.get("/api/v1/devices", headers=_bearer("agent-secret-value-124"))
        assert r.status_code == 401


def _request(method: str, path: str, query: str, body: bytes, headers: dict[str, str]) -> Request:
    sent = False

    async def receive() -> dict[str, object]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": query.encode(),
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    return Request(scope, receive)


@pytest.fixture
async def two_workers(settings_factory) -> AsyncIterator[tuple[Database, Database]]:  # type: ignore[no-untyped-def]
    """Two processes' worth of database access to one database, as `waystation run --workers 2` has."""
    settings = settings_factory()
    settings.ensure_data_dir()
    first, second = Database(settings), Database(settings)
    try:
        yield first, second
    finally:
        await first.dispose()
        await second.dispose()


def test_the_signed_string_is_exactly_protocols_section_11() -> None:
    secret, body = b"s3cret", b'{"a":1}'
    by_hand = hmac.new(secret, b"POST\n/api/internal/emqx/authn\nx=1&y=2\n" + body, hashlib.sha256)
    assert sign(secret, "post", "/api/internal/emqx/authn", "x=1&y=2", body) == by_hand.hexdigest()
    # The timestamp is not part of it (PROTOCOLS §11 signs method, path, query and body only).


async def test_hmac_signed_calls_refuse_tampering_staleness_and_replay(
    two_workers: tuple[Database, Database],
) -> None:
    secret = b"internal-secret"
    verifier = InternalVerifier(secret, two_workers[0])
    body = b'{"username":"dev-a"}'
    now = str(int(time.time()))
    # Signed as PROTOCOLS §11 and docs/security.md say, by hand.
    good = hmac.new(secret, b"POST\n/api/internal/emqx/authn\n\n" + body, hashlib.sha256).hexdigest()
    headers = {"X-Request-Timestamp": now, "X-Request-Signature": good}

    with pytest.raises(SignatureInvalid, match="does not match"):  # body changed
        await verifier.verify(
            _request("POST", "/api/internal/emqx/authn", "", b'{"username":"dev-b"}', headers)
        )
    with pytest.raises(SignatureInvalid, match="does not match"):  # path changed
        await verifier.verify(_request("POST", "/api/internal/emqx/authz", "", body, headers))
    with pytest.raises(SignatureInvalid, match="does not match"):  # query added
        await verifier.verify(_request("POST", "/api/internal/emqx/authn", "a=1", body, headers))

    await verifier.verify(_request("POST", "/api/internal/emqx/authn", "", body, headers))
    with pytest.raises(SignatureInvalid, match="already used"):  # the same request again: a replay
        await verifier.verify(_request("POST", "/api/internal/emqx/authn", "", body, headers))
    # The timestamp is not signed, so a replay with a fresh one passes the signature check: the replay
    # store is what refuses it.
    moved = {"X-Request-Timestamp": str(int(now) + 1), "X-Request-Signature": good}
    with pytest.raises(SignatureInvalid, match="already used"):
        await verifier.verify(_request("POST", "/api/internal/emqx/authn", "", body, moved))
    # A caller repeating a request on purpose makes it differ (a nonce in the query).
    nonce = {"X-Request-Timestamp": now, "X-Request-Signature": sign(secret, "POST", "/x", "nonce=2", b"")}
    await verifier.verify(_request("POST", "/x", "nonce=2", b"", nonce))

    stale = str(int(time.time()) - 301)
    old = {"X-Request-Timestamp": stale, "X-Request-Signature": sign(secret, "POST", "/x", "", b"")}
    with pytest.raises(SignatureInvalid, match="5 minutes"):
        await verifier.verify(_request("POST", "/x", "", b"", old))
    with pytest.raises(SignatureInvalid, match="Send"):
        await verifier.verify(_request("POST", "/x", "", b"", {}))

    assert verifier.bearer_matches("internal-secret") and not verifier.bearer_matches("internal-secreT")


async def test_a_signed_request_is_accepted_by_one_worker_only(
    two_workers: tuple[Database, Database],
) -> None:
    secret = b"internal-secret"
    first, second = (InternalVerifier(secret, db) for db in two_workers)  # as two worker processes
    body = b'{"clientid":"lamp-1","event":"client.connected"}'
    headers = {
        "X-Request-Timestamp": str(int(time.time())),
        "X-Request-Signature": sign(secret, "POST", "/api/internal/emqx/events", "", body),
    }
    await first.verify(_request("POST", "/api/internal/emqx/events", "", body, headers))
    with pytest.raises(SignatureInvalid, match="already used"):
        await second.verify(_request("POST", "/api/internal/emqx/events", "", body, headers))

    # Sent to both at the same moment, exactly one accepts it.
    body = b'{"clientid":"lamp-2","event":"client.connected"}'
    headers["X-Request-Signature"] = sign(secret, "POST", "/api/internal/emqx/events", "", body)
    outcomes = await asyncio.gather(
        *(
            v.verify(_request("POST", "/api/internal/emqx/events", "", body, headers))
            for v in (first, second)
        ),
        return_exceptions=True,
    )
    assert sorted(type(o).__name__ for o in outcomes) == ["NoneType", "SignatureInvalid"]


async def test_expired_signatures_no_longer_count_and_are_purged(
    two_workers: tuple[Database, Database],
) -> None:
    db = two_workers[0]
    secret = b"internal-secret"
    verifier = InternalVerifier(secret, db)
    body = b"{}"
    headers = {
        "X-Request-Timestamp": str(int(time.time())),
        "X-Request-Signature": sign(secret, "POST", "/x", "", body),
    }

    async def expire_all() -> None:
        async with db.session() as session:
            past = datetime.now(UTC) - timedelta(seconds=1)
            await session.execute(update(SeenSignature).values(expires_at=past))

    await verifier.verify(_request("POST", "/x", "", body, headers))
    await expire_all()
    await verifier.verify(_request("POST", "/x", "", body, headers))  # its row expired: taken over
    with pytest.raises(SignatureInvalid, match="already used"):
        await verifier.verify(_request("POST", "/x", "", body, headers))

    # A worker purges expired rows on its first signed request and then at most once a minute.
    await expire_all()
    other = {**headers, "X-Request-Signature": sign(secret, "POST", "/y", "", body)}
    await InternalVerifier(secret, two_workers[1]).verify(_request("POST", "/y", "", body, other))
    async with db.session() as session:
        left = set(await session.scalars(select(SeenSignature.signature)))
    assert left == {other["X-Request-Signature"]}
