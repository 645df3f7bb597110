"""Input checks for step params: no credentials, no provider-controlled keys, bounded JSON.

Provider keys live only in the server's configuration, so any key that looks like a credential is refused
outright (rather than silently dropped) to tell callers early that their secret was sent to the wrong place.
"""

from __future__ import annotations

import functools
import json
import math
import re
import unicodedata
from typing import Any, NoReturn, TypeAlias

from babychain.errors import invalid_input

CREDENTIAL_MESSAGE = (
    "Credential-like keys are not allowed in step params or metadata. Configure provider keys on the BabyChain server."
)
PROVIDER_CONTROLLED_MESSAGE = (
    "Provider-controlled keys are not allowed in step params. "
    "Select models through input.chain_models; the engine manages callbacks."
)

_NON_ALNUM = re.compile(r"[^a-z0-9]")
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")

_CREDENTIAL_PREFIXES = ("xbabychainprovider",)
_CREDENTIAL_EXACT = frozenset(
    {
        "apikey",
        "auth",
        "authorization",
        "authtoken",
        "accesstoken",
        "bearertoken",
        "cookie",
        "cookies",
        "dashscopeapikey",
        "secret",
        "secretkey",
        "accesskeyid",
        "accesskeysecret",
        "token",
        "xapikey",
        "xkey",
    }
)
# Names ending like these are credentials whatever comes before: `admin_password`, `client_secret`, `session_token`,
# `aws_secret_access_key`, `proxy-authorization`, `set_cookie`. (`max_tokens` and `secret_sauce` are not.)
_CREDENTIAL_SUFFIXES = (
    "apikey",
    "secretkey",
    "accesskeysecret",
    "secretaccesskey",
    "password",
    "passwd",
    "passphrase",
    "clientsecret",
    "privatekey",
    "token",
    "authorization",
    "cookie",
    "credential",
    "credentials",
)

_PROVIDER_CONTROLLED = frozenset(
    {"callbackurl", "generationcallbackurl", "generationmodel", "model", "webhookurl", "webhooksecret"}
)

# Guards the credential walk against self-referencing Python objects; JSON input stays far below it.
_MAX_WALK_NODES = 100_000

# Letters that look Latin but are not (Cyrillic, Greek, dotless i): api_key spelled with a Cyrillic a is still
# api_key. NFKC already folds full-width and compatibility forms; this is the part of Unicode's confusables table
# that matters for key names.
_LOOKALIKES = str.maketrans(
    {
        "\u0430": "a",
        "\u0432": "b",
        "\u0435": "e",
        "\u043a": "k",
        "\u043c": "m",
        "\u043d": "h",
        "\u043e": "o",
        "\u0440": "p",
        "\u0441": "c",
        "\u0442": "t",
        "\u0443": "y",
        "\u0445": "x",
        "\u0456": "i",
        "\u0458": "j",
        "\u0455": "s",
        "\u0501": "d",
        "\u0131": "i",
        "\u03b1": "a",
        "\u03b5": "e",
        "\u03b9": "i",
        "\u03ba": "k",
        "\u03bd": "v",
        "\u03bf": "o",
        "\u03c1": "p",
        "\u03c4": "t",
        "\u03c5": "u",
        "\u03c7": "x",
    }
)


def normalise_key(key: str) -> str:
    """NFKC, case-folded, look-alike letters mapped to Latin, and everything outside [a-z0-9] dropped, so
    `X-Api_Key` compares equal to `xapikey`, and full-width or Cyrillic spellings of `api_key` to `apikey`."""
    return _NON_ALNUM.sub("", unicodedata.normalize("NFKC", key).casefold().translate(_LOOKALIKES))


# Requests repeat the same few key names: their verdicts are kept (short keys only, so the cache stays small).
_CACHED_KEY_LENGTH = 64


def credential_rule(key: str) -> str | None:
    """Why `key` looks like a credential (the rule that matched), or None."""
    return _cached_credential_rule(key) if len(key) <= _CACHED_KEY_LENGTH else _credential_rule(key)


def _credential_rule(key: str) -> str | None:
    norm = normalise_key(key)
    if norm.startswith(_CREDENTIAL_PREFIXES):
        return "names starting with x-babychain-provider are reserved"
    if norm in _CREDENTIAL_EXACT:
        return f"'{norm}' names a credential"
    suffix = next((s for s in _CREDENTIAL_SUFFIXES if norm.endswith(s)), None)
    return f"names ending in '{suffix}' look like credentials" if suffix else None


_cached_credential_rule = functools.lru_cache(maxsize=1024)(_credential_rule)


