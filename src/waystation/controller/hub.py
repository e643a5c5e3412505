"""The controllers connected to this station process, and the requests sent to them.

A controller has at most one live WebSocket; a newer connection replaces an older one (a controller that
restarted before the station noticed the old socket was gone). Actuator writes go to that socket as
`{"type":"write","id","channel","value"}` and wait for the controller's `write_result` with the same id.

The hub is in memory, per process: with several workers a write reaches a controller only through the
worker it is connected to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.websockets import WebSocket

from waystation.errors import ControllerOffline, ControllerTimeout, ControllerWriteFailed

log = logging.getLogger(__name__)


class ControllerConnection:
    def __init__(self, controller_id: str, station_id: str, websocket: WebSocket) -> None:
        self.controller_id = controller_id
        self.station_id = station_id
        self.websocket = websocket
        self.connected_since = datetime.now(UTC)
        self.status: dict[str, Any] | None = None  # the controller's last `status` message
        self.units: dict[str, str] | None = None  # mapped units, loaded on first use and after changes
        self.units_applied: set[str] = set()  # channels whose unit was applied on this connection
        self.closed = False
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._send_lock = asyncio.Lock()  # frames from the socket's reader and from HTTP requests

    async def send(self, message: dict[str, Any]) -> None:
        async with self._send_lock:
            await self.websocket.send_text(orjson.dumps(message).decode())

    async def close(self, code: int, reason: str) -> None:
        self.closed = True
        with contextlib.suppress(Exception):  # already gone: nothing left to close
            await self.websocket.close(code=code, reason=reason)
        self.fail_pending()

    def expect(self, request_id: str) -> asyncio.Future[dict[str, Any]]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        return future

    def forget(self, request_id: str) -> None:
        self._pending.pop(request_id, None)

    def resolve(self, message: dict[str, Any]) -> None:
        future = self._pending.pop(str(message.get("id")), None)
        if future is not None and not future.done():
            future.set_result(message)

    def fail_pending(self) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ControllerOffline("The controller disconnected before it answered."))
        self._pending.clear()


class ControllerHub:
    def __init__(self, write_timeout: float) -> None:
        self.write_timeout = write_timeout
        self._connections: dict[str, ControllerConnection] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def attach(self, conn: ControllerConnection) -> ControllerConnection | None:
        previous = self._connections.get(conn.controller_id)
        self._connections[conn.controller_id] = conn
        return previous

    def detach(self, conn: ControllerConnection) -> None:
        if self._connections.get(conn.controller_id) is conn:
            del self._connections[conn.controller_id]
        conn.fail_pending()

    def get(self, controller_id: str) -> ControllerConnection | None:
        return self._connections.get(controller_id)

    async def write(self, controller_id: str, channel: str, value: float) -> None:
        """Send an actuator write and wait for the plugin's answer."""
        conn = self._connections.get(controller_id)
        if conn is None or conn.closed:
            raise ControllerOffline(f"Controller {controller_id!r} is not connected.")
        request_id = secrets.token_hex(8)
        future = conn.expect(request_id)
        try:
            try:
                await conn.send({"type": "write", "id": request_id, "channel": channel, "value": value})
            except Exception as exc:  # the socket closed under us
                raise ControllerOffline(f"Controller {controller_id!r} is not connected.") from exc
            try:
                result = await asyncio.wait_for(future, self.write_timeout)
            except TimeoutError as exc:
                raise ControllerTimeout(
                    f"Controller {controller_id!r} did not answer within {self.write_timeout:g}s."
                ) from exc
        finally:
            conn.forget(request_id)
        if not result.get("ok"):
            error = str(result.get("error") or "the plugin refused the write")[:500]
            raise ControllerWriteFailed(f"Controller {controller_id!r}: {error}")

    def notify_config_changed(self, controller_id: str) -> None:
        """Tell a connected controller to fetch its configuration again (after a commit changed it)."""
        conn = self._connections.get(controller_id)
        if conn is None:
            return  # it fetches the configuration when it connects
        conn.units = None
        conn.units_applied.clear()
        self._spawn(self._send_quietly(conn, {"type": "config_changed"}))

    def disconnect(self, controller_id: str, code: int, reason: str) -> None:
        """Close a controller's socket (deleted, or its token replaced)."""
        conn = self._connections.pop(controller_id, None)
        if conn is not None:
            self._spawn(conn.close(code, reason))

    async def close_all(self) -> None:
        for conn in list(self._connections.values()):
            await conn.close(1001, "station shutting down")
        self._connections.clear()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)  # keep a reference until it is done
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _send_quietly(conn: ControllerConnection, message: dict[str, Any]) -> None:
        try:
            await conn.send(message)
        except Exception:  # the socket is closing; the controller fetches its config on reconnect
            log.debug("could not notify controller %s", conn.controller_id, exc_info=True)

    @property
    def connected(self) -> list[str]:
        return sorted(self._connections)
