"""Finding plugins: every installed package may offer some under the entry-point group
`waystation.plugins` (name → a `DevicePlugin` subclass), the built-ins included."""

from __future__ import annotations

import logging
from importlib.metadata import entry_points

from waystation.plugins.sdk import DevicePlugin

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "waystation.plugins"


def discover() -> tuple[dict[str, type[DevicePlugin]], dict[str, str]]:
    """The installed plugins by name, and the ones that failed to load with the reason.

    A broken third-party package must not take the controller down: its plugin is reported as failed
    and the instances that use it say so in their status."""
    plugins: dict[str, type[DevicePlugin]] = {}
    failed: dict[str, str] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as exc:
            failed[ep.name] = f"cannot import {ep.value}: {type(exc).__name__}: {exc}"
            log.warning("plugin %s: %s", ep.name, failed[ep.name])
            continue
        if not (isinstance(obj, type) and issubclass(obj, DevicePlugin)):
            failed[ep.name] = f"{ep.value} is not a DevicePlugin subclass"
            log.warning("plugin %s: %s", ep.name, failed[ep.name])
            continue
        if ep.name in plugins and plugins[ep.name] is not obj:
            log.warning("plugin name %s is offered twice; using %s", ep.name, plugins[ep.name].__module__)
            continue
        plugins[ep.name] = obj
    return plugins, failed
