"""`one_shot_encoder` writes what `json.dumps` writes with the same options, for any JSON document."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from babychain.json_encoding import one_shot_encoder

OPTIONS: list[dict[str, Any]] = [
    {},
    {"ensure_ascii": False, "separators": (",", ":"), "allow_nan": False},
    {"separators": (",", ":")},
]
documents = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(document=documents)
def test_the_text_is_json_dumps_text(document: Any) -> None:
    for options in OPTIONS:
        assert one_shot_encoder(**options)(document) == json.dumps(document, **options)


def test_what_json_dumps_refuses_is_refused() -> None:
    strict = one_shot_encoder(allow_nan=False)
    for value in (math.nan, math.inf, {"x": [1, -math.inf]}):
        with pytest.raises(ValueError):
            json.dumps(value, allow_nan=False)
        with pytest.raises(ValueError):
            strict(value)
    assert one_shot_encoder()(math.nan) == json.dumps(math.nan) == "NaN"
    for value in (b"bytes", {1, 2}, object(), {("a", "tuple"): 1}):
        with pytest.raises(TypeError):
            one_shot_encoder()(value)
    # Non-string keys as json.dumps writes them; a str subclass as the text it holds.
    odd = {1: "one", 2.5: True, None: [], False: 0, "k": type("Sub", (str,), {})("sub")}
    assert one_shot_encoder()(odd) == json.dumps(odd)
