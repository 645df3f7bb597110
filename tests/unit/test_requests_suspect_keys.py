"""`plan_run` walks a step's params for credential-like and provider-controlled keys only when some key in `input`
is one (`has_suspect_key` over the keys the bounds walk collected): a request answers the same with and without that
shortcut, wherever such a key is put, and the first error is the one the full walks give."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from babychain.chains import requests
from babychain.chains.templates import find_template
from babychain.errors import ApiError
from babychain.local.cli import demo_request
from babychain.security.params import has_suspect_key

KEYS = ["api_key", "Authorization", "x-babychain-provider-key", "model", "callback_url", "session_token", "apí_key"]
KEYS += ["max_tokens", "secret_sauce", "prompt_extra", "k" * 70 + "_token", "k" * 70]
PLACES = [
    ("text_to_image_params",),
    ("image_to_image_params",),
    ("image_to_video_params",),
    ("image_to_video_params", "content", 0),
    ("chain_models",),
    (),
]


def _answer(body: dict[str, Any]) -> Any:
    try:
        plan = requests.plan_run(
            find_template("chain3"),  # type: ignore[arg-type]
            body,
            mode="local",
            resolver=lambda host: [],
            allow_loopback_http=True,
        )
    except ApiError as exc:
        return (exc.status, exc.code, exc.message, exc.field)
    return [step.params for step in plan.steps], plan.request_hash


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("place", PLACES)
def test_the_same_answer_with_and_without_the_shortcut(
    key: str, place: tuple[Any, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    body = demo_request("chain3", "")
    del body["webhook_url"]
    target: Any = body["input"]
    for part in place:
        target = target[part]
    target[key] = "x"
    answer = _answer(copy.deepcopy(body))
    monkeypatch.setattr(requests, "has_suspect_key", lambda keys: True)  # always walk, as before
    assert _answer(copy.deepcopy(body)) == answer


def test_the_shortcut_is_taken_for_a_clean_request(monkeypatch: pytest.MonkeyPatch) -> None:
    walked: list[str] = []
    real = requests.check_step_params
    monkeypatch.setattr(requests, "check_step_params", lambda params, path: walked.append(path) or real(params, path))
    body = demo_request("chain3", "")
    del body["webhook_url"]
    assert isinstance(_answer(body), tuple)
    assert walked == []
    body["input"]["image_to_video_params"]["content"][0]["token"] = "x"
    assert _answer(body)[3] == "input.image_to_video_params.content[0].token"
    assert walked == ["input.text_to_image_params", "input.image_to_image_params", "input.image_to_video_params"]


@pytest.mark.parametrize(
    ("keys", "suspect"),
    [
        ({"prompt", "seed"}, False),
        ({"prompt", "API-Key"}, True),
        ({"Model"}, True),
        ({"x" * 80 + "password"}, True),
        ({"x" * 80}, False),
        (set(), False),
    ],
)
def test_has_suspect_key(keys: set[str], suspect: bool) -> None:
    assert has_suspect_key(keys) is suspect
