"""Every HTTP write route records an audit entry: an AST scan of the route handlers and what they call.

The scan walks the app's routes with a write method (POST, PUT, PATCH, DELETE) and follows each handler's
calls through the `waystation` source until one reaches `audit.service.record`: same-module functions,
imported functions and modules, `self` methods, methods of `ctx.<field>` (typed by AppContext) and of
objects returned by annotated functions (`runtime(ctx).submit_command()`). A call it cannot resolve
counts for nothing, so the scan never accepts a route that records nothing; at worst it refuses one
whose recording it cannot follow, and then the scan needs teaching. A new write route that records
nothing fails here unless it is added to `NOT_AUDITED` with the reason.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi.routing import APIRoute

import waystation
from waystation.app import create_app
from waystation.config import Settings

WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
RECORDER = "waystation.audit.service"

# Write routes that record no audit entry, each with the reason. Everything else must record one.
NOT_AUDITED = {
    # EMQX asks whether a client may connect or use a topic: an answer, nothing changes (a refused login
    # is reported on the bus for BLE provisioning). Thousands per reconnect storm.
    ("POST", "/api/internal/emqx/authn"),
    ("POST", "/api/internal/emqx/authz"),
    # EMQX reports client.connected / client.disconnected: it moves a device's online/offline status, as
    # MQTT heartbeats and wills do; a device's connection, not anyone's change.
    ("POST", "/api/internal/emqx/events"),
}

FuncKey = tuple[str, str]  # (module, "func" or "Class.method")


@dataclass
class Module:
    name: str
    functions: dict[str, ast.AST] = field(default_factory=dict)  # "func" / "Class.method" -> node
    modules: dict[str, str] = field(default_factory=dict)  # local alias -> module
    names: dict[str, FuncKey] = field(default_factory=dict)  # local name -> imported function


def _load_source() -> dict[str, Module]:
    root = Path(waystation.__file__).parent
    modules: dict[str, Module] = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        module = modules[name] = Module(name)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                module.functions[node.name] = node
            elif isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                        module.functions[f"{node.name}.{item.name}"] = item
        for node in ast.walk(tree):  # imports inside functions count too
            if isinstance(node, ast.Import):
                for alias in node.names:
                    module.modules[alias.asname or alias.name] = alias.name
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    local = alias.asname or alias.name
                    # `from waystation.audit import service` imports a module; `from x import f`, a name.
                    module.modules[local] = f"{node.module}.{alias.name}"
                    module.names[local] = (node.module, alias.name)
    return modules


class AuditScan:
    def __init__(self) -> None:
        self.modules = _load_source()
        self._memo: dict[FuncKey, bool] = {}
        # The classes behind `ctx.<field>` (AppContext's annotations), e.g. ctx.devices -> DeviceRuntime.
        context = self.modules["waystation.context"]
        tree = ast.parse(Path(waystation.__file__).with_name("context.py").read_text(encoding="utf-8"))
        self.ctx_fields: dict[str, FuncKey] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name == "AppContext":
                for item in node.body:
                    if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                        cls = self._class_in(context, item.annotation)
                        if cls is not None:
                            self.ctx_fields[item.target.id] = cls

    def audits(self, key: FuncKey) -> bool:
        if key not in self._memo:
            self._memo[key] = False  # a cycle adds nothing
            self._memo[key] = any(self._records(key, call) for call in self._calls(key))
        return self._memo[key]

    def _calls(self, key: FuncKey) -> Iterator[ast.Call]:
        node = self.modules[key[0]].functions.get(key[1])
        if node is not None:
            yield from (n for n in ast.walk(node) if isinstance(n, ast.Call))

    def _records(self, caller: FuncKey, call: ast.Call) -> bool:
        module = self.modules[caller[0]]
        func = call.func
        if isinstance(func, ast.Name) and module.names.get(func.id) == (RECORDER, "record"):
            return True  # record(...)
        if (
            isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Name)
            and module.modules.get(func.value.id) == RECORDER
            and func.attr == "record"
        ):
            return True  # audit.record(...)
        target = self._callee(caller, func)
        return target is not None and self.audits(target)

    def _callee(self, caller: FuncKey, func: ast.expr) -> FuncKey | None:
        """The function a call expression names, when the scan can tell; None otherwise."""
        module = self.modules[caller[0]]
        if isinstance(func, ast.Name):
            for key in ((module.name, func.id), module.names.get(func.id)):
                if key is not None and self._known(key):
                    return key
            return None
        if not isinstance(func, ast.Attribute):
            return None
        owner = func.value
        if isinstance(owner, ast.Name) and module.modules.get(owner.id) in self.modules:
            key = (module.modules[owner.id], func.attr)  # module.function()
            return key if self._known(key) else None
        cls = self._receiver_class(caller, owner)
        if cls is None:
            return None
        key = (cls[0], f"{cls[1]}.{func.attr}")
        return key if self._known(key) else None

    def _receiver_class(self, caller: FuncKey, owner: ast.expr) -> FuncKey | None:
        """The class of `owner` in `owner.method()`: `self`, `ctx.<field>`, or a call annotated to return
        a class (`runtime(ctx)`)."""
        if isinstance(owner, ast.Name) and owner.id == "self" and "." in caller[1]:
            return (caller[0], caller[1].split(".")[0])
        if (
            isinstance(owner, ast.Attribute)
            and isinstance(owner.value, ast.Name)
            and owner.value.id == "ctx"
            and owner.attr in self.ctx_fields
        ):
            return self.ctx_fields[owner.attr]
        if isinstance(owner, ast.Call):
            callee = self._callee(caller, owner.func)
            if callee is not None:
                node = self.modules[callee[0]].functions[callee[1]]
                returns = getattr(node, "returns", None)
                if returns is not None:
                    return self._class_in(self.modules[callee[0]], returns)
        return None

    def _class_in(self, module: Module, annotation: ast.expr) -> FuncKey | None:
        """A waystation class named in an annotation (`DeviceRuntime | None` -> DeviceRuntime)."""
        for node in ast.walk(annotation):
            name = node.id if isinstance(node, ast.Name) else getattr(node, "value", None)
            if not isinstance(name, str):
                continue
            for cls in ((module.name, name), module.names.get(name)):
                if (
                    cls is not None
                    and cls[0] in self.modules
                    and any(q.startswith(f"{cls[1]}.") for q in self.modules[cls[0]].functions)
                ):
                    return cls
        return None

    def _known(self, key: FuncKey) -> bool:
        return key[0] in self.modules and key[1] in self.modules[key[0]].functions


def _routes(routes: list[Any]) -> Iterator[APIRoute]:
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif hasattr(route, "original_router"):  # FastAPI keeps included routers as such
            yield from _routes(route.original_router.routes)


def _write_routes(tmp_path: Path) -> dict[tuple[str, str], FuncKey]:
    app = create_app(Settings(data_dir=tmp_path))
    found: dict[tuple[str, str], FuncKey] = {}
    for route in _routes(app.routes):
        for method in set(route.methods) & WRITE_METHODS:
            endpoint = route.endpoint
            found[(method, route.path)] = (endpoint.__module__, endpoint.__qualname__)
    return found


def test_every_write_route_records_an_audit_entry(tmp_path: Path) -> None:
    routes = _write_routes(tmp_path)
    assert len(routes) > 50, "the route walk found too few routes: has FastAPI's router changed?"
    scan = AuditScan()
    for key in routes.values():
        assert scan._known(key), f"{key} not found in the source"
    missing = sorted(
        f"{method} {path} ({'.'.join(key)})"
        for (method, path), key in routes.items()
        if (method, path) not in NOT_AUDITED and not scan.audits(key)
    )
    assert missing == [], "write routes that record no audit entry:\n" + "\n".join(missing)


def test_the_exceptions_are_real_and_still_needed(tmp_path: Path) -> None:
    routes = _write_routes(tmp_path)
    scan = AuditScan()
    for route in sorted(NOT_AUDITED):
        assert route in routes, f"{route} is no longer a write route: drop it from NOT_AUDITED"
        assert not scan.audits(routes[route]), f"{route} records an entry now: drop it from NOT_AUDITED"


def test_the_scan_follows_calls_and_knows_a_handler_that_records_nothing() -> None:
    scan = AuditScan()
    # Directly, through a same-module helper, through another module's function, through a method.
    assert scan.audits(("waystation.devices.router", "create_device"))
    assert scan.audits(("waystation.station.router", "add_member"))  # _audit_member()
    assert scan.audits(("waystation.snapshots.router", "export"))  # operations.export_snapshot()
    assert scan.audits(("waystation.devices.router", "send_command"))  # runtime.submit_command()
    assert not scan.audits(("waystation.auth.router", "me"))
    assert not scan.audits(("waystation.devices.router", "list_devices"))

    # The same handler with its helper no longer recording: refused.
    blind = AuditScan()
    blind.modules["waystation.station.router"].functions["_audit_member"] = ast.parse("def f(): pass").body[0]
    assert not blind.audits(("waystation.station.router", "add_member"))
