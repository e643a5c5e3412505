"""Logging layout (from the wlanpi-core seed): console INFO (DEBUG with --debug),
`logs/app.log` always INFO and `logs/debug.log` always DEBUG, both rotating, in the data dir."""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path

from concurrent_log_handler import ConcurrentRotatingFileHandler

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_MANAGED = "_waystation_handler"


APP_LOG_BYTES, APP_LOG_BACKUPS = 5_000_000, 5
DEBUG_LOG_BYTES, DEBUG_LOG_BACKUPS = 10_000_000, 3


def _rotating(path: Path, max_bytes: int, backups: int, shared: bool) -> logging.Handler:
    if shared:
        # Several worker processes append to the same files: the library takes a file lock around each
        # write and each rollover, so one process never rotates a file under another's feet.
        return ConcurrentRotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups)
    return logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups)


def setup_logging(data_dir: Path, debug: bool = False, console: bool = True, shared: bool = False) -> None:
    """`shared`: this process is one of several writing the same files (`waystation run --workers N`)."""
    logs = data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _MANAGED, False):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(logging.DEBUG)
    formatter = logging.Formatter(FORMAT)

    handlers: list[logging.Handler] = []
    if console:
        stream = logging.StreamHandler()
        stream.setLevel(logging.DEBUG if debug else logging.INFO)
        handlers.append(stream)
    app_log = _rotating(logs / "app.log", APP_LOG_BYTES, APP_LOG_BACKUPS, shared)
    app_log.setLevel(logging.INFO)
    handlers.append(app_log)
    debug_log = _rotating(logs / "debug.log", DEBUG_LOG_BYTES, DEBUG_LOG_BACKUPS, shared)
    debug_log.setLevel(logging.DEBUG)
    handlers.append(debug_log)
    for handler in handlers:
        handler.setFormatter(formatter)
        setattr(handler, _MANAGED, True)
        root.addHandler(handler)

    # Libraries that are chatty at DEBUG and would drown our own debug log.
    for noisy in (
        "aiosqlite",
        "asyncio",
        "sqlalchemy.engine",
        "httpcore",
        "httpx",
        "amqtt",
        "transitions",
        "passlib",
        "multipart",
        "hpack",
        "websockets",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


class RateLimitedLog:
    """Log a message at most once per key per interval (e.g. per device per minute)."""

    def __init__(
        self, logger: logging.Logger, interval_seconds: float = 60.0, max_keys: int = 10_000
    ) -> None:
        self._logger = logger
        self._interval = interval_seconds
        self._last: dict[object, float] = {}
        self._max_keys = max_keys

    def warning(self, key: object, now: float, msg: str, *args: object) -> bool:
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            return False
        if len(self._last) >= self._max_keys:
            # Bounded memory: forget everything older than one interval.
            self._last = {k: t for k, t in self._last.items() if now - t < self._interval}
            if len(self._last) >= self._max_keys:
                self._last.clear()
        self._last[key] = now
        self._logger.warning(msg, *args)
        return True
