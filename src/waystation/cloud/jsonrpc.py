"""A JSON-RPC 2.0 peer that shares one WebSocket with plain `{"type": …}` cloud messages.

Written by hand: the maintained JSON-RPC libraries are either server-only dispatchers or own their
transport, and none lets one asyncio socket carry requests in both directions plus non-JSON-RPC
messages. This module does only the protocol: parsing, dispatch, ids, error objects and pending-call
timeouts. A malformed frame is answered with an error object (or ignored), never raised to the link.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

import orjson

log = logging.getLogger(__name__)

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
#: Application errors ("server error" range of the spec); `data.code` carries the station's stable code.
APPLICATION_ERROR = -32000

MAX_CONCURRENT_REQUESTS = 32
BUSY_MESSAGE = "busy"

Send = Callable[[str], Awaitable[None]]
Handler = Callable[[Any], Awaitable[Any]]
PlainHandler = Callable[[dict[str, Any]], None]


class RpcError(Exception):
    """An error object, raised by method handlers and by `call()` when the other side answers with one."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.data = data

    def to_dict(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


class RpcTimeout(RpcError):
    def __init__(self, method: str, timeout: float) -> None:
        super().__init__(INTERNAL_ERROR, f"no answer to {method!r} within {timeout:g}s")


class RpcClosed(RpcError):
    def __init__(self) -> None:
        super().__init__(INTERNAL_ERROR, "the connection closed before the answer arrived")


def dumps(message: dict[str, Any] | list[Any]) -> str:
    return orjson.dumps(message).decode()


def _valid_id(value: Any) -> bool:
    return value is None or (isinstance(value, str | int) and not isinstance(value, bool))


class JsonRpcPeer:
    """One side of a JSON-RPC conversation over a socket that `send` writes to.

    Feed every received text frame to `feed()`. Requests are answered from `methods` in their own tasks,
    so a slow handler never stops the socket from being read (and pongs from being noticed). At most
    `max_concurrent` run at once; a request beyond that is answered -32000 "busy" at once (never queued:
    waiting in `feed()` would stall the reader). Plain messages go to `on_plain` in arrival order.
    """

    def __init__(
        self,
        send: Send,
        methods: Mapping[str, Handler],
        *,
        timeout: float,
        on_plain: PlainHandler | None = None,
        max_concurrent: int = MAX_CONCURRENT_REQUESTS,
    ) -> None:
        self._send = send
        self.methods = methods
        self.timeout = timeout
        self.on_plain = on_plain
        self._ids = itertools.count(1)
        self._pending: dict[int | str, asyncio.Future[Any]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.max_concurrent = max_concurrent
        self.malformed = 0
        self.busy = 0  # requests refused because every slot was taken

    # --- outgoing ---------------------------------------------------------------------------------

    async def call(self, method: str, params: Any = None, within: float | None = None) -> Any:
        """Send a request and wait for its result; raise `RpcError` (or `RpcTimeout`) otherwise."""
        request_id = next(self._ids)
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        wait = self.timeout if within is None else within
        try:
            try:
                await self._send(dumps(message))
            except Exception as exc:  # the socket is gone (ConnectionClosed, …): an RpcError like the rest
                raise RpcClosed() from exc
            return await asyncio.wait_for(future, wait)
        except TimeoutError as exc:
            raise RpcTimeout(method, wait) from exc
        finally:
            self._pending.pop(request_id, None)

    async def notify(self, method: str, params: Any = None) -> None:
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        await self._send(dumps(message))

    # --- incoming ---------------------------------------------------------------------------------

    async def feed(self, raw: str | bytes) -> None:
        """Handle one received frame."""
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self._malformed("not JSON")
            await self._reply(_error(None, RpcError(PARSE_ERROR, "Parse error: the frame is not JSON")))
            return
        if isinstance(message, list):
            await self._batch(message)
            return
        if isinstance(message, dict) and "jsonrpc" not in message and isinstance(message.get("type"), str):
            if self.on_plain is not None:
                self.on_plain(message)
            return
        if isinstance(message, dict) and _is_response(message):
            self._resolve(message)
            return
        if not isinstance(message, dict) or not _is_request(message):
            self._malformed("invalid request")
            request_id = message.get("id") if isinstance(message, dict) else None
            error = RpcError(INVALID_REQUEST, "Invalid Request: not a JSON-RPC 2.0 request")
            await self._reply(_error(request_id if _valid_id(request_id) else None, error))
            return
        if self._full():
            if "id" in message:  # a notification is dropped: it has nobody to answer
                await self._reply(_error(message["id"], _busy()))
            return
        self._spawn(self._answer(message))

    async def _batch(self, items: list[Any]) -> None:
        if not items:
            await self._reply(_error(None, RpcError(INVALID_REQUEST, "Invalid Request: empty batch")))
            return
        if self._full():
            ids = [i["id"] for i in items if isinstance(i, dict) and _is_request(i) and "id" in i]
            for item in items:
                if isinstance(item, dict) and _is_response(item):
                    self._resolve(item)
            if ids:
                await self._reply([_error(request_id, _busy()) for request_id in ids])
            return

        async def run_batch() -> None:
            answers: list[dict[str, Any]] = []
            for item in items:
                if isinstance(item, dict) and _is_response(item):
                    self._resolve(item)
                elif not isinstance(item, dict) or not _is_request(item):
                    answers.append(_error(None, RpcError(INVALID_REQUEST, "Invalid Request")))
                else:
                    answer = await self._run(item)
                    if "id" in item:
                        answers.append(answer)
            if answers:
                await self._reply(answers)

        self._spawn(run_batch())

    def _full(self) -> bool:
        if len(self._tasks) < self.max_concurrent:
            return False
        self.busy += 1
        log.warning("cloud request refused: %d requests already running", len(self._tasks))
        return True

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        # The coroutine is the task itself (no wrapper awaiting it later), so cancelling a task that has
        # not started yet closes it cleanly instead of leaving a "never awaited" coroutine behind.
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, message: dict[str, Any]) -> None:
        answer = await self._run(message)
        if "id" in message:  # a notification runs, but is never answered
            await self._reply(answer)

    async def _run(self, message: dict[str, Any]) -> dict[str, Any]:
        request_id = message.get("id")
        method = message["method"]
        handler = self.methods.get(method)
        if handler is None:
            return _error(request_id, RpcError(METHOD_NOT_FOUND, f"Method not found: {method}"))
        params = message.get("params")
        if params is not None and not isinstance(params, dict | list):
            return _error(request_id, RpcError(INVALID_PARAMS, "Invalid params: use an object"))
        try:
            result = await handler(params)
        except RpcError as exc:
            return _error(request_id, exc)
        except Exception:
            log.exception("cloud method %s failed", method)
            return _error(request_id, RpcError(INTERNAL_ERROR, "Internal error"))
        return {"jsonrpc": "2.0", "id": request_id, "result": result}

    def _resolve(self, message: dict[str, Any]) -> None:
        request_id = message.get("id")
        future = self._pending.get(request_id) if isinstance(request_id, int | str) else None
        if future is None or future.done():
            log.debug("answer to an unknown or expired call id %r ignored", message.get("id"))
            return
        error = message.get("error")
        if isinstance(error, dict):
            code = error.get("code")
            future.set_exception(
                RpcError(
                    code if isinstance(code, int) else INTERNAL_ERROR,
                    str(error.get("message", "")),
                    error.get("data"),
                )
            )
        else:
            future.set_result(message.get("result"))

    async def _reply(self, message: dict[str, Any] | list[Any]) -> None:
        try:
            await self._send(dumps(message))
        except Exception:  # the socket went away; the caller's call() times out or is failed by close()
            log.debug("reply not sent: the connection is gone")

    def _malformed(self, why: str) -> None:
        self.malformed += 1
        log.debug("malformed cloud frame: %s", why)

    def close(self) -> None:
        """The socket is gone: fail every pending call and stop running requests."""
        for future in self._pending.values():
            if not future.done():
                future.set_exception(RpcClosed())
        self._pending.clear()
        for task in list(self._tasks):
            task.cancel()


def _is_request(message: dict[str, Any]) -> bool:
    return (
        message.get("jsonrpc") == "2.0"
        and isinstance(message.get("method"), str)
        and bool(message["method"])
        and _valid_id(message.get("id"))
    )


def _is_response(message: dict[str, Any]) -> bool:
    return (
        message.get("jsonrpc") == "2.0"
        and "method" not in message
        and ("result" in message or "error" in message)
        and "id" in message
    )


def _busy() -> RpcError:
    # RATE_LIMITED (429) like the REST API's answer to too many requests: retry later.
    return RpcError(APPLICATION_ERROR, BUSY_MESSAGE, {"code": "RATE_LIMITED", "status": 429})


def _error(request_id: Any, error: RpcError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": error.to_dict()}
