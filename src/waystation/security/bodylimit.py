"""Request body size limit: 413 `PAYLOAD_TOO_LARGE` (problem+json) for bodies over the limit.

Written by hand rather than FastAPI's `max_body_size`: that one answers `text/plain` when a route never
reads its body, and takes its limits from route decorators, while ours come from settings (a default and
per-path overrides such as a larger one for firmware uploads).

Two checks: a declared `Content-Length` over the limit is refused before a byte of the body is read,
and a chunked (or understated) body is counted while the app reads it and cut off once it goes over.
"""

from __future__ import annotations

from collections.abc import Mapping
from fnmatch import fnmatchcase

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from waystation.errors import http_problem_response


class BodyTooLarge(HTTPException):
    """Raised from `receive()` inside the app. A Starlette `HTTPException`, because FastAPI re-raises
    those while it parses a body (anything else becomes a 400), so the app's handler renders it."""

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=f"Request body too large: the limit is {limit} bytes.")


class BodySizeLimitMiddleware:
    def __init__(self, app: ASGIApp, default: int, by_path: Mapping[str, int] | None = None) -> None:
        self.app = app
        self.default = default
        # Longest pattern first: the most specific one decides.
        self.by_path = sorted((by_path or {}).items(), key=lambda item: len(item[0]), reverse=True)

    def limit_for(self, path: str) -> int:
        for pattern, limit in self.by_path:
            if fnmatchcase(path, pattern):
                return limit
        return self.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _refuse(scope, receive, send, BodyTooLarge(limit))
            return

        received = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, watched_send)
        except BodyTooLarge as exc:
            # Only reached when the body was read outside the app's error handling.
            if response_started:
                raise
            await _refuse(scope, receive, send, exc)


def _content_length(scope: Scope) -> int | None:
    value = Headers(scope=scope).get("content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


async def _refuse(scope: Scope, receive: Receive, send: Send, exc: BodyTooLarge) -> None:
    # The client may still be sending: the connection closes after the answer instead of being reused.
    response = http_problem_response(exc.status_code, exc.detail, scope["path"], {"Connection": "close"})
    await response(scope, receive, send)
