"""`waystation run --workers N`: uvicorn's process manager starts N workers from an app factory.

uvicorn (not Waystation) owns the processes: it binds the HTTP socket once, shares it, and starts a
worker again when one dies. Each worker is a whole station (`create_app`) that joins the cluster. The
CLI resolves the settings once and hands them to the workers through the environment, so every worker
runs with exactly what the parent checked (the explicitly given values; defaults stay defaults).
"""

from __future__ import annotations

import os

import orjson
from fastapi import FastAPI

from waystation.config import Settings

SETTINGS_ENV = "WAYSTATION__WORKER_SETTINGS"  # not a setting itself: the double underscore keeps it apart


def export_settings(settings: Settings) -> None:
    """For the worker processes: only in this process's environment, which they inherit."""
    os.environ[SETTINGS_ENV] = settings.model_dump_json(exclude_unset=True)


def worker_app() -> FastAPI:
    """uvicorn's factory (`factory=True`) in each worker process."""
    from rich.console import Console

    from waystation.app import AppOptions, create_app
    from waystation.logs import setup_logging

    raw = os.environ.get(SETTINGS_ENV)
    if raw is None:
        raise RuntimeError(f"{SETTINGS_ENV} is not set: start workers with `waystation run --workers N`")
    settings = Settings(**orjson.loads(raw))
    setup_logging(settings.data_dir, debug=settings.debug, shared=True)
    console = Console(stderr=True)

    def announce(message: str) -> None:
        console.print(f"[bold yellow]{message}[/]")

    return create_app(settings, AppOptions(announce=announce))
