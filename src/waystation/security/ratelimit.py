"""Rate limits on the routes people attack: login, first-run setup, refresh, client binding, API token
creation and device-token rotation.

Counting is the `limits` library's moving window; this module names the rules, builds one limiter per
app from the settings (so every app, and every test, has its own counters) and turns "over the limit"
into 429 `RATE_LIMITED` with a `Retry-After` header.

Attaching a limit to a route (the rule `name` reads its rate from the setting `rate_limit_<name>`):

    from waystation.security.ratelimit import limit

    @router.post("/client/bind", dependencies=[Depends(limit("bind"))])  # per client address
    @router.post("/tokens", dependencies=[Depends(limit("token_create", per="caller"))])  # per caller

A new rule is a new `rate_limit_<name>` setting plus its name in `RULES`. Routes with their own logic
(login counts per address and per username) call `limiter_of(request).hit(rule, key)` directly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import Literal

from fastapi import Depends, Request
from limits import RateLimitItem, parse_many
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from waystation.auth.deps import client_ip, current_principal
from waystation.auth.roles import Principal
from waystation.config import Settings
from waystation.errors import RateLimited

RULES = ("login_ip", "login_username", "setup", "refresh", "bind", "token_create", "device_token")

Per = Literal["ip", "caller"]


def async_storage_uri(uri: str) -> str:
    """`limits` names its asyncio storages `async+<scheme>://`; settings use the plain scheme."""
    return uri if uri.startswith("async+") else f"async+{uri}"


class RateLimiter:
    """Named moving-window limits over one storage (the only place that picks the storage)."""

    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.rate_limit_enabled
        self._rules: dict[str, list[RateLimitItem]] = {}
        for name in RULES:
            rate: str = getattr(settings, f"rate_limit_{name}")
            self._rules[name] = parse_many(rate) if rate else []
        storage = storage_from_string(async_storage_uri(settings.rate_limit_storage))
        self._window = MovingWindowRateLimiter(storage)

    async def hit(self, rule: str, key: str) -> None:
        """Count one request for `key` under `rule`; raise `RateLimited` if that goes over any of its rates.

        A refused request is not counted, so a client that waits `Retry-After` seconds gets through."""
        if not self.enabled:
            return
        for item in self._rules[rule]:
            if not await self._window.hit(item, rule, key):
                stats = await self._window.get_window_stats(item, rule, key)
                retry_after = max(1, math.ceil(stats.reset_time - time.time()))
                raise RateLimited(
                    f"Too many requests (limit {item}); try again in {retry_after} s.",
                    retry_after=retry_after,
                )


def limiter_of(request: Request) -> RateLimiter:
    limiter: RateLimiter = request.app.state.limiter
    return limiter


def address_key(request: Request) -> str:
    """The client address; behind a reverse proxy listed in `trusted_proxies` it is the forwarded one."""
    return client_ip(request) or "unknown"


def limit(rule: str, per: Per = "ip") -> Callable[..., Awaitable[None]]:
    """A route dependency that counts each request under `rule`, per client address or per caller."""
    if rule not in RULES:
        raise ValueError(f"unknown rate-limit rule {rule!r}; add it to RULES and a rate_limit_{rule} setting")

    if per == "caller":

        async def _per_caller(request: Request, principal: Principal = Depends(current_principal)) -> None:
            await limiter_of(request).hit(rule, principal.actor)

        return _per_caller

    async def _per_address(request: Request) -> None:
        await limiter_of(request).hit(rule, address_key(request))

    return _per_address
