"""Human confirmation of agents' writes: create, list, decide, execute exactly once, wait.

`pending` → `approved` is one guarded UPDATE (as bind tokens are spent), so of two people approving at
once exactly one runs the action; the action then ends `executed` (with its result) or `failed` (with
the error). `denied` and `expired` end it without running anything.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from waystation.audit import service as audit
from waystation.auth.roles import ROLE_RANK, Principal, role_at_least
from waystation.context import AppContext
from waystation.db import emit
from waystation.errors import (
    InsufficientRole,
    McpConfirmationDecided,
    McpConfirmationExpired,
    McpConfirmationNotFound,
    WaystationError,
)
from waystation.mcp.actions import ACTIONS, Execution
from waystation.mcp.auth import McpAccess
from waystation.mcp.models import McpConfirmation
from waystation.mcp.views import scrub

log = logging.getLogger(__name__)

PENDING, APPROVED, DENIED, EXPIRED, EXECUTED, FAILED = (
    "pending",
    "approved",
    "denied",
    "expired",
    "executed",
    "failed",
)
STATUSES = (PENDING, APPROVED, DENIED, EXPIRED, EXECUTED, FAILED)
FINAL = frozenset({DENIED, EXPIRED, EXECUTED, FAILED})
REQUESTED_EVENT = "mcp.confirmation_requested"
DECIDED_EVENT = "mcp.confirmation_decided"


def confirmation_out(row: McpConfirmation) -> dict[str, Any]:
    return {
        "id": row.id,
        "station_id": row.station_id,
        "token_id": row.token_id,
        "token_name": row.token_name,
        "tool": row.tool,
        "arguments": scrub(row.arguments),
        "summary": row.summary,
        "status": row.status,
        "needed_role": ACTIONS[row.tool].needed(row.arguments) if row.tool in ACTIONS else None,
        "created_at": row.created_at.isoformat(),
        "expires_at": row.expires_at.isoformat(),
        "decided_by": row.decided_by,
        "decided_at": row.decided_at.isoformat() if row.decided_at else None,
        "result": scrub(row.result) if row.result is not None else None,
        "error": row.error,
    }


def _event(row: McpConfirmation) -> dict[str, Any]:
    """Ids and the summary only: events never carry arguments or results."""
    return {
        "id": row.id,
        "tool": row.tool,
        "status": row.status,
        "summary": row.summary,
        "token_id": row.token_id,
        "expires_at": row.expires_at.isoformat(),
        "decided_by": row.decided_by,
    }


async def create(
    ctx: AppContext, access: McpAccess, tool: str, arguments: dict[str, Any], summary: str
) -> McpConfirmation:
    now = datetime.now(UTC)
    async with ctx.db.session() as session:
        row = McpConfirmation(
            id=secrets.token_urlsafe(16),
            station_id=access.station_id,
            token_id=access.token_id,
            token_name=access.token_name,
            tool=tool,
            arguments=arguments,
            summary=summary,
            status=PENDING,
            created_at=now,
            expires_at=now + timedelta(seconds=ctx.settings.mcp_confirmation_ttl_seconds),
        )
        session.add(row)
        emit(session, REQUESTED_EVENT, _event(row), access.station_id)
    return row


async def expire_due(session: AsyncSession) -> None:
    """Mark every pending confirmation past its expiry as expired (done lazily by every reader)."""
    now = datetime.now(UTC)
    rows = (
        await session.scalars(
            select(McpConfirmation).where(
                McpConfirmation.status == PENDING, McpConfirmation.expires_at <= now
            )
        )
    ).all()
    for row in rows:
        done = await session.execute(
            update(McpConfirmation)
            .where(McpConfirmation.id == row.id, McpConfirmation.status == PENDING)
            .values(status=EXPIRED, decided_at=now)
            .execution_options(synchronize_session=False)
        )
        if getattr(done, "rowcount", 0) == 1:
            row.status, row.decided_at = EXPIRED, now
            emit(session, DECIDED_EVENT, _event(row), row.station_id)


async def get(ctx: AppContext, confirmation_id: str) -> McpConfirmation:
    async with ctx.db.session() as session:
        await expire_due(session)
        row = await session.get(McpConfirmation, confirmation_id)
        if row is None:
            raise McpConfirmationNotFound(f"No confirmation {confirmation_id!r}.")
        return row


async def list_confirmations(
    ctx: AppContext, *, stations: Collection[str] | None, status: str | None, limit: int
) -> Sequence[McpConfirmation]:
    async with ctx.db.session() as session:
        await expire_due(session)
        query = select(McpConfirmation).order_by(McpConfirmation.created_at.desc()).limit(limit)
        if stations is not None:
            query = query.where(McpConfirmation.station_id.in_(list(stations)))
        if status is not None:
            query = query.where(McpConfirmation.status == status)
        return (await session.scalars(query)).all()


def check_decider(principal: Principal, row: McpConfirmation) -> None:
    """Only a person decides, and only one who may do the action itself at that station."""
    if principal.kind != "user":
        raise InsufficientRole("Only a person logged in as a user approves or denies an agent's action.")
    action = ACTIONS[row.tool]
    needed = action.needed(row.arguments)
    held = principal.role_at(row.station_id) or "none"
    if not role_at_least(held, needed):
        raise InsufficientRole(f"Deciding this needs the {needed} role at its station; you are {held}.")
    if action.installation and (
        principal.global_role is None or not role_at_least(principal.global_role, "admin")
    ):
        raise InsufficientRole("Flows are installation-wide: deciding this needs an installation admin.")


async def decide(
    ctx: AppContext, principal: Principal, confirmation_id: str, *, approve: bool
) -> McpConfirmation:
    """Approve (and run the action once) or deny a pending confirmation."""
    row = await get(ctx, confirmation_id)  # also expires it if its time is up
    if principal.role_at(row.station_id) is None:
        raise McpConfirmationNotFound(f"No confirmation {confirmation_id!r}.")
    check_decider(principal, row)
    if row.status == EXPIRED:
        raise McpConfirmationExpired(f"Confirmation {row.id} expired at {row.expires_at.isoformat()}.")
    if row.status != PENDING:
        raise McpConfirmationDecided(f"Confirmation {row.id} is already {row.status}.")
    now = datetime.now(UTC)
    status = APPROVED if approve else DENIED
    async with ctx.db.session() as session:
        claimed = await session.execute(
            update(McpConfirmation)
            .where(
                McpConfirmation.id == row.id,
                McpConfirmation.status == PENDING,
                McpConfirmation.expires_at > now,
            )
            .values(status=status, decided_by=principal.actor, decided_at=now)
            .execution_options(synchronize_session=False)
        )
        if getattr(claimed, "rowcount", 0) != 1:
            raise McpConfirmationDecided(f"Confirmation {row.id} was decided (or expired) just now.")
        row.status, row.decided_by, row.decided_at = status, principal.actor, now
        audit.record(
            session,
            actor=principal.actor,
            action="mcp.confirmation.approve" if approve else "mcp.confirmation.deny",
            target=f"mcp_confirmation:{row.id}",
            summary=f"{row.tool} for {row.token_name}: {row.summary}"[:500],
            station_id=row.station_id,
        )
        if not approve:
            emit(session, DECIDED_EVENT, _event(row), row.station_id)
    if approve:
        await _execute(ctx, principal, row)
    return row


async def _execute(ctx: AppContext, principal: Principal, row: McpConfirmation) -> None:
    """Run the approved action once, with the approver's authority (already checked to cover the
    action) on behalf of the token (its own cap was checked when the agent asked)."""
    action = ACTIONS[row.tool]
    run = Execution(
        actor=f"{principal.actor} via mcp:{row.token_id}:{row.token_name}"[:120], station_id=row.station_id
    )
    result: dict[str, Any] | None = None
    error: str | None = None
    try:
        result = scrub(await action.execute(ctx, run, row.arguments))
    except WaystationError as exc:
        error = f"{exc.code}: {exc.detail}"
    except Exception:
        log.exception("MCP action %s of confirmation %s failed", row.tool, row.id)
        error = "INTERNAL_ERROR: An unexpected error occurred."
    async with ctx.db.session() as session:
        await session.execute(
            update(McpConfirmation)
            .where(McpConfirmation.id == row.id, McpConfirmation.status == APPROVED)
            .values(status=EXECUTED if error is None else FAILED, result=result, error=error)
            .execution_options(synchronize_session=False)
        )
        row.status, row.result, row.error = (EXECUTED if error is None else FAILED), result, error
        emit(session, DECIDED_EVENT, _event(row), row.station_id)


async def withdraw(ctx: AppContext, confirmation_id: str, *, by: str) -> None:
    """The agent's own user declined (elicitation): deny it, if no one decided it yet."""
    now = datetime.now(UTC)
    async with ctx.db.session() as session:
        done = await session.execute(
            update(McpConfirmation)
            .where(McpConfirmation.id == confirmation_id, McpConfirmation.status == PENDING)
            .values(status=DENIED, decided_by=by, decided_at=now)
            .execution_options(synchronize_session=False)
        )
        row = await session.get(McpConfirmation, confirmation_id)
        if getattr(done, "rowcount", 0) == 1 and row is not None:
            await session.refresh(row)
            audit.record(
                session,
                actor=by,
                action="mcp.confirmation.withdraw",
                target=f"mcp_confirmation:{row.id}",
                summary=f"{row.tool}: {row.summary}"[:500],
                station_id=row.station_id,
            )
            emit(session, DECIDED_EVENT, _event(row), row.station_id)


def token_may(access: McpAccess, tool: str, arguments: dict[str, Any]) -> str | None:
    """Why this token may not ask for this action at all (checked before a confirmation is made)."""
    action = ACTIONS[tool]
    needed = action.needed(arguments)
    if ROLE_RANK.get(access.role, -1) < ROLE_RANK[needed]:
        return (
            f"This needs the {needed} role; this token acts with at most {access.role} (its creator's role)."
        )
    if action.installation and not access.installation_admin:
        return "Flows are installation-wide: this token's creator must be an installation admin."
    return None


async def wait(ctx: AppContext, confirmation_id: str, seconds: float) -> McpConfirmation:
    """The confirmation once it is final, or as it is when `seconds` have passed (polling the database,
    so a person may approve on any worker)."""
    deadline = time.monotonic() + seconds
    while True:
        row = await get(ctx, confirmation_id)
        if row.status in FINAL or time.monotonic() >= deadline:
            return row
        await asyncio.sleep(
            min(ctx.settings.mcp_confirmation_poll_seconds, max(0.0, deadline - time.monotonic()))
        )
