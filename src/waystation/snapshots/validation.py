"""Validating a decrypted snapshot before anything is written: one pydantic model per entity, built from
the table's columns (so a new column is checked without a second list to keep up to date), then the
references between entities, duplicate keys and the one default station.

Columns missing from a row take the column's default (older snapshots of the same schema version stay
readable when a column with a default is added); a column without one is required.
"""

from __future__ import annotations

from datetime import datetime
from functools import cache
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, create_model
from sqlalchemy import JSON, Boolean, Column, Float, Integer, String

from waystation.db import UTCDateTime
from waystation.errors import SnapshotInvalid
from waystation.snapshots.tables import BY_ENTITY, SPECS, TableSpec

MAX_REPORTED = 20  # problems listed in the error; the rest are counted

Rows = dict[str, list[dict[str, Any]]]


def _annotation(column: Column[Any]) -> Any:
    kind = column.type
    if isinstance(kind, UTCDateTime):
        return AwareDatetime
    if isinstance(kind, JSON):
        return Any
    if isinstance(kind, Boolean):
        return bool
    if isinstance(kind, Integer):
        return int
    if isinstance(kind, Float):
        return float
    if isinstance(kind, String):
        return Annotated[str, Field(max_length=kind.length)] if kind.length else str
    raise TypeError(f"no snapshot mapping for column {column.table.name}.{column.name} ({kind!r})")


def _has_default(column: Column[Any]) -> bool:
    return column.default is not None or column.server_default is not None or column.autoincrement is True


@cache
def row_model(spec: TableSpec) -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for column in spec.table.columns:
        annotation = _annotation(column)
        # Owners travel without their password hash (docs/backup.md#users).
        owner_hash = spec.entity == "users" and column.name == "password_hash"
        optional = column.nullable or _has_default(column) or owner_hash
        if spec.merge_only and column.name in spec.pk:
            optional = True  # audit rows get new ids where they land
        if optional:
            fields[spec.field_of(column.name)] = (annotation | None, None)
        else:
            fields[spec.field_of(column.name)] = (annotation, ...)
    config = ConfigDict(extra="forbid")
    return create_model(f"Snapshot_{spec.entity}", __config__=config, **fields)


def _row(spec: TableSpec, data: BaseModel) -> dict[str, Any]:
    """Validated values by column name; a None for a NOT NULL column means "take its default"."""
    values = data.model_dump()
    row: dict[str, Any] = {}
    for column in spec.table.columns:
        value = values.get(spec.field_of(column.name))
        if value is None and not column.nullable:
            continue
        row[column.name] = value
    return row


def validate(document: dict[str, Any]) -> Rows:
    """The document's rows by entity, as column values; raises SNAPSHOT_INVALID listing what is wrong."""
    entities = document.get("entities")
    if not isinstance(entities, dict):
        raise SnapshotInvalid("The snapshot has no `entities` object.")
    problems: list[dict[str, Any]] = []
    unknown = sorted(set(entities) - set(BY_ENTITY))
    for name in unknown:
        problems.append({"entity": name, "message": "unknown entity type"})
    rows: Rows = {}
    for spec in SPECS:
        raw = entities.get(spec.entity, [])
        if not isinstance(raw, list):
            problems.append({"entity": spec.entity, "message": "must be a list"})
            continue
        model = row_model(spec)
        parsed: list[dict[str, Any]] = []
        for index, item in enumerate(raw):
            try:
                parsed.append(_row(spec, model.model_validate(item)))
            except ValidationError as exc:
                for err in exc.errors(include_url=False, include_input=False):
                    field_name = ".".join(str(p) for p in err["loc"])
                    problems.append(
                        {"entity": spec.entity, "index": index, "field": field_name, "message": err["msg"]}
                    )
        rows[spec.entity] = parsed
    if not problems:
        problems.extend(_check_keys(rows))
    if not problems:
        problems.extend(_check_references(rows))
    if problems:
        shown = problems[:MAX_REPORTED]
        more = len(problems) - len(shown)
        detail = f"The snapshot has {len(problems)} problem(s); nothing was changed."
        raise SnapshotInvalid(detail, errors=shown, more_errors=more)
    return rows


def key_of(spec: TableSpec, row: dict[str, Any], columns: tuple[str, ...]) -> tuple[Any, ...] | None:
    """The row's value for a set of columns; None when one is NULL (NULLs never collide)."""
    values = tuple(row.get(c) for c in columns)
    if any(v is None for v in values):
        return None
    return tuple(v.isoformat() if isinstance(v, datetime) else v for v in values)


def _check_keys(rows: Rows) -> list[dict[str, Any]]:
    problems: list[dict[str, Any]] = []
    for spec in SPECS:
        if spec.merge_only:
            continue
        for columns in (spec.pk, *spec.unique):
            seen: set[tuple[Any, ...]] = set()
            for index, row in enumerate(rows[spec.entity]):
                key = key_of(spec, row, columns)
                if key is None:
                    continue
                if key in seen:
                    problems.append(
                        {
                            "entity": spec.entity,
                            "index": index,
                            "field": ",".join(columns),
                            "message": "duplicate value",
                        }
                    )
                seen.add(key)
    # A station that never started has no station row yet; any other has exactly one default.
    defaults = [s for s in rows["stations"] if s.get("is_default")]
    if len(defaults) > 1 or (rows["stations"] and not defaults):
        problems.append(
            {"entity": "stations", "message": f"needs exactly one default station, has {len(defaults)}"}
        )
    return problems


def _check_references(rows: Rows) -> list[dict[str, Any]]:
    """Every foreign key points at a row of the snapshot (the database would refuse it anyway, later and
    less clearly)."""
    tables = {spec.table.name: spec for spec in SPECS}
    problems: list[dict[str, Any]] = []
    for spec in SPECS:
        for fk in spec.table.foreign_keys:
            target = tables.get(fk.column.table.name)
            if target is None:
                continue
            present = {row.get(fk.column.name) for row in rows[target.entity]}
            for index, row in enumerate(rows[spec.entity]):
                value = row.get(fk.parent.name)
                if value is not None and value not in present:
                    problems.append(
                        {
                            "entity": spec.entity,
                            "index": index,
                            "field": fk.parent.name,
                            "message": f"refers to {target.entity} {value!r}, not in the snapshot",
                        }
                    )
    return problems
