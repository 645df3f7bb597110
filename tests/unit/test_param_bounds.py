"""Numeric params keep the bounds the providers document (reference/providers.md); where a provider documents none
(BFL's and BabySea's seeds) the engine's own bound holds every documented range."""

from __future__ import annotations

from typing import Any

import pytest

from babychain.chains.families import FAMILIES
from babychain.errors import ApiError
from babychain.security.media import UrlPolicy

POLICY = UrlPolicy()
BASE = {
    "seedance": {"content": [{"type": "text", "text": "x"}]},
    "babysea_video": {"generation_prompt": "x", "generation_duration": 3},
    "babysea_image": {"generation_prompt": "x"},
}


@pytest.mark.parametrize(
    ("family", "params", "field"),
    [
        ("flux2", {"seed": 2**64}, "seed"),
        ("flux2", {"seed": 10**100}, "seed"),
        ("flux2", {"seed": 2**31}, "seed"),
        ("flux2", {"seed": -1}, "seed"),
        ("flux2", {"width": 32}, "width"),
        ("flux2", {"width": 4112}, "width"),
        ("flux2", {"width": 1000}, "width"),  # not a multiple of 16
        ("flux2", {"width": 4096, "height": 2048}, "height"),  # over 4 MP
        ("flux2", {"safety_tolerance": 6}, "safety_tolerance"),
        ("flux2_flex", {"steps": 0}, "steps"),
        ("flux2_flex", {"steps": 51}, "steps"),
        ("flux2_flex", {"guidance": 1.4}, "guidance"),
        ("flux2_flex", {"guidance": 10.5}, "guidance"),
        ("flux_kontext", {"aspect_ratio": "22:9"}, "aspect_ratio"),
        ("flux_kontext", {"aspect_ratio": "9:22"}, "aspect_ratio"),
        ("flux_kontext", {"aspect_ratio": "0:9"}, "aspect_ratio"),
        ("flux_kontext", {"safety_tolerance": 7}, "safety_tolerance"),
        ("flux1", {"width": 1472}, "width"),
        ("flux1", {"seed": 2**53}, "seed"),
        ("seedream", {"seed": -2}, "seed"),
        ("seedream", {"seed": 2**31}, "seed"),
        ("seedream", {"size": "1000x700"}, "size"),  # under 1280x720 in total
        ("seedream", {"size": "8192x4096"}, "size"),  # over 4096x4096 in total
        ("seedream", {"size": "16384x720"}, "size"),  # wider than 16:1
        ("seedream", {"image": ["https://cdn.example/a.png"] * 15}, "image"),
        ("seedance", {"duration": 0}, "duration"),
        ("seedance", {"duration": 1}, "duration"),
        ("seedance", {"duration": 13}, "duration"),
        ("seedance", {"duration": -2}, "duration"),
        ("seedance", {"seed": 2**32}, "seed"),
        ("seedance", {"seed": -2}, "seed"),
        ("babysea_image", {"generation_seed": 2**31}, "generation_seed"),
        ("babysea_image", {"generation_output_number": 5}, "generation_output_number"),
        ("babysea_image", {"generation_ratio": "0:1"}, "generation_ratio"),
        ("babysea_image", {"generation_input_file": []}, "generation_input_file"),
        ("babysea_video", {"generation_duration": 0}, "generation_duration"),
        ("babysea_video", {"generation_duration": 16}, "generation_duration"),
    ],
)
def test_numeric_params_keep_the_documented_bounds(family: str, params: dict[str, Any], field: str) -> None:
    with pytest.raises(ApiError) as info:
        FAMILIES[family].validate({**BASE.get(family, {"prompt": "x"}), **params}, "input.p", urls=POLICY)
    assert (info.value.status, info.value.field) == (400, f"input.p.{field}")


@pytest.mark.parametrize(
    ("family", "params"),
    [
        ("flux2", {"seed": 0, "width": 2048, "height": 2048}),
        ("flux2", {"seed": 2**31 - 1, "width": 4096, "height": 1024}),
        ("flux2_flex", {"steps": 1, "guidance": 1.5}),
        ("flux2_flex", {"steps": 50, "guidance": 10}),
        ("flux_kontext", {"aspect_ratio": "21:9"}),
        ("flux_kontext", {"aspect_ratio": "9:21"}),
        ("seedream", {"seed": -1, "size": "1280x720"}),
        ("seedream", {"seed": 2147483647, "size": "4096x4096"}),
        ("seedream", {"size": "2K"}),
        ("seedance", {"duration": -1, "seed": 2**32 - 1}),
        ("seedance", {"duration": 2}),
        ("seedance", {"duration": 12}),
        ("babysea_video", {"generation_duration": 15, "generation_seed": 0}),
    ],
)
def test_documented_values_at_the_bounds_pass(family: str, params: dict[str, Any]) -> None:
    FAMILIES[family].validate({**BASE.get(family, {"prompt": "x"}), **params}, "input.p", urls=POLICY)
