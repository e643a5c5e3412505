"""The device-type registry: what each type can do and which commands (with parameter schemas) it accepts.

Built-in types are written to `device_types` on every start so upgrades bring new commands along.
Every type also accepts the built-in commands `reboot`, `factory_reset` and `ota_update`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import orjson
from jsonschema import Draft202012Validator
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from waystation.devices.models import DeviceType
from waystation.errors import CommandInvalid, CommandUnknown


def _params(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": required if required is not None else list(properties),
        "additionalProperties": False,
    }


_INT = {"type": "integer"}
_BOOL = {"type": "boolean"}

BUILTIN_COMMANDS: dict[str, dict[str, Any]] = {
    "reboot": _params({}),
    "factory_reset": _params({}),
    "ota_update": _params(
        {
            "url": {"type": "string", "minLength": 1, "maxLength": 2048},
            "sha256": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"},
            "version": {"type": "string", "minLength": 1, "maxLength": 64},
        }
    ),
}

_SET_INTERVAL = _params({"interval_s": {**_INT, "minimum": 1, "maximum": 86400}})
_SET_SENSITIVITY = _params({"level": {**_INT, "minimum": 1, "maximum": 10}})

BUILTIN_TYPES: dict[str, dict[str, Any]] = {
    "climate": {
        "name": "Climate sensor",
        "capabilities": ["temperature", "humidity"],
        "commands": {"set_interval": _SET_INTERVAL},
    },
    "pir": {
        "name": "Motion sensor (PIR)",
        "capabilities": ["motion"],
        "commands": {"set_sensitivity": _SET_SENSITIVITY},
    },
    "switch-pir": {
        "name": "Switch with motion sensor",
        "capabilities": ["motion", "switch"],
        "commands": {"set_switch": _params({"on": _BOOL}), "set_sensitivity": _SET_SENSITIVITY},
    },
    "light": {
        "name": "Dimmable light",
        "capabilities": ["on", "brightness"],
        "commands": {
            "set_power": _params({"on": _BOOL}),
            "set_brightness": _params({"brightness": {**_INT, "minimum": 0, "maximum": 100}}),
        },
    },
    "sensor": {
        "name": "Generic sensor",
        "capabilities": ["telemetry"],
        "commands": {"set_interval": _SET_INTERVAL},
    },
}


async def seed_device_types(session: AsyncSession) -> None:
    existing = {t.id: t for t in (await session.scalars(select(DeviceType))).all()}
    for type_id, spec in BUILTIN_TYPES.items():
        row = existing.get(type_id)
        if row is None:
            session.add(DeviceType(id=type_id, builtin=True, **spec))
        elif row.builtin:
            row.name, row.capabilities, row.commands = spec["name"], spec["capabilities"], spec["commands"]


def all_commands(device_type: DeviceType) -> dict[str, Any]:
    return {**BUILTIN_COMMANDS, **(device_type.commands or {})}


@lru_cache(maxsize=256)
def _validator(schema_json: bytes) -> Draft202012Validator:
    return Draft202012Validator(orjson.loads(schema_json))


def validate_command(device_type: DeviceType, action: str, params: dict[str, Any]) -> None:
    """Raise a 422 error unless `action` with `params` is valid for `device_type`."""
    commands = all_commands(device_type)
    schema = commands.get(action)
    if schema is None:
        accepted = ", ".join(sorted(commands))
        raise CommandUnknown(f"Type {device_type.id!r} has no command {action!r}; it accepts: {accepted}.")
    validator = _validator(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS))
    errors = sorted(validator.iter_errors(params), key=lambda e: list(e.path))
    if errors:
        first = errors[0]
        where = ".".join(str(p) for p in first.path) or "parameters"
        raise CommandInvalid(
            f"{action}: {where}: {first.message}",
            errors=[{"loc": [str(p) for p in e.path], "msg": e.message} for e in errors[:10]],
        )


def type_to_dict(device_type: DeviceType) -> dict[str, Any]:
    return {
        "id": device_type.id,
        "name": device_type.name,
        "capabilities": list(device_type.capabilities or []),
        "commands": all_commands(device_type),
        "builtin": device_type.builtin,
    }
