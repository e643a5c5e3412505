"""Export, dry-run diff and import of snapshots. Services never commit: the caller's unit of work is the
one transaction an import runs in, so a failure anywhere leaves the database as it was.

Import has replace semantics: afterwards the tables of `tables.SPECS` hold exactly the snapshot's rows
(same primary keys), except the audit log, which only gains the snapshot's entries it lacks, and the
installation-local settings. A target row whose primary key is not in the snapshot, or whose unique key
(a username, a flow code) belongs to another row of the snapshot, is deleted (with what cascades from it);
every other snapshot row is updated in place or inserted. A `reconcile` row in the broker outbox, written
in the same transaction, makes the broker follow.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, and_, delete, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from waystation.broker.credentials import enqueue
from waystation.db import emit
from waystation.secrets_box import SecretBox
from waystation.snapshots.schemas import EntityDiff, RowChange, SnapshotDiff
from waystation.snapshots.tables import (
    LOCAL_SETTINGS,
    OWNER_KEEPS,
    OWNER_ROLE,
    SPECS,
    UNUSABLE_PASSWORD,
    TableSpec,
)
from waystation.snapshots.validation import Rows, key_of

log = logging.getLogger(__name__)

MAX_LISTED = 200  # rows listed per entity and kind in a diff; the counts are always complete
Row = dict[str, Any]


# --- reading the current state ----------------------------------------------------------------------


def _local(spec: TableSpec, row: Row) -> bool:
    return spec.entity == "settings" and row.get("key") in LOCAL_SETTINGS


async def _current(session: AsyncSession, spec: TableSpec) -> list[Row]:
    query = select(spec.table).order_by(*spec.table.primary_key.columns)
    rows = [dict(r) for r in (await session.execute(query)).mappings().all()]
    return [r for r in rows if not _local(spec, r)]


def _opened(spec: TableSpec, row: Row, box: SecretBox) -> Row:
    """The row with its sealed columns in clear (None when this station's key cannot open one)."""
    if not spec.sealed and not spec.sealed_json:
        return row
    out = dict(row)
    for column in spec.sealed_json:
        try:
            out[column] = box.open_json(row.get(column))
        except ValueError:
            log.warning("snapshot: %s.%s of %s cannot be opened", spec.entity, column, _pk(spec, row))
            out[column] = {}
    for column in spec.sealed:
        value = row.get(column)
        if value is not None:
            try:
                out[column] = box.open(value)
            except ValueError:
                log.warning("snapshot: %s.%s of %s cannot be opened", spec.entity, column, _pk(spec, row))
                out[column] = None
    return out


def _pk(spec: TableSpec, row: Row) -> tuple[Any, ...]:
    return tuple(row.get(c) for c in spec.pk)


def _json(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


# --- export -------------------------------------------------------------------------------------------


async def export_entities(session: AsyncSession, box: SecretBox) -> dict[str, list[Row]]:
    """Every snapshot table as JSON-ready rows: sealed secrets in clear (the file is encrypted as a
    whole), hashes as hashes, owners without their password hash."""
    entities: dict[str, list[Row]] = {}
    for spec in SPECS:
        items: list[Row] = []
        for row in await _current(session, spec):
            row = _opened(spec, row, box)
            item: Row = {}
            for column in spec.table.columns:
                if spec.entity == "users" and column.name == "password_hash" and row["role"] == OWNER_ROLE:
                    continue
                item[spec.field_of(column.name)] = _json(row[column.name])
            items.append(item)
        entities[spec.entity] = items
    return entities


# --- diff ---------------------------------------------------------------------------------------------


def _display(key: tuple[Any, ...]) -> str:
    return "/".join(str(_json(v)) for v in key)


def _changed_fields(spec: TableSpec, wanted: Row, current: Row) -> list[str]:
    """Columns the snapshot row sets to another value (columns it leaves out keep theirs)."""
    return [spec.field_of(c) for c, v in wanted.items() if current.get(c) != v]


def _row_change(spec: TableSpec, row: Row, fields: list[str] | None = None) -> RowChange:
    pk = _pk(spec, row)
    return RowChange(
        key=_display(key_of(spec, row, spec.natural_key) or pk),
        id=pk[0] if len(pk) == 1 else "/".join(str(v) for v in pk),
        label=str(row[spec.label]) if spec.label and row.get(spec.label) is not None else None,
        fields=fields,
    )


def _audit_key(row: Row) -> tuple[Any, ...]:
    return tuple(_json(row.get(c)) for c in ("ts", "actor", "action", "target", "summary", "station_id"))


async def diff(session: AsyncSession, rows: Rows, box: SecretBox) -> SnapshotDiff:
    """What an import of `rows` would add, change and remove, keyed by each entity's natural key."""
    result: dict[str, EntityDiff] = {}
    for spec in SPECS:
        current = [_opened(spec, r, box) for r in await _current(session, spec)]
        wanted = rows[spec.entity]
        entity = EntityDiff()
        if spec.merge_only:
            have = {_audit_key(r) for r in current}
            for row in wanted:
                if _audit_key(row) not in have:
                    entity.add("added", _row_change(spec, row), MAX_LISTED)
                else:
                    entity.unchanged += 1
            result[spec.entity] = entity
            continue
        by_key = {key_of(spec, r, spec.natural_key): r for r in current}
        seen: set[Any] = set()
        for row in wanted:
            key = key_of(spec, row, spec.natural_key)
            seen.add(key)
            old = by_key.get(key)
            if old is None:
                entity.add("added", _row_change(spec, row), MAX_LISTED)
                continue
            compare = dict(row)
            if spec.entity == "users" and "password_hash" not in row:
                for column in OWNER_KEEPS:
                    compare.pop(column, None)
            fields = _changed_fields(spec, compare, old)
            if fields:
                entity.add("changed", _row_change(spec, row, fields), MAX_LISTED)
            else:
                entity.unchanged += 1
        for key, old in by_key.items():
            if key not in seen:
                entity.add("removed", _row_change(spec, old), MAX_LISTED)
        result[spec.entity] = entity
    return SnapshotDiff(entities=result)


# --- apply --------------------------------------------------------------------------------------------


def _where_pk(spec: TableSpec, pk: tuple[Any, ...]) -> Any:
    return and_(*(spec.table.c[c] == v for c, v in zip(spec.pk, pk, strict=True)))


def _doomed(spec: TableSpec, current: list[Row], wanted: list[Row]) -> list[tuple[Any, ...]]:
    """Target rows that must go: not in the snapshot, or holding a unique value that the snapshot gives
    to another row (deleting them first keeps every later UPDATE and INSERT free of conflicts)."""
    wanted_pks = {_pk(spec, r) for r in wanted}
    owners: dict[tuple[str, ...], dict[tuple[Any, ...], tuple[Any, ...]]] = {}
    for columns in spec.unique:
        owners[columns] = {}
        for row in wanted:
            value = key_of(spec, row, columns)
            if value is not None:
                owners[columns][value] = _pk(spec, row)
    doomed: list[tuple[Any, ...]] = []
    for row in current:
        pk = _pk(spec, row)
        if pk not in wanted_pks:
            doomed.append(pk)
            continue
        for columns, taken in owners.items():
            value = key_of(spec, row, columns)
            if value is not None and taken.get(value, pk) != pk:
                doomed.append(pk)
                break
    return doomed


def _sealed(spec: TableSpec, row: Row, box: SecretBox) -> Row:
    """A row as it is stored here: secrets sealed with this station's key."""
    out = dict(row)
    for column in spec.sealed:
        if out.get(column) is not None:
            out[column] = box.seal(out[column])
    for column in spec.sealed_json:
        if column in out:
            out[column] = box.seal_json(out[column] or {})
    return out


def _owner_row(row: Row, existing: Row | None) -> Row:
    if existing is None:
        return {**row, "password_hash": UNUSABLE_PASSWORD}
    return {**row, **{c: existing[c] for c in OWNER_KEEPS}}


async def apply(session: AsyncSession, rows: Rows, box: SecretBox) -> list[str]:
    """Make the snapshot tables hold `rows`. Returns the ids of devices that are gone afterwards."""
    # Owners travel without a password hash: one who exists here (same username) keeps theirs, and its
    # change time (sessions stay valid); a new one gets an unusable hash until `waystation user passwd`.
    here = {r["username"]: r for r in await _current(session, _spec("users"))}
    users = [
        row if "password_hash" in row else _owner_row(row, here.get(row["username"])) for row in rows["users"]
    ]
    rows = {**rows, "users": users}
    devices_before = {r["id"] for r in await _current(session, _spec("devices"))}
    for spec in reversed(SPECS):
        if spec.merge_only:
            continue
        for pk in _doomed(spec, await _current(session, spec), rows[spec.entity]):
            await session.execute(delete(spec.table).where(_where_pk(spec, pk)))
    for spec in SPECS:
        if spec.merge_only:
            await _merge(session, spec, rows[spec.entity])
            continue
        current = {_pk(spec, r): _opened(spec, r, box) for r in await _current(session, spec)}
        for row in rows[spec.entity]:
            old = current.get(_pk(spec, row))
            if old is None:
                await session.execute(insert(spec.table).values(**_sealed(spec, row, box)))
                continue
            changed = {c: v for c, v in row.items() if old.get(c) != v}
            if changed:
                where = _where_pk(spec, _pk(spec, row))
                await session.execute(update(spec.table).where(where).values(**_sealed(spec, changed, box)))
    await _advance_sequences(session, SPECS)
    enqueue(session, "reconcile")  # the broker follows the new accounts, wherever the import ran
    emit(session, "flow.changed", {"reason": "snapshot.import"})
    return sorted(devices_before - {r["id"] for r in rows["devices"]})


def _spec(entity: str) -> TableSpec:
    return next(s for s in SPECS if s.entity == entity)


async def _merge(session: AsyncSession, spec: TableSpec, wanted: list[Row]) -> None:
    """Append the snapshot's audit entries that are not here yet (under new ids: ids are local)."""
    have = {_audit_key(r) for r in await _current(session, spec)}
    for row in wanted:
        if _audit_key(row) in have:
            continue
        values = {c: v for c, v in row.items() if c not in spec.pk}
        await session.execute(insert(spec.table).values(**values))
        have.add(_audit_key(row))


async def _advance_sequences(session: AsyncSession, specs: Iterable[TableSpec]) -> None:
    """Rows inserted with their own ids leave PostgreSQL's sequences behind; move them past the highest
    id, or the next row created through the API would collide. (SQLite picks max(id) + 1 itself.)"""
    if session.get_bind().dialect.name != "postgresql":
        return
    for spec in specs:
        if len(spec.pk) != 1 or not isinstance(spec.table.c[spec.pk[0]].type, Integer):
            continue
        table, column = spec.table.name, spec.pk[0]
        await session.execute(
            text(
                f"SELECT setval(pg_get_serial_sequence(:table, :column), "  # noqa: S608 - names from our specs
                f"COALESCE((SELECT MAX({column}) FROM {table}), 0) + 1, false)"
            ),
            {"table": table, "column": column},
        )