def is_credential_like_key(key: str) -> bool:
    return credential_rule(key) is not None


def credential_message(key: str) -> str:
    return f"{CREDENTIAL_MESSAGE} ({credential_rule(key)}.)"


def is_provider_controlled_key(key: str) -> bool:
    if len(key) <= _CACHED_KEY_LENGTH:
        return _cached_provider_controlled(key)
    return normalise_key(key) in _PROVIDER_CONTROLLED


@functools.lru_cache(maxsize=1024)
def _cached_provider_controlled(key: str) -> bool:
    return normalise_key(key) in _PROVIDER_CONTROLLED


def child_path(path: str, key: str | int) -> str:
    """Extend a dotted field path: `a.b`, `a[0]`, and `a["odd key"]` for keys that would be ambiguous."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    if _PLAIN_KEY.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key)}]"


# Where a walk is: the root's path, or (the parent's place, key or index). The walks below keep places and spell a
# path (`child_path`, step by step from the root) only for the error they raise: most values are fine.
_Place: TypeAlias = "str | tuple[_Place, str | int]"


def _spell(place: _Place) -> str:
    keys: list[str | int] = []
    while isinstance(place, tuple):
        place, key = place
        keys.append(key)
    path = place
    for key in reversed(keys):
        path = child_path(path, key)
    return path


def check_step_params(params: Any, path: str) -> None:
    """Reject credential-like keys at any depth and provider-controlled keys at the top level of `params`."""
    if not isinstance(params, dict):
        raise invalid_input("Step params must be a JSON object.", path)
    for key in params:
        if isinstance(key, str) and (
            _cached_provider_controlled(key) if len(key) <= _CACHED_KEY_LENGTH else is_provider_controlled_key(key)
        ):
            raise invalid_input(PROVIDER_CONTROLLED_MESSAGE, child_path(path, key))
    check_no_credentials(params, path)


def check_no_credentials(value: Any, path: str) -> None:
    """Reject credential-like keys at any depth (step params, and metadata: it is echoed in every callback)."""
    stack: list[tuple[Any, _Place]] = [(value, path)]
    seen: set[int] = set()
    while stack:
        value, here = stack.pop()
        if isinstance(value, dict | list):
            if id(value) in seen:
                continue
            seen.add(id(value))
            if len(seen) > _MAX_WALK_NODES:
                raise invalid_input("Value is too large to check.", path, code="invalid_request")
        if isinstance(value, dict):
            for key, child in value.items():
                key_text = key if type(key) is str else str(key)
                # credential_rule, its cache asked here: one call per key, not three.
                rule = (
                    _cached_credential_rule(key_text)
                    if len(key_text) <= _CACHED_KEY_LENGTH
                    else _credential_rule(key_text)
                )
                if rule is not None:
                    raise invalid_input(credential_message(key_text), child_path(_spell(here), key_text))
                if isinstance(child, dict | list):  # scalars have no keys: nothing more to look at
                    stack.append((child, (here, key_text)))
        elif isinstance(value, list):
            stack.extend((child, (here, index)) for index, child in enumerate(value) if isinstance(child, dict | list))


def check_json_bounds(
    value: Any,
    path: str,
    *,
    max_depth: int = 12,
    max_keys: int = 200,
    max_array: int = 100,
    max_string: int = 8192,
    max_nodes: int = 1000,
    keys: set[str] | None = None,
) -> None:
    """Bound the size and shape of caller JSON before anything else walks it.

    Depth counts nested containers: a flat object is depth 1. Keys count towards `max_string`; every value
    (and the root) counts towards `max_nodes`. Only JSON types are accepted, and numbers must be finite. `keys`, when
    given, receives every object key at any depth (when the value is within bounds: see `has_suspect_key`).
    """
    nodes = 0
    # Each entry is (value, place, depth of the containers around it); the root sits inside none. One loop, and no
    # call per scalar: the create request walks every value of its input and metadata here.
    stack: list[tuple[Any, _Place, int]] = [(value, path, 0)]
    while stack:
        item, here, depth = stack.pop()
        nodes += 1
        if nodes > max_nodes:
            _refuse(f"Value has more than {max_nodes} items in total.", path)
        # Decoded JSON's scalars are of these exact types: told by one comparison (the rest by `_check_scalar`).
        kind = type(item)
        if kind is str:
            if len(item) > max_string:
                _refuse(f"String is longer than {max_string} characters.", here)
        elif kind is int or kind is bool or item is None:
            continue
        elif isinstance(item, dict | list):
            if depth >= max_depth:
                _refuse(f"Value is nested deeper than {max_depth} levels.", here)
            _push_members(stack, item, here, depth + 1, max_keys, max_array, max_string)
            if keys is not None and type(item) is dict:
                keys.update(item)
        else:
            _check_scalar(item, here, max_string)


def _check_scalar(item: Any, here: _Place, max_string: int) -> None:
    if isinstance(item, str):
        if len(item) > max_string:
            _refuse(f"String is longer than {max_string} characters.", here)
    elif isinstance(item, float):
        if not math.isfinite(item):
            _refuse("Numbers must be finite.", here)
    elif item is not None and not isinstance(item, bool | int):
        _refuse("Value is not valid JSON.", here)


def _push_members(
    stack: list[tuple[Any, _Place, int]],
    item: dict[Any, Any] | list[Any],
    here: _Place,
    depth: int,
    max_keys: int,
    max_array: int,
    max_string: int,
) -> None:
    """Checks a container's own bounds (and an object's keys) and puts the values inside it on the stack."""
    if isinstance(item, list):
        if len(item) > max_array:
            _refuse(f"Array is longer than {max_array} items.", here)
        stack.extend((child, (here, index), depth) for index, child in enumerate(item))
        return
    if len(item) > max_keys:
        _refuse(f"Object has more than {max_keys} keys.", here)
    for key, child in item.items():
        if type(key) is not str and not isinstance(key, str):
            _refuse("Object keys must be strings.", here)
        if len(key) > max_string:
            _refuse(f"Key is longer than {max_string} characters.", here)
        stack.append((child, (here, key), depth))


def has_suspect_key(keys: set[str]) -> bool:
    """Whether any of `keys` is credential-like or provider-controlled: when none of a value's keys is (the keys
    `check_json_bounds` collected from it), `check_step_params` and `check_no_credentials` find nothing in any part
    of it, and need not walk it again."""
    return any(credential_rule(key) is not None or is_provider_controlled_key(key) for key in keys)


def _refuse(message: str, place: _Place) -> NoReturn:
    raise invalid_input(message, _spell(place) or None, code="invalid_request")


# The edge's strict JSON: integers beyond what every JSON reader holds exactly (and Postgres's bigint) are refused.
MAX_JSON_INTEGER = 2**53 - 1
_INTEGER_DIGITS = len(str(MAX_JSON_INTEGER))


def strict_json(raw: bytes) -> Any:
    """Decodes a request body: UTF-8 only; no NaN or Infinity, no number beyond the bounds; no NUL or lone surrogate
    in any string or key. Anything else raises a 400 (`invalid_json`, naming the field where there is one)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise invalid_input("Request body must be UTF-8 encoded JSON.", code="invalid_json") from None
    try:
        if text.startswith("\ufeff"):  # what json.loads refuses before decoding, in its words
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        value = _STRICT_DECODER.decode(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError, and so are the hooks' refusals
        raise invalid_input(f"Request body is not valid JSON: {exc}.", code="invalid_json") from None
    if _BAD_ESCAPE.search(text):
        check_json_text(value, "")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _bounded_int(digits: str) -> int:
    if len(digits.lstrip("-")) > _INTEGER_DIGITS or abs(number := int(digits)) > MAX_JSON_INTEGER:
        raise ValueError(f"integers must be within ±{MAX_JSON_INTEGER}")
    return number


def _finite_float(digits: str) -> float:
    number = float(digits)
    if not math.isfinite(number):
        raise ValueError("numbers must be finite")
    return number


# json.loads with hooks builds a decoder (and its scanner) per call: one, built once.
_STRICT_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_int=_bounded_int, parse_float=_finite_float)


def check_json_text(value: Any, path: str) -> None:
    """Refuses NUL (Postgres text cannot hold it) and lone surrogates (not text at all) in every string and key."""
    stack: list[tuple[Any, _Place]] = [(value, path)]
    while stack:
        item, here = stack.pop()
        if isinstance(item, str):
            _check_text(item, here)
        elif isinstance(item, dict):
            for key, child in item.items():
                _check_text(key, here)
                stack.append((child, (here, key)))
        elif isinstance(item, list):
            stack.extend((child, (here, index)) for index, child in enumerate(item))


_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")
# In JSON text decoded from strict UTF-8, a NUL or a surrogate can only come from a \u escape (raw control
# characters are invalid JSON, and the decoder refuses encoded surrogates): text without one needs no walk.
_BAD_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")


def _check_text(text: str, place: _Place) -> None:
    if _BAD_TEXT.search(text):
        raise invalid_input(
            "Text must not contain NUL characters or unpaired surrogates.",
            _spell(place) or None,
            code="invalid_request",
        )
