from __future__ import annotations

import json
import math
from typing import Any

import pytest

from babychain.errors import ApiError
from babychain.security.params import (
    CREDENTIAL_MESSAGE,
    PROVIDER_CONTROLLED_MESSAGE,
    check_json_bounds,
    check_step_params,
    is_credential_like_key,
    is_provider_controlled_key,
    normalise_key,
    strict_json,
)


def test_normalise_key() -> None:
    assert normalise_key("X-BabyChain-Provider-Key") == "xbabychainproviderkey"
    assert normalise_key("API_KEY") == "apikey"
    assert normalise_key("  Bearer.Token ") == "bearertoken"
    assert normalise_key("ÄpiKey") == "pikey"  # non-ASCII letters are dropped, not folded


@pytest.mark.parametrize(
    "key",
    [
        "X-BabyChain-Provider-Key",
        "x_babychain_provider_anything",
        "api_key",
        "apiKey",
        "API-KEY",
        "Authorization",
        "auth_token",
        "accessToken",
        "bearer_token",
        "dashscope_api_key",
        "secret",
        "secret_key",
        "access_key_id",
        "access_key_secret",
        "token",
        "x-api-key",
        "x-key",
        "openai_api_key",
        "aws_secret_key",
        "aliyun_access_key_secret",
        "password",
        "admin_password",
        "client_secret",
        "rsa_private_key",
        # Common token and cookie names, and spellings that only look like api_key.
        "session_token",
        "refresh_token",
        "id_token",
        "aws_secret_access_key",
        "cookie",
        "Set-Cookie",
        "proxy-authorization",
        "db_passwd",
        "gcp_credentials",
        "\u0430pi_key",  # Cyrillic a
        "\uff41\uff50\uff49\uff3f\uff4b\uff45\uff59",  # full-width api_key
        "api\u200bkey",  # a zero-width space inside
        "\u0391PI_KEY",  # Greek capital alpha
    ],
)
def test_credential_like_keys(key: str) -> None:
    assert is_credential_like_key(key)


def test_the_refusal_names_the_rule_that_matched() -> None:
    with pytest.raises(ApiError) as info:
        check_step_params({"prompt": "x", "session_token": "abc"}, "input.p")
    assert info.value.field == "input.p.session_token"
    assert info.value.message.startswith(CREDENTIAL_MESSAGE)
    assert "names ending in 'token'" in info.value.message


@pytest.mark.parametrize(
    "key",
    [
        "prompt",
        "image",
        "seed",
        "tokens",
        "max_tokens",
        "token_count",
        "secret_sauce",
        "keyframe",
        "api",
        "key",
    ],
)
def test_ordinary_keys_are_not_credentials(key: str) -> None:
    assert not is_credential_like_key(key)


@pytest.mark.parametrize(
    "key",
    [
        "callback_url",
        "callbackUrl",
        "generation_callback_url",
        "generation_model",
        "Model",
        "webhook_url",
        "webhook-secret",
    ],
)
def test_provider_controlled_keys(key: str) -> None:
    assert is_provider_controlled_key(key)


@pytest.mark.parametrize("key", ["model_name", "models", "return_last_frame", "callback", "url"])
def test_other_keys_are_not_provider_controlled(key: str) -> None:
    assert not is_provider_controlled_key(key)


def rejected(params: Any, path: str) -> ApiError:
    with pytest.raises(ApiError) as info:
        check_step_params(params, path)
    assert info.value.status == 400
    return info.value


def test_clean_params_pass() -> None:
    check_step_params(
        {"prompt": "a cat", "size": "1024x1024", "content": [{"type": "text", "text": "hi"}], "seed": 3},
        "input.text_to_image_params",
    )


def test_credential_at_top_level() -> None:
    error = rejected({"prompt": "x", "api_key": "sk-123"}, "input.text_to_image_params")
    assert (error.code, error.field) == ("invalid_chain_input", "input.text_to_image_params.api_key")
    assert error.message.startswith(CREDENTIAL_MESSAGE)


def test_credential_inside_array_of_objects() -> None:
    error = rejected({"content": [{"type": "text"}, {"type": "image", "token": "t"}]}, "input.image_to_video_params")
    assert error.field == "input.image_to_video_params.content[1].token"
    assert error.message.startswith(CREDENTIAL_MESSAGE)


def test_credential_deep_in_nested_arrays() -> None:
    error = rejected({"a": [[{"b": {"X-BabyChain-Provider-Key": "k"}}]]}, "p")
    assert error.field == "p.a[0][0].b.X-BabyChain-Provider-Key"
    assert rejected({"odd": {"my api.key": 1}}, "p").field == 'p.odd["my api.key"]'


