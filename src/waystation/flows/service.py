"""Flow and MQTT-server use cases: validated CRUD, records, deliveries."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from waystation.config import MqttEndpoint
from waystation.db import emit
from waystation.errors import (
    FlowExists,
    FlowInvalid,
    FlowNotFound,
    MqttServerExists,
    MqttServerInUse,
    MqttServerNotFound,
)
from waystation.flows.models import DataRecord, Flow, MqttServer
from waystation.flows.schemas import (
    FlowCreate,
    FlowOut,
    FlowStats,
    FlowUpdate,
    FlowWithSecret,
    MqttServerCreate,
    MqttServerOut,
    MqttServerUpdate,
)
from waystation.flows.validation import check_schema
from waystation.mqtt.topics import validate_filter
from waystation.secrets_box import SecretBox
from waystation.webhooks.models import Delivery
from waystation.webhooks.signing import new_secret


def flow_out(flow: Flow) -> FlowOut:
    return FlowOut(
        id=flow.id,
        code=flow.code,
        topic=flow.topic,
        payload_schema=flow.payload_schema or {},
        action=flow.action,
        endpoint_url=flow.endpoint_url,
        mqtt_server_id=flow.mqtt_server_id,
        enabled=flow.enabled,
        last_msg_id=flow.last_msg_id,
        stats=FlowStats(accepted=flow.accepted, rejected=flow.rejected, last_error=flow.last_error),
        has_endpoint_secret=flow.endpoint_secret_sealed is not None,
        created_at=flow.created_at,
        updated_at=flow.updated_at,
    )


def flow_with_secret(flow: Flow, secret: str | None) -> FlowWithSecret | FlowOut:
    """The flow, with its endpoint secret when this call made a new one (the only time it is shown)."""
    out = flow_out(flow)
    return out if secret is None else FlowWithSecret(**out.model_dump(), endpoint_secret=secret)


def server_out(server: MqttServer) -> MqttServerOut:
    return MqttServerOut(
        id=server.id,
        name=server.name,
        host=server.host,
        port=server.port,
        tls=server.tls,
        username=server.username,
        has_password=server.password_sealed is not None,
        client_id=server.client_id,
        is_default=server.is_default,
        enabled=server.enabled,
        created_at=server.created_at,
    )


def _check(topic: str, payload_schema: dict[str, Any], action: str, endpoint_url: str | None) -> None:
    try:
        validate_filter(topic)
    except ValueError as exc:
        raise FlowInvalid(f"topic: {exc}") from exc
    problem = check_schema(payload_schema)
    if problem:
        raise FlowInvalid(f"payload_schema: {problem}")
    if action == "POST_ENDPOINT":
        if not endpoint_url:
            raise FlowInvalid("endpoint_url is required when action is POST_ENDPOINT")
        parts = urlsplit(endpoint_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise FlowInvalid("endpoint_url must be an http:// or https:// URL")


async def _check_server(session: AsyncSession, server_id: int | None) -> None:
    if server_id is not None and await session.get(MqttServer, server_id) is None:
        raise MqttServerNotFound(f"No MQTT server {server_id}.")


# --- flows ----------------------------------------------------------------------------------------


async def list_flows(session: AsyncSession) -> Sequence[Flow]:
    return (await session.scalars(select(Flow).order_by(Flow.code))).all()


async def get_flow(session: AsyncSession, code: str) -> Flow:
    flow = await session.scalar(select(Flow).where(Flow.code == code))
    if flow is None:
        raise FlowNotFound(f"No flow {code!r}.")
    return flow


async def create_flow(
    session: AsyncSession, body: FlowCreate, station_id: str, box: SecretBox
) -> tuple[Flow, str | None]:
    """The new flow and, for POST_ENDPOINT, its endpoint secret (returned once; only sealed is stored)."""
    _check(body.topic, body.payload_schema, body.action, body.endpoint_url)
    await _check_server(session, body.mqtt_server_id)
    if await session.scalar(select(Flow.id).where(Flow.code == body.code)) is not None:
        raise FlowExists(f"A flow with code {body.code!r} already exists.")
    secret = new_secret() if body.action == "POST_ENDPOINT" else None
    now = datetime.now(UTC)
    flow = Flow(
        code=body.code,
        topic=body.topic,
        payload_schema=body.payload_schema,
        action=body.action,
        endpoint_url=body.endpoint_url,
        endpoint_secret_sealed=box.seal(secret) if secret is not None else None,
        mqtt_server_id=body.mqtt_server_id,
        enabled=body.enabled,
        station_id=station_id,
        created_at=now,
        updated_at=now,
    )
    session.add(flow)
    await session.flush()
    emit(session, "flow.changed", {"code": flow.code, "change": "created"}, station_id)
    return flow, secret


async def update_flow(
    session: AsyncSession, code: str, body: FlowUpdate, box: SecretBox
) -> tuple[Flow, str | None]:
    """The changed flow and, when it was switched to POST_ENDPOINT, its new endpoint secret (returned
    once). Switching away keeps the secret, so deliveries still pending keep being signed."""
    flow = await get_flow(session, code)
    changes = {f: getattr(body, f) for f in body.model_fields_set}
    topic = changes.get("topic") or flow.topic
    schema = changes["payload_schema"] if changes.get("payload_schema") is not None else flow.payload_schema
    action = changes.get("action") or flow.action
    url = changes.get("endpoint_url", flow.endpoint_url)
    _check(topic, schema, action, url)
    if "mqtt_server_id" in changes:
        await _check_server(session, changes["mqtt_server_id"])
    secret = None
    if action == "POST_ENDPOINT" and flow.action != "POST_ENDPOINT":
        # A fresh secret on every switch: the endpoint may be another receiver than last time.
        secret = new_secret()
        flow.endpoint_secret_sealed = box.seal(secret)
    for field, value in changes.items():
        if field in ("topic", "action", "payload_schema", "enabled") and value is None:
            continue
        setattr(flow, field, value)
    flow.version += 1
    flow.updated_at = datetime.now(UTC)
    emit(session, "flow.changed", {"code": flow.code, "change": "updated"}, flow.station_id)
    return flow, secret


def rotate_endpoint_secret(flow: Flow, box: SecretBox) -> str:
    """A new endpoint secret; the old one stops signing at once (attempts from now on, retries of the
    flow's older deliveries included). Also how a flow made before signing existed gets its first."""
    if flow.action != "POST_ENDPOINT":
        raise FlowInvalid("only a POST_ENDPOINT flow has an endpoint secret")
    secret = new_secret()
    flow.endpoint_secret_sealed = box.seal(secret)
    flow.updated_at = datetime.now(UTC)
    return secret


async def delete_flow(session: AsyncSession, code: str) -> Flow:
    flow = await get_flow(session, code)
    await session.delete(flow)
    emit(session, "flow.changed", {"code": code, "change": "deleted"}, flow.station_id)
    return flow


async def list_records(session: AsyncSession, flow: Flow, limit: int) -> list[dict[str, Any]]:
    rows = (
        await session.scalars(
            select(DataRecord)
            .where(DataRecord.flow_id == flow.id)
            .order_by(DataRecord.msg_id.desc(), DataRecord.id)
            .limit(limit)
        )
    ).all()
    return [
        {"msg_id": r.msg_id, "field": r.field, "value": r.value, "received_at": r.received_at.isoformat()}
        for r in rows
    ]


async def list_deliveries(session: AsyncSession, kind: str, source: str, limit: int) -> list[dict[str, Any]]:
    rows = (
        await session.scalars(
            select(Delivery)
            .where(Delivery.kind == kind, Delivery.source == source)
            .order_by(Delivery.id.desc())
            .limit(limit)
        )
    ).all()
    return [
        {
            "id": d.id,
            "status": d.status,
            "attempts": d.attempts,
            "last_status_code": d.last_status_code,
            "last_error": d.last_error,
            "next_attempt_at": d.next_attempt_at.isoformat(),
            "created_at": d.created_at.isoformat(),
            "delivered_at": d.delivered_at.isoformat() if d.delivered_at else None,
        }
        for d in rows
    ]


# --- MQTT servers ------------------------------------------------------------------------------------


async def list_servers(session: AsyncSession) -> Sequence[MqttServer]:
    return (await session.scalars(select(MqttServer).order_by(MqttServer.id))).all()


async def get_server(session: AsyncSession, server_id: int) -> MqttServer:
    server = await session.get(MqttServer, server_id)
    if server is None:
        raise MqttServerNotFound(f"No MQTT server {server_id}.")
    return server


async def create_server(session: AsyncSession, body: MqttServerCreate, box: SecretBox) -> MqttServer:
    if await session.scalar(select(MqttServer.id).where(MqttServer.name == body.name)) is not None:
        raise MqttServerExists(f"An MQTT server named {body.name!r} already exists.")
    server = MqttServer(
        name=body.name,
        host=body.host,
        port=body.port,
        tls=body.tls,
        username=body.username,
        password_sealed=box.seal(body.password) if body.password else None,
        client_id=body.client_id,
        is_default=body.is_default,
        enabled=body.enabled,
    )
    session.add(server)
    await session.flush()
    emit(session, "flow.changed", {"mqtt_server_id": server.id, "change": "server_created"})
    return server


async def update_server(
    session: AsyncSession, server_id: int, body: MqttServerUpdate, box: SecretBox
) -> MqttServer:
    server = await get_server(session, server_id)
    for field in body.model_fields_set:
        value = getattr(body, field)
        if field == "password":
            server.password_sealed = box.seal(value) if value else None
        elif value is not None or field in ("username", "client_id"):
            setattr(server, field, value)
    emit(session, "flow.changed", {"mqtt_server_id": server.id, "change": "server_updated"})
    return server


async def delete_server(session: AsyncSession, server_id: int) -> MqttServer:
    server = await get_server(session, server_id)
    users = await session.scalar(
        select(func.count()).select_from(Flow).where(Flow.mqtt_server_id == server_id)
    )
    if users:
        raise MqttServerInUse(f"{users} flow(s) still read from this server; move or delete them first.")
    await session.delete(server)
    emit(session, "flow.changed", {"mqtt_server_id": server_id, "change": "server_deleted"})
    return server


async def default_station_broker(session: AsyncSession, box: SecretBox) -> MqttEndpoint | None:
    """The station broker taken from `mqtt_servers` when `WAYSTATION_MQTT_URL` is not set: the first enabled
    server marked default (lowest id). None without one: the station then runs its embedded broker, and
    servers not marked default only serve the flows that name them."""
    server = await session.scalar(
        select(MqttServer)
        .where(MqttServer.enabled.is_(True), MqttServer.is_default.is_(True))
        .order_by(MqttServer.id)
        .limit(1)
    )
    if server is None:
        return None
    password = box.open(server.password_sealed) if server.password_sealed else None
    return MqttEndpoint(False, server.host, server.port, server.tls, server.username, password)
