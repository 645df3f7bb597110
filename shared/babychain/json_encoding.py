"""JSON text for the engine's hot paths: `json.dumps` with fixed options, its C encoder built once.

`json.dumps(obj)` builds a `JSONEncoder` (with options) and then, inside `encode`, a C encoder object and a dict for
its circular-reference check, on every call: for the small documents of a store call or a provider request that is
about 40% of the call. `one_shot_encoder` builds the C encoder once; the text it writes is `json.dumps`'s, byte for
byte (tests/unit/test_json_encoding.py compares them). One difference: no circular-reference check, so a document
that contains itself raises RecursionError instead of ValueError (the engine's documents come from JSON or are built
as trees, so none can).
"""

from __future__ import annotations

import json
import json.encoder
from collections.abc import Callable
from typing import Any


def one_shot_encoder(
    *, ensure_ascii: bool = True, separators: tuple[str, str] = (", ", ": "), allow_nan: bool = True
) -> Callable[[Any], str]:
    """`json.dumps(obj, ensure_ascii=…, separators=…, allow_nan=…)` as a function of `obj`."""
    reference = json.JSONEncoder(ensure_ascii=ensure_ascii, separators=separators, allow_nan=allow_nan)
    make = getattr(json.encoder, "c_make_encoder", None)  # not in the type stubs
    if make is None:  # an interpreter without the C accelerator: json's own path
        return reference.encode
    item_separator, key_separator = separators
    strings = json.encoder.encode_basestring_ascii if ensure_ascii else json.encoder.encode_basestring
    # The arguments JSONEncoder.iterencode passes for a one-shot encode, but no markers (the cycle check).
    encoder = make(None, reference.default, strings, None, key_separator, item_separator, False, False, allow_nan)
    join = "".join

    def encode(obj: Any) -> str:
        return join(encoder(obj, 0))

    return encode