def test_provider_controlled_key_at_top_level() -> None:
    error = rejected({"prompt": "x", "Model": "flux"}, "input.text_to_image_params")
    assert (error.code, error.message, error.field) == (
        "invalid_chain_input",
        PROVIDER_CONTROLLED_MESSAGE,
        "input.text_to_image_params.Model",
    )


def test_provider_controlled_key_nested_is_allowed() -> None:
    check_step_params({"content": [{"model": "nested is fine", "callback_url": "also fine"}]}, "p")


def test_params_must_be_an_object() -> None:
    error = rejected(["api_key"], "input.text_to_image_params")
    assert error.field == "input.text_to_image_params"


def test_cyclic_python_value_terminates() -> None:
    params: dict[str, Any] = {"items": []}
    params["items"].append(params)
    check_step_params(params, "p")


def bounds_error(value: Any, **limits: int) -> ApiError:
    with pytest.raises(ApiError) as info:
        check_json_bounds(value, "input.params", **limits)
    assert info.value.code == "invalid_request"
    assert info.value.status == 400
    return info.value


def test_bounds_accept_a_typical_value() -> None:
    check_json_bounds(
        {"prompt": "x" * 8192, "list": list(range(100)), "nested": {"a": [1.5, True, None, "s"]}}, "input"
    )


def test_array_too_long() -> None:
    error = bounds_error({"a": {"b": list(range(101))}})
    assert (error.message, error.field) == ("Array is longer than 100 items.", "input.params.a.b")


def test_too_many_keys() -> None:
    error = bounds_error({f"k{i}": i for i in range(201)})
    assert error.message == "Object has more than 200 keys."
    assert error.field == "input.params"


def test_string_too_long() -> None:
    error = bounds_error({"items": ["ok", "y" * 8193]})
    assert (error.message, error.field) == ("String is longer than 8192 characters.", "input.params.items[1]")


def test_key_too_long() -> None:
    assert "Key is longer" in bounds_error({"k" * 9000: 1}).message


def test_too_deep() -> None:
    value: Any = "leaf"
    for _ in range(12):
        value = [value]
    check_json_bounds(value, "p")  # exactly 12 levels
    error = bounds_error([value])
    assert error.message == "Value is nested deeper than 12 levels."
    assert error.field == "input.params" + "[0]" * 12


def test_very_deep_value_does_not_recurse() -> None:
    value: Any = 1
    for _ in range(100_000):
        value = {"a": value}
    assert "nested deeper" in bounds_error(value).message


def test_too_many_nodes() -> None:
    value = {f"k{i}": list(range(99)) for i in range(11)}  # 1 + 11 + 1089 nodes
    assert bounds_error(value).message == "Value has more than 1000 items in total."
    check_json_bounds({f"k{i}": list(range(99)) for i in range(9)}, "p")  # 1 + 9 + 891


@pytest.mark.parametrize("number", [math.inf, -math.inf, math.nan])
def test_non_finite_numbers(number: float) -> None:
    error = bounds_error({"scale": [1.0, number]})
    assert (error.message, error.field) == ("Numbers must be finite.", "input.params.scale[1]")


@pytest.mark.parametrize("value", [{1: "x"}, {"a": {1, 2}}, {"a": b"bytes"}, {"a": object()}])
def test_non_json_values(value: Any) -> None:
    bounds_error(value)


def test_custom_limits() -> None:
    assert bounds_error([1, 2, 3], max_array=2).message == "Array is longer than 2 items."
    assert bounds_error("abc", max_string=2).field == "input.params"


@pytest.mark.parametrize(
    "raw",
    [b"\xef\xbb\xbf{}", b"[1,2", b"  ", b'{"a":1}x', b'{"a":"\\ud800"', b"\xef\xbb\xbf"],
)
def test_strict_json_refuses_malformed_text_in_json_loads_words(raw: bytes) -> None:
    # The message a caller gets is json.loads's own (a UTF-8 BOM included, which json.loads refuses before decoding).
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(raw.decode())
    with pytest.raises(ApiError) as refused:
        strict_json(raw)
    assert refused.value.message == f"Request body is not valid JSON: {expected.value}."
    assert refused.value.code == "invalid_json"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"a":1e999}', "numbers must be finite"),
        (b'{"a":[NaN]}', "NaN is not a JSON number"),
        (b'{"a":-Infinity}', "-Infinity is not a JSON number"),
        (b'{"a":9007199254740992}', "integers must be within \u00b19007199254740991"),
    ],
)
def test_strict_json_refuses_unbounded_numbers(raw: bytes, reason: str) -> None:
    with pytest.raises(ApiError) as refused:
        strict_json(raw)
    assert refused.value.message == f"Request body is not valid JSON: {reason}."


def test_strict_json_decodes_as_json_loads() -> None:
    text = '{"b":[1,2.5,-0,{"c":null}],"a":"\\u00e9","d":true,"e":9007199254740991}'
    assert strict_json(text.encode()) == json.loads(text)
