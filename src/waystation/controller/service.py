"""Controllers, their plugin instances and channel mappings: use cases and queries.

A controller is a `waystation controller` process at one station. It authenticates with its own token
(`wsc_…`, shown once, stored as SHA-256), writes only its own `controller:{id}/…` channels, and reads
the configuration built here (`controller_config`) at start and whenever it is told it changed.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from waystation.auth.roles import Principal
from waystation.auth.security import new_secret, sha256_hex
from waystation.controller.models import ChannelMapping, Controller, PluginInstance
from waystation.controller.schemas import (
    ControllerOut,
    InstanceCreate,
    InstanceOut,
    InstanceUpdate,
    MappingCreate,
    MappingOut,
    MappingUpdate,
)
from waystation.errors import (
    ControllerExists,
    ControllerNotFound,
    MappingExists,
    MappingInvalid,
    MappingNotFound,
    PluginInstanceExists,
    PluginInstanceNotFound,
    TokenInvalid,
)
from waystation.secrets_box import SecretBox, is_sealed_json
from waystation.station import service as stations
from waystation.telemetry.models import Channel

CONTROLLER_TOKEN_PREFIX = "wsc_"
RESERVED_IDS = frozenset({"me"})  # `/controllers/me/config` is the controller's own view


def channel_id(controller_id: str, key: str) -> str:
    return f"controller:{controller_id}/{key}"


def principal_of(controller: Controller) -> Principal:
    """A controller acts only at its station, with a role no user route accepts."""
    return Principal(
        kind="controller",
        id=controller.id,
        name=controller.id,
        role="controller",
        station_id=controller.station_id,
        station_roles={controller.station_id: "controller"},
    )


# --- controllers ---------------------------------------------------------------------------------


def controller_out(
    c: Controller, *, connected_since: datetime | None = None, status: dict[str, Any] | None = None
) -> ControllerOut:
    return ControllerOut(
        id=c.id,
        station_id=c.station_id,
        name=c.name,
        token_prefix=c.token_prefix,
        created_by=c.created_by,
        created_at=c.created_at,
        last_connected_at=c.last_connected_at,
        connected=connected_since is not None,
        connected_since=connected_since,
        status=status,
    )


async def create_controller(
    session: AsyncSession, *, controller_id: str, name: str, station_id: str, actor: str
) -> tuple[Controller, str]:
    await stations.get_station(session, station_id)
    if controller_id.lower() in RESERVED_IDS:
        raise ControllerExists(f"{controller_id!r} is reserved; choose another id.")
    if await session.get(Controller, controller_id) is not None:
        raise ControllerExists(f"A controller {controller_id!r} already exists.")
    plaintext = new_secret(CONTROLLER_TOKEN_PREFIX)
    now = datetime.now(UTC)
    controller = Controller(
        id=controller_id,
        station_id=station_id,
        name=name,
        token_hash=sha256_hex(plaintext),
        token_prefix=plaintext[:10],
        created_by=actor,
        created_at=now,
        updated_at=now,
    )
    session.add(controller)
    try:
        await session.flush()
    except IntegrityError as exc:  # created by a concurrent request in between
        raise ControllerExists(f"A controller {controller_id!r} already exists.") from exc
    return controller, plaintext


async def get_controller(session: AsyncSession, controller_id: str) -> Controller:
    controller = await session.get(Controller, controller_id)
    if controller is None:
        raise ControllerNotFound(f"No controller {controller_id!r}.")
    return controller


async def controller_at(session: AsyncSession, station_id: str, controller_id: str) -> bool:
    """Whether this plugin controller belongs to the station (rules and dashboards may name its
    `controller:{id}/…` channels before their first reading creates them)."""
    controller = await session.get(Controller, controller_id)
    return controller is not None and controller.station_id == station_id


async def list_controllers(
    session: AsyncSession, visible_stations: Collection[str] | None = None
) -> Sequence[Controller]:
    query = select(Controller).order_by(Controller.id)
    if visible_stations is not None:
        query = query.where(Controller.station_id.in_(list(visible_stations)))
    return (await session.scalars(query)).all()


def rename(controller: Controller, name: str) -> None:
    controller.name = name
    controller.updated_at = datetime.now(UTC)


def rotate_token(controller: Controller) -> str:
    plaintext = new_secret(CONTROLLER_TOKEN_PREFIX)
    controller.token_hash = sha256_hex(plaintext)
    controller.token_prefix = plaintext[:10]
    controller.updated_at = datetime.now(UTC)
    return plaintext


async def authenticate(session: AsyncSession, token: str) -> Controller:
    if not token.startswith(CONTROLLER_TOKEN_PREFIX):
        raise TokenInvalid("Send the controller token: `Authorization: Bearer wsc_…`.")
    controller = await session.scalar(select(Controller).where(Controller.token_hash == sha256_hex(token)))
    if controller is None:
        raise TokenInvalid("The controller token is unknown, or was replaced or deleted.")
    return controller


async def mark_connected(session: AsyncSession, controller_id: str) -> None:
    await session.execute(
        update(Controller).where(Controller.id == controller_id).values(last_connected_at=datetime.now(UTC))
    )


# --- plugin instances ----------------------------------------------------------------------------


def instance_out(i: PluginInstance, box: SecretBox) -> InstanceOut:
    return InstanceOut(
        id=i.id,
        controller_id=i.controller_id,
        name=i.name,
        plugin=i.plugin,
        config=box.open_json(i.config),
        enabled=i.enabled,
        interval_seconds=i.interval_seconds,
        created_at=i.created_at,
        updated_at=i.updated_at,
    )


async def list_instances(session: AsyncSession, controller_id: str) -> Sequence[PluginInstance]:
    query = select(PluginInstance).where(PluginInstance.controller_id == controller_id)
    return (await session.scalars(query.order_by(PluginInstance.name))).all()


async def get_instance(session: AsyncSession, controller_id: str, name: str) -> PluginInstance:
    instance = await session.scalar(
        select(PluginInstance).where(
            PluginInstance.controller_id == controller_id, PluginInstance.name == name
        )
    )
    if instance is None:
        raise PluginInstanceNotFound(f"Controller {controller_id!r} has no plugin instance {name!r}.")
    return instance


async def create_instance(
    session: AsyncSession, controller_id: str, body: InstanceCreate, box: SecretBox
) -> PluginInstance:
    exists = await session.scalar(
        select(PluginInstance.id).where(
            PluginInstance.controller_id == controller_id, PluginInstance.name == body.name
        )
    )
    if exists is not None:
        raise PluginInstanceExists(f"Controller {controller_id!r} already has an instance {body.name!r}.")
    now = datetime.now(UTC)
    instance = PluginInstance(
        created_at=now,
        updated_at=now,
        controller_id=controller_id,
        name=body.name,
        plugin=body.plugin,
        config=box.seal_json(body.config),  # it may hold device credentials: sealed at rest
        enabled=body.enabled,
        interval_seconds=body.interval_seconds,
    )
    session.add(instance)
    try:
        await session.flush()
    except IntegrityError as exc:
        raise PluginInstanceExists(
            f"Controller {controller_id!r} already has an instance {body.name!r}."
        ) from exc
    return instance


def update_instance(instance: PluginInstance, body: InstanceUpdate, box: SecretBox) -> list[str]:
    changed = []
    for field in sorted(body.model_fields_set):
        value = getattr(body, field)
        if value is None:
            continue  # none of these fields can be emptied; null means "leave as is"
        setattr(instance, field, box.seal_json(value) if field == "config" else value)
        changed.append(field)
    instance.updated_at = datetime.now(UTC)
    return changed


# --- channel mappings ----------------------------------------------------------------------------


def mapping_out(m: ChannelMapping, instance_name: str) -> MappingOut:
    return MappingOut(
        id=m.id,
        controller_id=m.controller_id,
        instance=instance_name,
        plugin_channel=m.plugin_channel,
        key=m.key,
        channel=channel_id(m.controller_id, m.key),
        unit=m.unit,
        direction="output" if m.direction == "output" else "input",
        min=m.min_value,
        max=m.max_value,
        created_at=m.created_at,
        updated_at=m.updated_at,
    )


async def list_mappings(session: AsyncSession, controller_id: str) -> list[tuple[ChannelMapping, str]]:
    rows = await session.execute(
        select(ChannelMapping, PluginInstance.name)
        .join(PluginInstance, PluginInstance.id == ChannelMapping.instance_id)
        .where(ChannelMapping.controller_id == controller_id)
        .order_by(ChannelMapping.key)
    )
    return [(m, name) for m, name in rows]


async def get_mapping(
    session: AsyncSession, controller_id: str, mapping_id: int
) -> tuple[ChannelMapping, str]:
    row = (
        await session.execute(
            select(ChannelMapping, PluginInstance.name)
            .join(PluginInstance, PluginInstance.id == ChannelMapping.instance_id)
            .where(ChannelMapping.controller_id == controller_id, ChannelMapping.id == mapping_id)
        )
    ).first()
    if row is None:
        raise MappingNotFound(f"Controller {controller_id!r} has no channel mapping {mapping_id}.")
    return row[0], row[1]


async def _check_unique(
    session: AsyncSession,
    controller_id: str,
    key: str,
    instance_id: int,
    plugin_channel: str,
    own_id: int | None,
) -> None:
    taken = await session.scalar(
        select(ChannelMapping.id).where(
            ChannelMapping.controller_id == controller_id,
            ChannelMapping.key == key,
            ChannelMapping.id != (own_id or 0),
        )
    )
    if taken is not None:
        raise MappingExists(
            f"Channel {channel_id(controller_id, key)!r} is already mapped (mapping {taken})."
        )
    taken = await session.scalar(
        select(ChannelMapping.id).where(
            ChannelMapping.instance_id == instance_id,
            ChannelMapping.plugin_channel == plugin_channel,
            ChannelMapping.id != (own_id or 0),
        )
    )
    if taken is not None:
        raise MappingExists(f"Plugin channel {plugin_channel!r} is already mapped (mapping {taken}).")


async def create_mapping(
    session: AsyncSession, controller_id: str, body: MappingCreate
) -> tuple[ChannelMapping, str]:
    instance = await session.scalar(
        select(PluginInstance).where(
            PluginInstance.controller_id == controller_id, PluginInstance.name == body.instance
        )
    )
    if instance is None:
        raise MappingInvalid(f"Controller {controller_id!r} has no plugin instance {body.instance!r}.")
    key = body.key or body.plugin_channel
    await _check_unique(session, controller_id, key, instance.id, body.plugin_channel, None)
    now = datetime.now(UTC)
    mapping = ChannelMapping(
        created_at=now,
        updated_at=now,
        controller_id=controller_id,
        instance_id=instance.id,
        plugin_channel=body.plugin_channel,
        key=key,
        unit=body.unit,
        direction=body.direction,
        min_value=body.min,
        max_value=body.max,
    )
    session.add(mapping)
    try:
        await session.flush()
    except IntegrityError as exc:
        raise MappingExists(f"Channel {channel_id(controller_id, key)!r} is already mapped.") from exc
    await apply_units(session, {channel_id(controller_id, key): body.unit})
    return mapping, instance.name


async def update_mapping(session: AsyncSession, mapping: ChannelMapping, body: MappingUpdate) -> list[str]:
    fields = body.model_fields_set
    new_min = body.min if "min" in fields else mapping.min_value
    new_max = body.max if "max" in fields else mapping.max_value
    if new_min is not None and new_max is not None and new_min > new_max:
        raise MappingInvalid(f"min ({new_min}) must not be greater than max ({new_max}).")
    if "key" in fields and body.key is None:
        raise MappingInvalid("key cannot be null.")
    if "direction" in fields and body.direction is None:
        raise MappingInvalid("direction cannot be null.")
    if body.key is not None and body.key != mapping.key:
        await _check_unique(
            session, mapping.controller_id, body.key, mapping.instance_id, mapping.plugin_channel, mapping.id
        )
        mapping.key = body.key
    if body.direction is not None:
        mapping.direction = body.direction
    if "unit" in fields:
        mapping.unit = body.unit
    mapping.min_value, mapping.max_value = new_min, new_max
    mapping.updated_at = datetime.now(UTC)
    await apply_units(session, {channel_id(mapping.controller_id, mapping.key): mapping.unit})
    return sorted(fields)


async def find_mapping(session: AsyncSession, controller_id: str, key: str) -> ChannelMapping | None:
    return await session.scalar(
        select(ChannelMapping).where(ChannelMapping.controller_id == controller_id, ChannelMapping.key == key)
    )


async def mapped_units(session: AsyncSession, controller_id: str) -> dict[str, str]:
    """Station channel id → unit, for the mappings of this controller that set one."""
    rows = await session.execute(
        select(ChannelMapping.key, ChannelMapping.unit).where(
            ChannelMapping.controller_id == controller_id, ChannelMapping.unit.is_not(None)
        )
    )
    return {channel_id(controller_id, key): unit for key, unit in rows if unit}


async def apply_units(session: AsyncSession, units: Mapping[str, str | None]) -> None:
    """A mapped channel's unit follows its mapping (the one place outside telemetry that sets a unit:
    the channel row may be created later by the first reading, so both sides apply it)."""
    for cid, unit in units.items():
        if unit:
            await session.execute(
                update(Channel)
                .where(Channel.id == cid, Channel.unit.is_distinct_from(unit))
                .values(unit=unit)
            )


# --- the controller's own view ------------------------------------------------------------------------


async def controller_config(session: AsyncSession, controller: Controller, box: SecretBox) -> dict[str, Any]:
    """Everything a controller process needs to run: its plugin instances and channel mappings."""
    instances = await list_instances(session, controller.id)
    mappings = await list_mappings(session, controller.id)
    return {
        "controller_id": controller.id,
        "station_id": controller.station_id,
        "instances": [
            {
                "name": i.name,
                "plugin": i.plugin,
                "config": box.open_json(i.config),
                "enabled": i.enabled,
                "interval_seconds": i.interval_seconds,
            }
            for i in instances
        ],
        "mappings": [
            {
                "instance": name,
                "plugin_channel": m.plugin_channel,
                "key": m.key,
                "channel": channel_id(controller.id, m.key),
                "unit": m.unit,
                "direction": m.direction,
                "min": m.min_value,
                "max": m.max_value,
            }
            for m, name in mappings
        ],
    }


async def seal_legacy_configs(session: AsyncSession, box: SecretBox) -> int:
    """Plugin configs stored in clear by earlier versions get sealed (once, at start-up)."""
    sealed = 0
    for instance in (await session.scalars(select(PluginInstance))).all():
        if instance.config and not is_sealed_json(instance.config):
            instance.config = box.seal_json(dict(instance.config))
            sealed += 1
    return sealed
