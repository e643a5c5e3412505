"""A small in-memory stand-in for the part of the EMQX 5 management API the station uses.

Used by the tests (EMQX cannot run here) and for demos: `waystation fake-emqx --port 18083`. It follows
EMQX 5's behaviour for these endpoints, status codes and error bodies included:

    /api/v5/authentication/{id}/users[/{user_id}]                       users of the built-in database
    /api/v5/authorization/sources/built_in_database/rules/users[/{u}]   per-username rule sets
    /api/v5/clients[/{clientid}]                                        connected clients, kick

Lists take `page` and `limit` (1..10000) and answer `{"data": [...], "meta": {page, limit, count,
hasnext}}`. Every call needs HTTP basic auth with the API key and secret, else 401
`BAD_API_KEY_OR_SECRET`. `fail_next(n)` (or `POST /_fake/fail_next {"count": n}`) makes the next n API
calls answer 503, for retry tests. Nothing is persisted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

MAX_LIMIT = 10_000
DEFAULT_LIMIT = 100
RULE_ACTIONS = {"publish", "subscribe", "all"}
RULE_PERMISSIONS = {"allow", "deny"}


@dataclass
class FakeUser:
    salt: str
    password_hash: str  # sha256(salt + password), EMQX's default `sha256` with a prefix salt
    is_superuser: bool


@dataclass
class FakeClient:
    clientid: str
    username: str | None


@dataclass
class FakeEmqx:
    """The fake's state; `app` serves it. Tests inspect and change it directly."""

    api_key: str = "waystation"
    api_secret: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    authenticator_id: str = "password_based:built_in_database"
    users: dict[str, FakeUser] = field(default_factory=dict)
    rules: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    clients: dict[str, FakeClient] = field(default_factory=dict)
    kicked: list[str] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path) of every API call
    _failures: list[int] = field(default_factory=list)

    # --- controls for tests and demos --------------------------------------------------------------

    def fail_next(self, count: int = 1, status: int = 503) -> None:
        """The next `count` API calls answer `status` (EMQX overloaded, a node down)."""
        self._failures.extend([status] * count)

    def add_user(self, user_id: str, password: str, is_superuser: bool = False) -> None:
        salt = secrets.token_hex(8)
        self.users[user_id] = FakeUser(salt, _hash(salt, password), is_superuser)

    def check_password(self, user_id: str, password: str) -> bool:
        """What EMQX's authenticator would decide for this user and password."""
        user = self.users.get(user_id)
        return user is not None and hmac.compare_digest(user.password_hash, _hash(user.salt, password))

    def connect(self, clientid: str, username: str | None) -> None:
        """Pretend a client is connected (so kicking it can be observed)."""
        self.clients[clientid] = FakeClient(clientid, username)

    # --- the ASGI app --------------------------------------------------------------------------------

    @cached_property
    def app(self) -> Starlette:
        users = "/api/v5/authentication/{authenticator}/users"
        rules = "/api/v5/authorization/sources/built_in_database/rules/users"
        return Starlette(
            routes=[
                Route(users, self._guard(self._users), methods=["GET", "POST"]),
                Route(users + "/{user_id}", self._guard(self._user), methods=["GET", "PUT", "DELETE"]),
                Route(rules, self._guard(self._rule_sets), methods=["GET", "POST"]),
                Route(rules + "/{username}", self._guard(self._rule_set), methods=["GET", "PUT", "DELETE"]),
                Route("/api/v5/clients", self._guard(self._clients), methods=["GET"]),
                Route("/api/v5/clients/{clientid}", self._guard(self._client), methods=["GET", "DELETE"]),
                Route("/_fake/fail_next", self._guard(self._fail_next, counted=False), methods=["POST"]),
            ]
        )

    def _guard(self, handler: Any, counted: bool = True) -> Any:
        async def endpoint(request: Request) -> Response:
            if not self._authorized(request):
                return _error(401, "BAD_API_KEY_OR_SECRET", "Check api_key/api_secret")
            if counted:
                self.requests.append((request.method, request.url.path))
                if self._failures:
                    return _error(self._failures.pop(0), "INTERNAL_ERROR", "fake failure")
            result: Response = await handler(request)
            return result

        return endpoint

    def _authorized(self, request: Request) -> bool:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            key, _, secret = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return hmac.compare_digest(key.encode(), self.api_key.encode()) and hmac.compare_digest(
            secret.encode(), self.api_secret.encode()
        )

    def _known_authenticator(self, request: Request) -> Response | None:
        if request.path_params["authenticator"] != self.authenticator_id:
            return _error(404, "NOT_FOUND", "Authenticator not found in the 'global' scope")
        return None

    async def _users(self, request: Request) -> Response:
        if (missing := self._known_authenticator(request)) is not None:
            return missing
        if request.method == "GET":
            like = request.query_params.get("like_user_id")
            rows = [
                {"user_id": uid, "is_superuser": u.is_superuser}
                for uid, u in self.users.items()
                if like is None or like in uid
            ]
            return _page(request, rows)
        body = await _json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("user_id"), str):
            return _error(400, "BAD_REQUEST", "Missing user_id")
        if not isinstance(body.get("password"), str):
            return _error(400, "BAD_REQUEST", "Missing password")
        user_id = body["user_id"]
        if user_id in self.users:
            return _error(409, "ALREADY_EXISTS", "User already exists")
        self.add_user(user_id, body["password"], bool(body.get("is_superuser", False)))
        return JSONResponse({"user_id": user_id, "is_superuser": self.users[user_id].is_superuser}, 201)

    async def _user(self, request: Request) -> Response:
        if (missing := self._known_authenticator(request)) is not None:
            return missing
        user_id = request.path_params["user_id"]
        user = self.users.get(user_id)
        if user is None:
            return _error(404, "NOT_FOUND", "User not found")
        if request.method == "DELETE":
            del self.users[user_id]
            return Response(status_code=204)
        if request.method == "PUT":
            body = await _json_body(request)
            if not isinstance(body, dict) or not ({"password", "is_superuser"} & body.keys()):
                return _error(400, "BAD_REQUEST", "Missing password")
            if isinstance(body.get("password"), str):
                user.salt = secrets.token_hex(8)
                user.password_hash = _hash(user.salt, body["password"])
            if "is_superuser" in body:
                user.is_superuser = bool(body["is_superuser"])
        return JSONResponse({"user_id": user_id, "is_superuser": user.is_superuser})

    async def _rule_sets(self, request: Request) -> Response:
        if request.method == "GET":
            like = request.query_params.get("like_username")
            rows = [
                {"username": name, "rules": list(r)}
                for name, r in self.rules.items()
                if like is None or like in name
            ]
            return _page(request, rows)
        body = await _json_body(request)
        if not isinstance(body, list):
            return _error(400, "BAD_REQUEST", "Bad username or bad rule schema")
        parsed: list[tuple[str, list[dict[str, Any]]]] = []
        for item in body:
            rule_set = _rule_set(item)
            if rule_set is None:
                return _error(400, "BAD_REQUEST", "Bad username or bad rule schema")
            parsed.append(rule_set)
        exists = [name for name, _ in parsed if name in self.rules]
        if exists:
            return _error(409, "ALREADY_EXISTS", f"Users '{','.join(exists)}' already exist")
        for name, rule_list in parsed:
            self.rules[name] = rule_list
        return Response(status_code=204)

    async def _rule_set(self, request: Request) -> Response:
        username = request.path_params["username"]
        if request.method == "PUT":
            rule_set = _rule_set(await _json_body(request))
            if rule_set is None or rule_set[0] != username:
                return _error(400, "BAD_REQUEST", "Bad username or bad rule schema")
            self.rules[username] = rule_set[1]  # PUT creates or replaces, as in EMQX
            return Response(status_code=204)
        if username not in self.rules:
            message = "Username Not Found" if request.method == "DELETE" else "Not Found"
            return _error(404, "NOT_FOUND", message)
        if request.method == "DELETE":
            del self.rules[username]
            return Response(status_code=204)
        return JSONResponse({"username": username, "rules": self.rules[username]})

    async def _clients(self, request: Request) -> Response:
        username = request.query_params.get("username")
        rows = [
            {"clientid": c.clientid, "username": c.username, "connected": True}
            for c in self.clients.values()
            if username is None or c.username == username
        ]
        return _page(request, rows)

    async def _client(self, request: Request) -> Response:
        clientid = request.path_params["clientid"]
        client = self.clients.get(clientid)
        if client is None:
            return _error(404, "CLIENTID_NOT_FOUND", "Client ID not found")
        if request.method == "DELETE":
            del self.clients[clientid]
            self.kicked.append(clientid)
            return Response(status_code=204)
        return JSONResponse({"clientid": client.clientid, "username": client.username, "connected": True})

    async def _fail_next(self, request: Request) -> Response:
        body = await _json_body(request)
        body = body if isinstance(body, dict) else {}
        count, status = body.get("count", 1), body.get("status", 503)
        if not isinstance(count, int) or not isinstance(status, int) or not 500 <= status <= 599:
            return _error(400, "BAD_REQUEST", "count must be an integer, status 500-599")
        self.fail_next(count, status)
        return Response(status_code=204)


