"""The controller's disk buffer: every reading goes here first and leaves only once the station acked it.

A SQLite file (`buffer.sqlite3` in the buffer directory, WAL mode) holds the readings in the order they
were produced. The sender reads the oldest ones, sends them, and deletes exactly those rows after the
station confirmed their commit; a crash or a lost connection in between only means they are sent again,
which the station recognises (a datapoint is unique per channel and timestamp). So the buffer survives a
controller restart, and nothing is lost while the station is down, up to its bounds: when it holds
more than `max_rows` readings or `max_bytes` of them, the OLDEST are dropped and counted.

Counters (produced per channel, dropped per channel, acked, rejected) live in the same file, updated in
the same transactions as the readings, so they stay exact across crashes.

Calls are synchronous and short (one small transaction each); the controller makes them from its event
loop. WAL with `synchronous=NORMAL` survives a crash of the process (not of the machine's power).
"""

from __future__ import annotations

import logging
import sqlite3
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

ROW_OVERHEAD = 40  # bytes a reading costs besides its channel id (value, time, JSON punctuation)


@dataclass(frozen=True, slots=True)
class Buffered:
    seq: int
    channel: str
    ts_us: int
    value: float


class DiskBuffer:
    def __init__(self, directory: Path, *, max_rows: int, max_bytes: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "buffer.sqlite3"
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS readings (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                channel TEXT NOT NULL,
                ts_us INTEGER NOT NULL,
                value REAL NOT NULL,
                size INTEGER NOT NULL
            );
            CREATE TABLE IF NOT EXISTS counters (
                name TEXT NOT NULL,
                channel TEXT NOT NULL DEFAULT '',
                value INTEGER NOT NULL,
                PRIMARY KEY (name, channel)
            );
            """
        )
        self.rows = 0
        self.bytes = 0
        self._recount()

    def _recount(self) -> None:
        rows, size = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM readings").fetchone()
        self.rows, self.bytes = int(rows), int(size)

    def close(self) -> None:
        self._db.close()

    # --- in ---------------------------------------------------------------------------------------

    def append(self, readings: list[tuple[str, int, float]]) -> int:
        """Store (channel, ts µs, value) readings; returns how many old ones were dropped to make room."""
        if not readings:
            return 0
        rows = [(c, ts, v, len(c) + ROW_OVERHEAD) for c, ts, v in readings]
        produced = Counter(c for c, _, _ in readings)
        try:
            with self._transaction():
                self._db.executemany(
                    "INSERT INTO readings (channel, ts_us, value, size) VALUES (?, ?, ?, ?)", rows
                )
                self._bump("produced", produced)
                self.rows += len(rows)
                self.bytes += sum(r[3] for r in rows)
                return self._enforce_bounds()
        except sqlite3.Error:
            self._recount()  # rolled back: the in-memory totals must follow
            raise

    def _enforce_bounds(self) -> int:
        """Drop the oldest readings until both bounds hold (inside the caller's transaction)."""
        excess_rows = self.rows - self.max_rows
        excess_bytes = self.bytes - self.max_bytes
        if excess_rows <= 0 and excess_bytes <= 0:
            return 0
        cutoff = None
        freed_rows = freed_bytes = 0
        dropped: Counter[str] = Counter()
        cursor = self._db.execute("SELECT seq, channel, size FROM readings ORDER BY seq")
        for seq, channel, size in cursor:
            cutoff = seq
            freed_rows += 1
            freed_bytes += size
            dropped[channel] += 1
            if freed_rows >= excess_rows and freed_bytes >= excess_bytes:
                break
        cursor.close()
        if cutoff is None:
            return 0
        self._db.execute("DELETE FROM readings WHERE seq <= ?", (cutoff,))
        self._bump("dropped", dropped)
        self.rows -= freed_rows
        self.bytes -= freed_bytes
        return freed_rows

    # --- out --------------------------------------------------------------------------------------

    def peek(self, limit: int) -> list[Buffered]:
        """The oldest readings, at most `limit`, in the order they were produced."""
        cursor = self._db.execute(
            "SELECT seq, channel, ts_us, value FROM readings ORDER BY seq LIMIT ?", (limit,)
        )
        return [Buffered(*row) for row in cursor]

    def remove(self, batch: list[Buffered], *, outcome: str = "acked") -> None:
        """Delete a sent batch once the station answered: `acked` (stored) or `rejected` (refused for
        good, e.g. a channel outside the mapping's controller). Rows already dropped are skipped."""
        if not batch:
            return
        first, last = batch[0].seq, batch[-1].seq
        try:
            with self._transaction():
                rows, size = self._db.execute(
                    "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM readings WHERE seq BETWEEN ? AND ?",
                    (first, last),
                ).fetchone()
                self._db.execute("DELETE FROM readings WHERE seq BETWEEN ? AND ?", (first, last))
                self._bump(outcome, Counter({"": rows}))
                self.rows -= rows
                self.bytes -= size
        except sqlite3.Error:
            self._recount()
            raise

    # --- counters ---------------------------------------------------------------------------------

    def _bump(self, name: str, counts: Counter[str]) -> None:
        self._db.executemany(
            "INSERT INTO counters (name, channel, value) VALUES (?, ?, ?) "
            "ON CONFLICT (name, channel) DO UPDATE SET value = value + excluded.value",
            [(name, channel, n) for channel, n in counts.items() if n],
        )

    def counters(self, name: str) -> dict[str, int]:
        """Per channel (`""` for totals kept without a channel): produced, dropped, acked, rejected."""
        cursor = self._db.execute("SELECT channel, value FROM counters WHERE name = ?", (name,))
        return {channel: value for channel, value in cursor}

    def total(self, name: str) -> int:
        return sum(self.counters(name).values())

    def _transaction(self) -> _Tx:
        return _Tx(self._db)


class _Tx:
    """BEGIN IMMEDIATE … COMMIT, rolled back on error (the connection runs in autocommit mode)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self._db.execute("ROLLBACK" if exc_type is not None else "COMMIT")
