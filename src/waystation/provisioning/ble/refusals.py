"""Where the station can see a device's refused MQTT login: the managed Mosquitto's log.

Mosquitto 2.0 logs a refused login as `Client <unknown> disconnected, not authorised.`, before it knows
the client id, so a refusal cannot be tied to one device. A provisioning that never joined while the
broker refused logins is therefore reported as `wrong_credentials`; docs/provisioning.md says so.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

REFUSAL = b"not authorised"
MAX_READ = 4 * 1024 * 1024  # a log that grew more than this in one wait is read only in part


class BrokerLog:
    def __init__(self, path: Path | None) -> None:
        self.path = path

    @property
    def visible(self) -> bool:
        """Whether this station can see login refusals at all (only with its embedded Mosquitto)."""
        return self.path is not None

    def mark(self) -> int:
        if self.path is None:
            return 0
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    def refusals_since(self, offset: int) -> int:
        if self.path is None:
            return 0
        with contextlib.suppress(OSError), self.path.open("rb") as fh:
            size = fh.seek(0, 2)
            fh.seek(offset if offset <= size else 0)  # smaller than before: the log was rotated
            return fh.read(MAX_READ).count(REFUSAL)
        return 0
