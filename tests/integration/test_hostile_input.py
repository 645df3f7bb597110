"""Nothing a caller sends yields a 5xx: the real handlers, invoked as Lambda would, on the real store.

Named regressions first (each was a 500 once), then property-based tests (hypothesis) that generate hostile bodies,
run ids and query strings.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from babychain.local.lambda_shim import LambdaContext, http_event, load_handler
from babychain.local.runner import LocalEngine
from tests.conftest import KEY_A
from tests.integration.requests import chain_request

AUTH = {"authorization": f"Bearer {KEY_A}", "content-type": "application/json"}
# Examples per property test: enough to cover the families below in CI time (each invocation is a few ms).
EXAMPLES = 150


def invoke(
    method: str, route: str, path: str, *, body: bytes = b"", query: str = "", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    """One API Gateway event through the function that owns the route; returns (status, decoded JSON body)."""
    function = {"POST /api/v1/chains/{slug}/runs": "create_run", "GET /api/v1/chains/runs": "list"}.get(
        f"{method} {route}", "get_run" if "/get/" in route else "cancel_run"
    )
    params: dict[str, str] = {}
    for name, value in zip(route.strip("/").split("/"), path.strip("/").split("/"), strict=False):
        if name.startswith("{"):
            params[name[1:-1]] = value
    event = http_event(method, path, query, {**AUTH, **(headers or {})}, body, f"{method} {route}", params)
    response = load_handler(function)(event, LambdaContext(function_name=function))
    text = response.get("body") or ""
    data = json.loads(base64.b64decode(text) if response.get("isBase64Encoded") else text) if text else {}
    return response["statusCode"], data


def create(body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    return invoke("POST", "/api/v1/chains/{slug}/runs", "/api/v1/chains/chain1/runs", body=body, headers=headers)


def assert_client_error(status: int, data: dict[str, Any], field: str | None = None) -> None:
    assert 400 <= status < 500, (status, data)
    error = data["error"]
    assert error["code"] and error["message"] and error["type"] == "invalid_request_error"
    if field is not None:
        assert error.get("field") == field, error


@pytest.fixture
def engine(make_engine: Callable[..., LocalEngine]) -> Iterator[LocalEngine]:
    # No queue workers: the handlers run in this process (services installed), as one Lambda container would.
    yield make_engine(workers=False)


def _seed_body(**changes: Any) -> dict[str, Any]:
    body = chain_request("chain1", None)
    body["input"]["text_to_image_params"].update(changes)
    return body


# ------------------------------------------------------------------------------------------- named regressions


def test_a_body_that_is_not_utf8_is_a_400(engine: LocalEngine) -> None:
    status, data = create(b'{"input": "\xff\xfe"}')
    assert_client_error(status, data)
    assert data["error"]["code"] == "invalid_json"


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ('"a kite\\u0000 over hills"', "input.text_to_image_params.prompt"),  # NUL: Postgres text cannot hold it
        ('"\\ud800 alone"', "input.text_to_image_params.prompt"),  # a lone surrogate is not text
    ],
)
def test_nul_and_lone_surrogates_in_strings_are_a_400_naming_the_field(
    engine: LocalEngine, raw: str, field: str
) -> None:
    text = json.dumps(_seed_body(prompt="PLACEHOLDER")).replace('"PLACEHOLDER"', raw)
    status, data = create(text.encode())
    assert_client_error(status, data, field)


@pytest.mark.parametrize("key", ["api_key", "password", "session_token", "\u0430pi_key"])
def test_credential_like_keys_in_metadata_are_a_400(engine: LocalEngine, key: str) -> None:
    # metadata is echoed in every callback, so a secret put there would travel on.
    body = {**chain_request("chain1", None), "metadata": {"note": "ok", "nested": {key: "value"}}}
    status, data = create(json.dumps(body).encode())
    assert_client_error(status, data, f"metadata.nested.{key}" if key.isascii() else None)
    assert "Credential-like keys" in data["error"]["message"]


def test_nul_in_metadata_and_in_keys_is_a_400(engine: LocalEngine) -> None:
    body = {**chain_request("chain1", None), "metadata": {"note": "a\u0000b"}}
    assert_client_error(*create(json.dumps(body).encode()), "metadata.note")
    body = {**chain_request("chain1", None), "metadata": {"k\u0000": 1}}
    status, data = create(json.dumps(body).encode())
    assert_client_error(status, data)


@pytest.mark.parametrize("seed", ["18446744073709551616", "1" + "0" * 100, "9" * 5000, "NaN", "Infinity", "1e400"])
def test_numbers_out_of_bounds_are_a_400(engine: LocalEngine, seed: str) -> None:
    text = json.dumps(_seed_body(seed=0)).replace('"seed": 0', f'"seed": {seed}')
    status, data = create(text.encode())
    assert_client_error(status, data)


@pytest.mark.parametrize(
    ("step", "params", "field"),
    [
        ("text_to_image", {"seed": 2**64}, None),  # beyond the edge's JSON integers: refused while decoding
        ("text_to_image", {"seed": 2**53 - 1}, "seed"),  # within them, beyond the documented seed range
        ("text_to_image", {"seed": 2**31}, "seed"),
        ("text_to_image", {"seed": -1}, "seed"),
        ("text_to_image", {"width": 48}, "width"),
        ("text_to_image", {"width": 4096, "height": 2048}, "height"),  # FLUX.2: at most 4 MP
        ("text_to_image", {"steps": 51}, "steps"),
        ("text_to_image", {"guidance": 10.5}, "guidance"),
        ("image_to_video", {"duration": 1}, "duration"),  # Seedance: 2-12 s, or -1
        ("image_to_video", {"seed": 2**32}, "seed"),
    ],
)
def test_params_beyond_the_documented_bounds_are_a_400_naming_the_field(
    engine: LocalEngine, step: str, params: dict[str, int], field: str | None
) -> None:
    body = chain_request("chain1", None)
    body["input"][f"{step}_params"].update(params)
    status, data = create(json.dumps(body).encode())
    assert_client_error(status, data, f"input.{step}_params.{field}" if field else None)


@pytest.mark.parametrize(
    "run_id",
    [
        "urn:uuid:12345678-1234-5678-1234-567812345678",
        "{12345678-1234-5678-1234-567812345678}",
        "12345678123456781234567812345678",
        "12345678-1234-5678-1234-56781234567\u0000",
    ],
)
def test_run_ids_must_be_canonical_uuids(engine: LocalEngine, run_id: str) -> None:
    for method, route in (("GET", "/api/v1/chains/get/{run_id}"), ("POST", "/api/v1/chains/cancel/{run_id}")):
        status, data = invoke(method, route, route.replace("{run_id}", quote(run_id, safe="")))
        assert_client_error(status, data)
        status, data = invoke(method, route, route.replace("{run_id}", run_id))
        assert_client_error(status, data)


@pytest.mark.parametrize(
    "cursor",
    [
        base64.urlsafe_b64encode(b"not a time|12345678-1234-5678-1234-567812345678").decode(),
        base64.urlsafe_b64encode(b"2026-01-01T00:00:00+00:00|12345678-1234-5678-1234-567812345678").decode(),
        "%00",
        "....",
    ],
)
def test_cursors_this_api_did_not_sign_are_a_400(engine: LocalEngine, cursor: str) -> None:
    status, data = invoke("GET", "/api/v1/chains/runs", "/api/v1/chains/runs", query=urlencode({"cursor": cursor}))
    assert_client_error(status, data, "cursor")


def test_a_signed_cursor_still_pages_and_a_tampered_one_is_refused(engine: LocalEngine) -> None:
    for _ in range(3):
        assert create(json.dumps(chain_request("chain1", None)).encode())[0] == 202
    status, page = invoke("GET", "/api/v1/chains/runs", "/api/v1/chains/runs", query="limit=2")
    assert status == 200 and page["has_more"]
    cursor = page["next_cursor"]
    status, rest = invoke("GET", "/api/v1/chains/runs", "/api/v1/chains/runs", query=urlencode({"cursor": cursor}))
    assert status == 200 and len(rest["data"]) == 1
    tampered = cursor[:-2] + ("A" if cursor[-2] != "A" else "B") + cursor[-1]
    status, data = invoke("GET", "/api/v1/chains/runs", "/api/v1/chains/runs", query=urlencode({"cursor": tampered}))
    assert_client_error(status, data, "cursor")


def test_nul_in_query_parameters_and_idempotency_keys_is_a_400(engine: LocalEngine) -> None:
    for query in ("status=queued%00", "chain_slug=chain1%00", "limit=1%00"):
        assert_client_error(*invoke("GET", "/api/v1/chains/runs", "/api/v1/chains/runs", query=query))
    body = json.dumps(chain_request("chain1", None)).encode()
    assert_client_error(*create(body, {"idempotency-key": "key\u0000"}), "Idempotency-Key")


# ------------------------------------------------------------------------------------------- property-based

# JSON-ish values with the awkward parts in: any code point (NUL and lone surrogates included), huge integers,
# non-finite floats, deep nesting.
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(alphabet=st.characters(codec=None), max_size=40)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
HOSTILE = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _dump(value: Any) -> bytes:
    # json.dumps writes lone surrogates as \ud800 escapes and non-finite floats as NaN/Infinity: hostile but parseable.
    return json.dumps(value).encode()


@HOSTILE
@given(where=st.sampled_from(["prompt", "seed", "width", "metadata", "webhook_url", "extra", "root"]), value=VALUES)
def test_hostile_values_anywhere_in_a_create_are_never_a_5xx(engine: LocalEngine, where: str, value: Any) -> None:
    body: Any = chain_request("chain1", None)
    if where in ("prompt", "seed", "width"):
        body["input"]["text_to_image_params"][where] = value
    elif where == "metadata":
        body["metadata"] = {"v": value}
    elif where == "webhook_url":
        body["webhook_url"] = value
    elif where == "extra":
        body["input"]["image_to_video_params"]["content"].append(value)
    else:
        body = value
    status, data = create(_dump(body))
    assert status < 500, (status, data)
    if status >= 400:
        assert data["error"]["code"]


@HOSTILE
@given(raw=st.binary(max_size=200))
def test_arbitrary_bytes_as_a_body_are_never_a_5xx(engine: LocalEngine, raw: bytes) -> None:
    status, data = create(raw)
    assert 400 <= status < 500, (status, data)


@HOSTILE
@given(run_id=st.text(alphabet=st.characters(codec=None, exclude_characters="/"), min_size=1, max_size=60))
def test_hostile_run_ids_are_never_a_5xx(engine: LocalEngine, run_id: str) -> None:
    for method, route in (("GET", "/api/v1/chains/get/{run_id}"), ("POST", "/api/v1/chains/cancel/{run_id}")):
        status, data = invoke(method, route, route.replace("{run_id}", run_id))
        assert status in (400, 404), (status, data)


@HOSTILE
@given(
    params=st.dictionaries(
        st.sampled_from(["limit", "status", "chain_slug", "cursor", "other"]),
        st.text(alphabet=st.characters(codec=None), max_size=60),
        max_size=4,
    )
)
def test_hostile_query_strings_are_never_a_5xx(engine: LocalEngine, params: dict[str, str]) -> None:
    query = "&".join(f"{quote(k, safe='')}={quote(v, safe='', errors='surrogatepass')}" for k, v in params.items())
    status, data = invoke("GET", "/api/v1/chains/runs", "/api/v1/chains/runs", query=query)
    assert status in (200, 400), (status, data)
