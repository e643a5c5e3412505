"""Fuzzing the flow validator: no exception escapes, every rejection has a reason."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from waystation.flows.validation import TYPE_CHECKS, check_schema, compile_validator

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=15,
)
simple_schemas = st.dictionaries(
    st.sampled_from(["a", "b", "c"]), st.sampled_from(sorted(TYPE_CHECKS)), max_size=3
)


@settings(max_examples=500, deadline=None)
@given(schema=simple_schemas, payload=json_values)
def test_simple_map_validator_never_raises(schema: dict, payload: object) -> None:
    assert check_schema(schema) is None
    reason = compile_validator(schema)(payload)
    assert reason is None or (isinstance(reason, str) and reason)


@settings(max_examples=200, deadline=None)
@given(payload=json_values)
def test_json_schema_validator_never_raises(payload: object) -> None:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {"a": {"type": "integer", "minimum": 0}},
        "required": ["a"],
    }
    reason = compile_validator(schema)(payload)
    assert reason is None or (isinstance(reason, str) and reason)


@given(schema=json_values)
def test_check_schema_never_raises(schema: object) -> None:
    check_schema(schema)


def test_bool_is_not_a_number_and_int_is() -> None:
    validate = compile_validator({"x": "number", "n": "int"})
    assert validate({"x": True, "n": 1}) == "field 'x' must be a number"
    assert validate({"x": 1, "n": 1.0}) == "field 'n' must be an integer"
    assert validate({"x": 1.5, "n": 2}) is None
