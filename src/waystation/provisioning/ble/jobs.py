"""One provisioning's progress: `writing → waiting_for_join → succeeded | failed` (with a reason)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

State = Literal["writing", "waiting_for_join", "succeeded", "failed"]
# Why a provisioning failed: the BLE write did not go through; the device never came online in time;
# the broker refused its login (so the credentials it uses are not the ones written).
Reason = Literal["write_failed", "not_joined", "wrong_credentials"]


@dataclass
class Provisioning:
    address: str
    device_id: str
    station_id: str
    actor: str
    ip: str | None = None
    id: str = field(default_factory=lambda: f"prv_{uuid.uuid4().hex[:16]}")
    state: State = "writing"
    reason: Reason | None = None
    detail: str | None = None
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    finished_at: datetime | None = None

    @property
    def finished(self) -> bool:
        return self.state in ("succeeded", "failed")

    def fail(self, reason: Reason, detail: str) -> None:
        self.state, self.reason, self.detail, self.finished_at = "failed", reason, detail, datetime.now(UTC)

    def succeed(self) -> None:
        self.state, self.finished_at = "succeeded", datetime.now(UTC)

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "address": self.address,
            "device_id": self.device_id,
            "station_id": self.station_id,
            "state": self.state,
            "reason": self.reason,
            "detail": self.detail,
            "created_at": self.created_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
        }
