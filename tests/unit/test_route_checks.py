"""The run-time checks of `babychain.api.routes` against pydantic: the API handlers check their parameters and the
create body without pydantic, and must answer exactly as Powertools' pydantic validation did (same acceptance, same
converted value, same message), for the types the document declares (`babychain.api.openapi._typed`)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from babychain.api.openapi import _typed
from babychain.api.routes import (
    ChainFilter,
    Cursor,
    IdempotencyKey,
    Invalid,
    Limit,
    RunId,
    StatusFilter,
    check_body,
    check_value,
    create_body,
    parameter_spec,
)
from babychain.api.schemas import CreateRunRequest

PARAMETERS = {"run_id": RunId, "limit": Limit, "cursor": Cursor, "status": StatusFilter, "chain": ChainFilter}
PARAMETERS["Idempotency-Key"] = IdempotencyKey

# Values near each check's edges: integers as pydantic parses them from text, patterns, lengths, the enums.
EDGES = [
    "5",
    " 5 ",
    "+5",
    "-0",
    "05",
    "5.0",
    "5.00",
    "5.",
    ".5",
    "5.5",
    "1_0",
    "1__0",
    "_1",
    "1e2",
    "0x1",
    "",
    "\u00a05",
    "\x1c5",
    "5\n",
    "100",
    "101",
    "9" * 40,
    "\u0663",
    "12345678-1234-5678-1234-567812345678",
    "12345678-1234-5678-1234-567812345678\n",
    "12345678-1234-5678-1234-56781234567g",
    "queued",
    "done",
    "chain303",
    "a" * 255,
    "a" * 256,
    "k:1.2-3_4",
    "k 1",
    "x" * 512,
    "x" * 513,
    ["1", "2"],
    ["queued"],
]


def _pydantic(annotation: Any, value: Any) -> tuple[bool, Any]:
    try:
        return True, TypeAdapter(_typed(annotation)).validate_python(value)
    except ValidationError as error:
        return False, error.errors()[0]["msg"]


def _ours(annotation: Any, value: Any) -> tuple[bool, Any]:
    spec = parameter_spec(annotation)
    try:
        return True, check_value(annotation.__origin__, spec, value, "field")  # type: ignore[arg-type]
    except Invalid as error:
        return False, error.message


@pytest.mark.parametrize("name", sorted(PARAMETERS))
@pytest.mark.parametrize("value", EDGES, ids=repr)
def test_parameters_answer_as_pydantic_at_the_edges(name: str, value: Any) -> None:
    assert _ours(PARAMETERS[name], value) == _pydantic(PARAMETERS[name], value)


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(sorted(PARAMETERS)),
    value=st.one_of(
        st.text(max_size=40),
        st.from_regex(r"\A\s*[+-]?[0-9_]{1,5}(\.[0-9]{0,3})?\s*\Z"),
        st.lists(st.text(max_size=5), min_size=2, max_size=3),
    ),
)
def test_parameters_answer_as_pydantic(name: str, value: Any) -> None:
    assert _ours(PARAMETERS[name], value) == _pydantic(PARAMETERS[name], value)


def _pydantic_body(body: Any) -> list[tuple[str | None, str]]:
    try:
        CreateRunRequest.model_validate(body)
    except ValidationError as error:
        return [(str(e["loc"][0]) if e["loc"] else None, e["msg"]) for e in error.errors()]
    return []


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=3), inner, max_size=2),
    max_leaves=4,
)
FIELD_VALUES = st.one_of(JSON, st.text(min_size=2040, max_size=2060))


@settings(max_examples=300, deadline=None)
@given(
    body=st.one_of(
        JSON,
        st.fixed_dictionaries(
            {},
            optional={"input": FIELD_VALUES, "webhook_url": FIELD_VALUES, "metadata": FIELD_VALUES, "inputs": JSON},
        ),
    )
)
@example(body=None)
@example(body={"input": {}, "webhook_url": "x" * 2049})
def test_the_create_body_is_checked_as_the_model_would(body: Any) -> None:
    ours = [(e.field, e.message) for e in check_body(create_body({}), body)]
    # Powertools put pydantic's whole-body errors at the body (no field) and a missing body is "Field required".
    expected = [("Field required" if body is None else msg) for _, msg in _pydantic_body(body)]
    assert [message for _, message in ours] == expected
    assert [field for field, _ in ours] == [field for field, _ in _pydantic_body(body)]


@pytest.mark.parametrize(
    ("body", "code", "message", "field"),
    [
        (
            {"input": {}, "inputs": {}, "webhook_url": 5},
            "invalid_request",
            "inputs: Extra inputs are not permitted.",
            "inputs",
        ),
        ({"webhook_url": 5}, "invalid_chain_input", "input: Field required.", "input"),
        (
            {"input": {}, "webhook_url": 5},
            "invalid_callback_url",
            "webhook_url: Input should be a valid string.",
            "webhook_url",
        ),
        ({"input": {}, "": 1}, "invalid_request", "Request body: Extra inputs are not permitted.", None),
        (
            [],
            "invalid_request",
            "Request body: Input should be a valid dictionary or instance of CreateRunRequest.",
            None,
        ),
    ],
)
def test_the_first_body_error_is_the_answer(body: Any, code: str, message: str, field: str | None) -> None:
    errors = check_body(create_body({}), body)
    first = next((e for e in errors if e.extra), errors[0])
    answer = first.as_api_error(body=True).body()["error"]
    assert (answer["code"], answer["message"], answer.get("field")) == (code, message, field)
