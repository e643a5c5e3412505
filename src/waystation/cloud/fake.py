"""A small cloud service speaking the other side of PROTOCOLS §7, for tests and for trying the link.

`waystation fake-cloud --port 8765` serves the station WebSocket on `ws://127.0.0.1:8765/ws/station` and
a control API on the next port (docs/cloud.md#the-fake-cloud). The control API has no authentication,
so it always listens on 127.0.0.1, whatever `--host` says:

    GET  /stations                               chip ids, claimed, connected, counters
    POST /claims {"chipId","claimSecret"}        register a station as the owner would in the cloud app
    POST /stations/{chipId}/rpc {method,params}  call the station; answers {"result"} or {"error"}
    GET  /stations/{chipId}/notifications        what the station sent, oldest first
    POST /stations/{chipId}/message {…}          send a plain message (`identity_sync`, …)
    POST /stations/{chipId}/pings {"answer"}     stop (or resume) answering the station's pings
    POST /stations/{chipId}/disconnect           drop the station's connection

Tests use the same state in-process (`FakeCloud.call`, `.send`, `.stations`). Nothing is persisted.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode

log = logging.getLogger(__name__)

WS_PATH = "/ws/station"
CONTROL_HOST = "127.0.0.1"  # the control API can impersonate the cloud: never off this machine
TOKEN_PREFIX = "wsct_"


@dataclass
class FakeStation:
    """What the fake cloud knows of one station (by chip id)."""

    chip_id: str
    token: str | None = None
    connection: ServerConnection | None = None
    answer_pings: bool = True
    notifications: list[dict[str, Any]] = field(default_factory=list)
    notification_times: list[float] = field(default_factory=list)  # time.monotonic() of each arrival
    requests: list[dict[str, Any]] = field(default_factory=list)  # JSON-RPC requests the station made
    # (opened, closed) in time.monotonic() seconds, one per authenticated connection.
    connections: list[tuple[float, float | None]] = field(default_factory=list)
    auths: int = 0

    @property
    def connected(self) -> bool:
        return self.connection is not None

    def summary(self) -> dict[str, Any]:
        return {
            "chipId": self.chip_id,
            "claimed": self.token is not None,
            "connected": self.connected,
            "answerPings": self.answer_pings,
            "auths": self.auths,
            "notifications": len(self.notifications),
        }


class StationOffline(Exception):
    pass


class FakeCloud:
    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        control_port: int | None = None,
        require_registration: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self.control_port = control_port
        # With registration required, only chip ids registered with their claim secret may claim.
        self.require_registration = require_registration
        self.registrations: dict[str, str] = {}
        self.stations: dict[str, FakeStation] = {}
        self.tokens: dict[str, str] = {}  # station token → chip id
        self.silent_methods: set[str] = set()  # station → cloud methods the fake never answers
        self.claims_refused = 0
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._server: Server | None = None
        self._http: uvicorn.Server | None = None
        self._http_task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}{WS_PATH}"

    @property
    def control_url(self) -> str:
        return f"http://{CONTROL_HOST}:{self.control_port}"

    # --- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        self._server = await serve(self._handle, self.host, self.port, ping_interval=None)
        self.port = next(iter(self._server.sockets)).getsockname()[1]
        if self.control_port is not None:
            config = uvicorn.Config(
                self.control_app(), host=CONTROL_HOST, port=self.control_port, log_config=None, lifespan="off"
            )
            self._http = _QuietServer(config)
            self._http_task = asyncio.create_task(self._http.serve())
            while not self._http.started:
                if self._http_task.done():
                    self._http_task.result()
                    raise RuntimeError("the fake cloud's control API did not start")
                await asyncio.sleep(0.02)
            self.control_port = self._http.servers[0].sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._http is not None:
            self._http.should_exit = True
        if self._http_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._http_task, 10)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self._server = self._http = self._http_task = None

    async def serve_forever(self) -> None:
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()

    async def __aenter__(self) -> FakeCloud:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- what tests and the control API do ---------------------------------------------------------

    def register(self, chip_id: str, claim_secret: str) -> None:
        self.registrations[chip_id] = claim_secret

    def station(self, chip_id: str) -> FakeStation:
        return self.stations.setdefault(chip_id, FakeStation(chip_id))

    def set_answer_pings(self, chip_id: str, answer: bool) -> None:
        self.station(chip_id).answer_pings = answer

    async def call(
        self, chip_id: str, method: str, params: Any = None, wait_seconds: float = 10.0
    ) -> dict[str, Any]:
        """Call the station; the whole answer (`{"jsonrpc","id","result"|"error"}`)."""
        conn = self._connection(chip_id)
        request_id = next(self._ids)
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await conn.send(orjson.dumps(message).decode())
            return await asyncio.wait_for(future, wait_seconds)
        finally:
            self._pending.pop(request_id, None)

    async def send(self, chip_id: str, message: dict[str, Any] | str) -> None:
        """Send a plain message (or any raw text) to the station."""
        raw = message if isinstance(message, str) else orjson.dumps(message).decode()
        await self._connection(chip_id).send(raw)

    async def disconnect(self, chip_id: str) -> None:
        conn = self.station(chip_id).connection
        if conn is not None:
            await conn.close(1001, "cloud going away")

    def _connection(self, chip_id: str) -> ServerConnection:
        station = self.stations.get(chip_id)
        if station is None or station.connection is None:
            raise StationOffline(f"station {chip_id} is not connected")
        return station.connection

    # --- the station side of the socket ------------------------------------------------------------

    async def _handle(self, conn: ServerConnection) -> None:
        if conn.request is None or conn.request.path.split("?")[0] != WS_PATH:
            await conn.close(4404, "unknown path")
            return
        holder: dict[str, FakeStation] = {}
        self._control_pings(conn, holder)
        try:
            async for raw in conn:
                try:
                    message = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    continue
                if not isinstance(message, dict):
                    continue
                if "station" not in holder:
                    await self._handshake(conn, message, holder)
                else:
                    await self._from_station(conn, holder["station"], message)
        except ConnectionClosed:
            pass
        finally:
            station = holder.get("station")
            if station is not None and station.connection is conn:
                station.connection = None
                opened, _ = station.connections[-1]
                station.connections[-1] = (opened, time.monotonic())

    def _control_pings(self, conn: ServerConnection, holder: dict[str, FakeStation]) -> None:
        """Let a test make this side stop answering pings, like a cloud that hangs (websockets answers
        them inside its protocol, so the frame is intercepted there)."""
        protocol = conn.protocol
        original = protocol.recv_frame

        def recv_frame(frame: Frame) -> None:
            station = holder.get("station")
            if frame.opcode is Opcode.PING and station is not None and not station.answer_pings:
                return
            original(frame)

        protocol.recv_frame = recv_frame  # type: ignore[method-assign]

    async def _handshake(
        self, conn: ServerConnection, message: dict[str, Any], holder: dict[str, FakeStation]
    ) -> None:
        kind = message.get("type")
        if kind == "claim_handshake":
            chip_id, secret = message.get("chipId"), message.get("claimSecret")
            if not isinstance(chip_id, str) or not isinstance(secret, str):
                await conn.send(_json({"type": "claim_failed", "reason": "chipId and claimSecret required"}))
                return
            if self.require_registration and not secrets.compare_digest(
                self.registrations.get(chip_id, "").encode(), secret.encode()
            ):
                self.claims_refused += 1
                await conn.send(_json({"type": "claim_failed", "reason": "unknown chip id or claim secret"}))
                return
            station = self.station(chip_id)
            if station.token is not None:
                self.tokens.pop(station.token, None)
            station.token = TOKEN_PREFIX + secrets.token_urlsafe(24)
            self.tokens[station.token] = chip_id
            await conn.send(_json({"type": "claim_success", "stationToken": station.token}))
        elif kind == "station_auth":
            chip_id = self.tokens.get(str(message.get("stationToken")))
            if chip_id is None:
                await conn.send(_json({"type": "auth_failed", "reason": "unknown station token"}))
                await conn.close(4401, "unknown station token")
                return
            station = self.station(chip_id)
            if station.connection is not None:  # a newer connection replaces an older one
                await station.connection.close(4409, "replaced by a new connection")
            station.connection = conn
            station.auths += 1
            station.connections.append((time.monotonic(), None))
            holder["station"] = station
            await conn.send(_json({"type": "auth_ok"}))

    async def _from_station(
        self, conn: ServerConnection, station: FakeStation, message: dict[str, Any]
    ) -> None:
        if "method" in message:
            if "id" not in message:
                station.notifications.append(message)
                station.notification_times.append(time.monotonic())
                return
            station.requests.append(message)
            method = message["method"]
            if method in self.silent_methods:
                return
            if method == "cloud.echo":
                answer = {"jsonrpc": "2.0", "id": message["id"], "result": message.get("params")}
            else:
                error = {"code": -32601, "message": f"Method not found: {method}"}
                answer = {"jsonrpc": "2.0", "id": message["id"], "error": error}
            await conn.send(_json(answer))
            return
        future = self._pending.get(message.get("id"))  # type: ignore[arg-type]
        if future is not None and not future.done():
            future.set_result(message)

    # --- control API -------------------------------------------------------------------------------

    def control_app(self) -> Starlette:
        async def stations(_: Request) -> Response:
            return JSONResponse({"items": [s.summary() for s in self.stations.values()]})

        async def claims(request: Request) -> Response:
            body = await _body(request)
            chip_id, secret = body.get("chipId"), body.get("claimSecret")
            if not isinstance(chip_id, str) or not isinstance(secret, str):
                return JSONResponse({"error": "chipId and claimSecret are required"}, status_code=422)
            self.register(chip_id, secret)
            return JSONResponse({"ok": True}, status_code=201)

        async def rpc(request: Request) -> Response:
            body = await _body(request)
            method = body.get("method")
            if not isinstance(method, str):
                return JSONResponse({"error": "method is required"}, status_code=422)
            try:
                answer = await self.call(request.path_params["chip_id"], method, body.get("params"))
            except StationOffline as exc:
                return JSONResponse({"error": str(exc)}, status_code=404)
            except TimeoutError:
                return JSONResponse({"error": "the station did not answer"}, status_code=504)
            return JSONResponse({k: v for k, v in answer.items() if k in ("result", "error")})

        async def notifications(request: Request) -> Response:
            station = self.stations.get(request.path_params["chip_id"])
            return JSONResponse({"items": station.notifications if station else []})

        async def message(request: Request) -> Response:
            try:
                await self.send(request.path_params["chip_id"], await _body(request))
            except StationOffline as exc:
                return JSONResponse({"error": str(exc)}, status_code=404)
            return JSONResponse({"ok": True}, status_code=202)

        async def pings(request: Request) -> Response:
            answer = (await _body(request)).get("answer")
            if not isinstance(answer, bool):
                return JSONResponse({"error": "answer must be true or false"}, status_code=422)
            self.set_answer_pings(request.path_params["chip_id"], answer)
            return JSONResponse({"ok": True})

        async def disconnect(request: Request) -> Response:
            await self.disconnect(request.path_params["chip_id"])
            return JSONResponse({"ok": True})

        return Starlette(
            routes=[
                Route("/stations", stations),
                Route("/claims", claims, methods=["POST"]),
                Route("/stations/{chip_id}/rpc", rpc, methods=["POST"]),
                Route("/stations/{chip_id}/notifications", notifications),
                Route("/stations/{chip_id}/message", message, methods=["POST"]),
                Route("/stations/{chip_id}/pings", pings, methods=["POST"]),
                Route("/stations/{chip_id}/disconnect", disconnect, methods=["POST"]),
            ]
        )


class _QuietServer(uvicorn.Server):
    """The control API leaves signals alone: Ctrl-C and SIGTERM belong to whoever embeds the fake."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _json(message: dict[str, Any]) -> str:
    return orjson.dumps(message).decode()


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        return {}
    return body if isinstance(body, dict) else {}
