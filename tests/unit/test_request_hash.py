"""The create request's hash and size limits (chains.requests.plan_run).

The hash is stored with each run and compared when an Idempotency-Key comes back, so runs created by any earlier
version must still match: the hashes below were computed by the code before the sizes and the hash shared one
canonical encoding (main f0fa8aa), and `_old_hash` is that code's definition."""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from babychain.chains.requests import MAX_INPUT_BYTES, MAX_METADATA_BYTES, plan_run, request_hash
from babychain.chains.templates import find_template
from babychain.errors import ApiError


def public(host: str, port: int) -> list[str]:
    return ["93.184.216.34"]


def _old_hash(slug: str, body: dict[str, Any]) -> str:
    canonical = json.dumps({"chain": slug, "body": body}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _old_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":")).encode())


def plan(slug: str, body: dict[str, Any]) -> Any:
    template = find_template(slug)
    assert template is not None
    return plan_run(template, body, mode="byok", resolver=public, allow_loopback_http=False)


CHAIN1 = {
    "input": {
        "chain_models": {
            "text_to_image_model": "bfl/flux-2-flex",
            "image_to_video_model": "bytedance/seedance-1.5-pro",
        },
        "text_to_image_params": {
            "prompt": "a blue sky over a wheat field",
            "width": 1024,
            "height": 1024,
            "prompt_upsampling": False,
            "seed": 593,
            "safety_tolerance": 5,
            "output_format": "jpeg",
        },
        "image_to_video_params": {
            "content": [{"type": "text", "text": "clouds drift"}],
            "ratio": "1:1",
            "duration": 3,
            "watermark": False,
        },
    },
    "webhook_url": "https://your-webhook.example.com",
}
CHAIN3 = {
    "input": {
        "chain_models": {
            "text_to_image_model": "bfl/flux-2-flex",
            "image_to_image_model": "bfl/flux-kontext-pro",
            "image_to_video_model": "bytedance/seedance-1.5-pro",
        },
        "text_to_image_params": {
            "prompt": "a lighthouse on a cliff at dawn, soft pastel sky",
            "width": 1024,
            "height": 768,
            "prompt_upsampling": False,
            "seed": 593,
            "safety_tolerance": 5,
            "output_format": "jpeg",
        },
        "image_to_image_params": {
            "prompt": "the same scene as a vivid oil painting",
            "seed": 7,
            "output_format": "png",
        },
        "image_to_video_params": {
            "content": [{"type": "text", "text": "slow push-in on the lighthouse as the light turns"}],
            "ratio": "16:9",
            "duration": 3,
            "watermark": False,
        },
    },
    "metadata": {"order": "\u00e4-42", "tags": ["b", "a"], "n": 1.5},
}
CHAIN2 = {
    "input": {
        "chain_models": {
            "image_to_image_model": "bfl/flux-kontext-pro",
            "image_to_video_model": "bytedance/seedance-1.5-pro",
        },
        "image_to_image_params": {
            "prompt": "the same scene as a vivid oil painting",
            "seed": 7,
            "output_format": "png",
        },
        "image_to_video_params": {
            "content": [{"type": "text", "text": "slow push-in on the lighthouse as the light turns"}],
            "ratio": "16:9",
            "duration": 3,
            "watermark": False,
        },
        "source_image_url": "https://example.com/cat.png",
    },
    "metadata": None,
    "webhook_url": None,
}


@pytest.mark.parametrize(
    ("slug", "body", "stored"),
    [
        ("chain1", CHAIN1, "d2257f1af63719bec04c1e64dbc10cd1967f3e46f747826552ce7f2463e41359"),
        ("chain303", CHAIN3, "50217ff19422d3d48735c6ab870be0076025fb1d5fc1fd423eacd86ada1a1814"),
        ("chain2", CHAIN2, "4d322b3204b973d7306fc4175c6282d9f69f93e214d19c703e810655217de4d6"),
    ],
)
def test_the_hash_of_runs_created_before_still_matches(slug: str, body: dict[str, Any], stored: str) -> None:
    assert plan(slug, copy.deepcopy(body)).request_hash == stored
    assert request_hash(find_template(slug).slug, body) == stored  # type: ignore[union-attr]


def _reordered(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _reordered(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reordered(v) for v in value]
    return value


def test_key_order_does_not_change_the_hash() -> None:
    assert plan("chain3", _reordered(copy.deepcopy(CHAIN3))).request_hash == plan("chain3", CHAIN3).request_hash


@pytest.mark.parametrize(
    ("metadata", "webhook_url"),
    list(
        itertools.product(
            ["absent", None, {}, {"a": 1}, {"z": [1, {"y": "\u2603"}], "a": None}],
            ["absent", None, "", "https://hooks.example.com/x?a=1"],
        )
    ),
)
def test_the_hash_is_the_canonical_body_whatever_metadata_and_webhook_url(metadata: Any, webhook_url: Any) -> None:
    body: dict[str, Any] = {"input": copy.deepcopy(CHAIN3["input"])}
    if metadata != "absent":
        body["metadata"] = metadata
    if webhook_url != "absent":
        body["webhook_url"] = webhook_url
    for ordered in (body, dict(reversed(list(body.items())))):
        assert plan("chain3", ordered).request_hash == _old_hash("chain3", ordered)


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(metadata=st.dictionaries(st.text(min_size=1, max_size=8).filter(lambda k: "key" not in k.lower()), _JSON))
def test_any_metadata_hashes_as_before(metadata: dict[str, Any]) -> None:
    body = {"input": copy.deepcopy(CHAIN3["input"]), "metadata": metadata}
    try:
        got = plan("chain3", body).request_hash
    except ApiError:
        return  # refused (a credential-like key, out of bounds): no run, no hash
    assert got == _old_hash("chain3", body)


def _padded(field: str, size: int) -> dict[str, Any]:
    """A chain3 body whose `field` (input or metadata) is exactly `size` bytes of compact JSON, with non-ASCII text
    (escaped, as the size counts it)."""
    body: dict[str, Any] = {"input": copy.deepcopy(CHAIN3["input"]), "metadata": {"note": ""}}
    target = body[field]
    target.setdefault("note", "")
    pad = size - _old_size(target)
    target["note"] = "\u00e9" * (pad // 6) + "x" * (pad % 6)  # each é is \u00e9: six bytes
    assert _old_size(target) == size
    return body


@pytest.mark.parametrize(("field", "limit"), [("metadata", MAX_METADATA_BYTES)])
def test_the_size_limits_count_bytes_as_before(field: str, limit: int) -> None:
    plan("chain3", _padded(field, limit))
    with pytest.raises(ApiError) as refused:
        plan("chain3", _padded(field, limit + 1))
    assert refused.value.body()["error"]["field"] == field


def test_the_input_limit_counts_bytes_as_before() -> None:
    # Unknown input fields are refused after the size check: at the limit the error is the unknown field's.
    with pytest.raises(ApiError) as at_limit:
        plan("chain3", _padded("input", MAX_INPUT_BYTES))
    assert at_limit.value.body()["error"]["field"] == "input.note"
    with pytest.raises(ApiError) as over:
        plan("chain3", _padded("input", MAX_INPUT_BYTES + 1))
    assert over.value.body()["error"]["field"] == "input"
    assert "larger than" in over.value.body()["error"]["message"]
