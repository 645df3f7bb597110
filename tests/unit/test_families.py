"""`Family.inject_input`: the producer's output in the family's input field, and the step's own params untouched."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from babychain.chains.families import FAMILIES

URL = "https://artifacts.example.com/runs/r/text_to_image/output-0.jpg"
PARAMS: dict[str, dict[str, Any]] = {
    "flux2": {"prompt": "a lighthouse", "width": 1024, "height": 768, "seed": 7, "extra": {"nested": [1, {"a": 2}]}},
    "flux_kontext": {"prompt": "make it night", "output_format": "png", "input_image": None},
    "seedream": {"prompt": "a lighthouse", "size": "1024x768", "image": "https://old.example.com/a.png"},
    "seedance": {
        "content": [
            {"type": "text", "text": "waves"},
            {"type": "image_url", "image_url": {"url": "https://x.example/a.png"}},
        ],
        "ratio": "16:9",
        "duration": 3,
    },
    "babysea_image": {"generation_prompt": "a lighthouse", "generation_input_file": ["https://old.example.com/a"]},
    "babysea_video": {"generation_prompt": "waves", "generation_duration": 5},
}
EXPECTED_INPUT = {
    "flux2": ("input_image", URL),
    "flux_kontext": ("input_image", URL),
    "seedream": ("image", URL),
    "babysea_image": ("generation_input_file", [URL]),
    "babysea_video": ("generation_input_file", [URL]),
}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_the_url_goes_in_the_input_field_and_params_stay_as_they_were(name: str) -> None:
    family = FAMILIES[name]
    params = PARAMS[name]
    before = copy.deepcopy(params)
    out = family.inject_input(params, URL)
    assert params == before  # the step's own params are not changed
    assert out is not params
    if name == "seedance":
        assert out["content"] == [
            *before["content"],
            {"type": "image_url", "image_url": {"url": URL}, "role": "first_frame"},
        ]
        assert out["content"] is not params["content"]
    else:
        field, value = EXPECTED_INPUT[name]
        assert out[field] == value
    assert {k: v for k, v in out.items() if k != family.input_field} == {
        k: v for k, v in before.items() if k != family.input_field
    }
    assert URL in family.input_urls(out)