def _hash(salt: str, password: str) -> str:
    return hashlib.sha256((salt + password).encode()).hexdigest()


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status)


async def _json_body(request: Request) -> Any:
    try:
        return json.loads(await request.body() or b"null")
    except ValueError:
        return None


def _rule_set(item: Any) -> tuple[str, list[dict[str, Any]]] | None:
    """`{"username": ..., "rules": [...]}` checked as EMQX's schema does, with its defaults filled in."""
    if not isinstance(item, dict) or not isinstance(item.get("username"), str):
        return None
    rules = item.get("rules", [])
    if not isinstance(rules, list):
        return None
    out: list[dict[str, Any]] = []
    for rule in rules:
        if (
            not isinstance(rule, dict)
            or not isinstance(rule.get("topic"), str)
            or rule.get("permission") not in RULE_PERMISSIONS
            or rule.get("action") not in RULE_ACTIONS
        ):
            return None
        out.append(
            {
                "topic": rule["topic"],
                "permission": rule["permission"],
                "action": rule["action"],
                "qos": rule.get("qos", [0, 1, 2]),
                "retain": rule.get("retain", "all"),
            }
        )
    return item["username"], out


def _page(request: Request, rows: list[dict[str, Any]]) -> Response:
    try:
        page = int(request.query_params.get("page", "1"))
        limit = int(request.query_params.get("limit", str(DEFAULT_LIMIT)))
    except ValueError:
        return _error(400, "INVALID_PARAMETER", "page_limit_invalid")
    if page < 1 or not 1 <= limit <= MAX_LIMIT:
        return _error(400, "INVALID_PARAMETER", "page_limit_invalid")
    start = (page - 1) * limit
    data = rows[start : start + limit]
    meta = {"page": page, "limit": limit, "count": len(rows), "hasnext": start + limit < len(rows)}
    return JSONResponse({"data": data, "meta": meta})
