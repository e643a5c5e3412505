"""Payload validation for flows: the simple `{"field": "type"}` map, or a full JSON Schema.

A validator is compiled once per flow version and returns None (valid) or the reason it is not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

Validator = Callable[[Any], str | None]


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


TYPE_CHECKS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "string": ("a string", lambda v: isinstance(v, str)),
    "str": ("a string", lambda v: isinstance(v, str)),
    "number": ("a number", _is_number),
    "float": ("a number", _is_number),
    "int": ("an integer", _is_int),
    "integer": ("an integer", _is_int),
    "bool": ("a boolean", lambda v: isinstance(v, bool)),
    "boolean": ("a boolean", lambda v: isinstance(v, bool)),
    "object": ("an object", lambda v: isinstance(v, dict)),
    "array": ("an array", lambda v: isinstance(v, list)),
}


def is_json_schema(schema: dict[str, Any]) -> bool:
    return "$schema" in schema


def check_schema(schema: Any) -> str | None:
    """Why `schema` is not a usable payload schema, or None."""
    if not isinstance(schema, dict):
        return "payload_schema must be an object"
    if is_json_schema(schema):
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            return f"invalid JSON Schema: {exc.message}"
        return None
    for field, type_name in schema.items():
        if not isinstance(type_name, str) or type_name not in TYPE_CHECKS:
            allowed = "|".join(sorted(TYPE_CHECKS))
            return f"field {field!r}: type must be one of {allowed}"
    return None


def compile_validator(schema: dict[str, Any]) -> Validator:
    if is_json_schema(schema):
        validator = Draft202012Validator(schema)

        def validate_json_schema(payload: Any) -> str | None:
            error = next(iter(validator.iter_errors(payload)), None)
            if error is None:
                return None
            where = "/".join(str(p) for p in error.absolute_path) or "payload"
            return f"{where}: {error.message}"[:500]

        return validate_json_schema

    checks = [(field, *TYPE_CHECKS[type_name]) for field, type_name in schema.items()]

    def validate_map(payload: Any) -> str | None:
        if not isinstance(payload, dict):
            return "payload must be a JSON object"
        for field, expected, check in checks:
            if field not in payload:
                return f"missing field {field!r}"
            if not check(payload[field]):
                return f"field {field!r} must be {expected}"
        return None

    return validate_map
