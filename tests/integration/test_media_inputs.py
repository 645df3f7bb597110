"""Media inputs through the real create handler on the real store.

Every field that carries a caller's image, on every chain and in both schema modes (BYOK-shaped, which local mode
runs, and BabySea's), answers a bad value with a 400 in the one error shape naming that field; good values (public
HTTPS URLs, inline images where the provider documents them, loopback files under the development setting) pass.
"""

from __future__ import annotations

import base64
import copy
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from babychain.local.runner import LocalEngine
from tests.conftest import FAST
from tests.integration.requests import chain_request
from tests.integration.test_hostile_input import invoke
from tests.standins.babysea import BabySeaStandIn

PUBLIC_IMAGE = "https://cdn.example/cat.png"
ANSWERS = {"cdn.example": ["93.184.216.34"], "inside.example": ["10.0.0.7"], "meta.example": ["169.254.169.254"]}


def resolver(host: str, port: int) -> list[str]:
    return list(ANSWERS.get(host, []))


def png(size: tuple[int, int] = (16, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (30, 140, 200)).save(buf, format="PNG")
    return buf.getvalue()


def data_uri(media_type: str, content: bytes) -> str:
    return f"data:{media_type};base64,{base64.b64encode(content).decode()}"


SVG = b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><rect width="9" height="9"/></svg>'
HTML = b"<!doctype html><html><body><script>document.cookie</script></body></html>"

# Refused in every media field: other schemes, scheme-relative, whitespace around, credentials, plain HTTP to a
# public host, private and metadata addresses in every spelling, names whose answers are private, over-long URLs,
# and data: URIs that are not a listed image type.
BAD_VALUES = [
    "file:///etc/passwd",
    "ftp://93.184.216.34/cat.png",
    "gopher://93.184.216.34:70/_GET",
    "//169.254.169.254/latest/meta-data/",
    " https://cdn.example/cat.png",
    "https://cdn.example/cat.png\t",
    "https://user:secret@cdn.example/cat.png",
    "http://cdn.example/cat.png",
    "https://169.254.169.254/latest/meta-data/",
    "https://[::ffff:169.254.169.254]/latest/",
    "https://2130706433/cat.png",
    "https://inside.example/cat.png",
    "https://meta.example/latest/",
    "https://cdn.example/" + "a" * 2100,
    data_uri("text/html", HTML),
    data_uri("image/svg+xml", SVG),
]
# Refused where only URLs are documented (BabySea's generation_input_file, the engine's own source_image_url).
URL_ONLY_BAD_VALUES = [data_uri("image/png", png())]


def _engine(tmp_path: Path, database_url: str, **overrides: Any) -> LocalEngine:
    # No workers and no API processes: the create handler runs in this process, as one Lambda container would.
    settings = {**FAST, "database_url": database_url, **overrides}
    return LocalEngine(tmp_path / "engine", overrides=settings, workers=False, api_workers=0, resolver=resolver)


@pytest.fixture
def local_engine(tmp_path: Path, database_url: str) -> Iterator[LocalEngine]:
    engine = _engine(tmp_path, database_url).start()
    yield engine
    engine.stop()


@pytest.fixture
def babysea_engine(tmp_path: Path, database_url: str) -> Iterator[LocalEngine]:
    with BabySeaStandIn(delay_seconds=0.2) as babysea:
        engine = _engine(
            tmp_path,
            database_url,
            provider_mode="babysea",
            babysea_api_key=babysea.api_key,
            babysea_api_base_url=babysea.base_url,
        ).start()
        yield engine
        engine.stop()


def create(slug: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    return invoke("POST", "/api/v1/chains/{slug}/runs", f"/api/v1/chains/{slug}/runs", body=json.dumps(body).encode())


def _set(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of body with `value` at a dotted path under input (`[n]` appends list items up to index n)."""
    body = copy.deepcopy(body)
    node = body["input"]
    *parents, last = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    if last.endswith("]"):
        name, index = last[:-1].split("[")
        items = node.setdefault(name, [])
        while len(items) <= int(index):
            items.append(PUBLIC_IMAGE)
        items[int(index)] = value
    else:
        node[last] = value
    return body


def _seedance_image(body: dict[str, Any], value: Any) -> dict[str, Any]:
    body = copy.deepcopy(body)
    item = {"type": "image_url", "image_url": {"url": value}, "role": "first_frame"}
    body["input"]["image_to_video_params"]["content"].append(item)
    return body


def _with_models(body: dict[str, Any], **models: str) -> dict[str, Any]:
    body = copy.deepcopy(body)
    for step, model in models.items():
        body["input"]["chain_models"][f"{step}_model"] = model
        if "seedream" in model:
            body["input"][f"{step}_params"] = {"prompt": "a kite", "size": "1280x720"}
        elif "flux-2" in model:
            body["input"][f"{step}_params"] = {"prompt": "a kite", "output_format": "png"}
    return body


def byok_cases() -> list[tuple[str, Callable[[Any], dict[str, Any]], str]]:
    """(chain, body with the value in one media field, the field the 400 must name), BYOK-shaped."""
    c1, c2, c3 = (chain_request(c, None) for c in ("chain1", "chain2", "chain3"))
    c2_flux2 = _with_models(c2, image_to_image="bfl/flux-2-pro")
    c2_seedream = _with_models(c2, image_to_image="bytedance/seedream-4.5")
    return [
        ("chain1", lambda v: _set(c1, "text_to_image_params.input_image", v), "text_to_image_params.input_image"),
        ("chain1", lambda v: _seedance_image(c1, v), "image_to_video_params.content[1].image_url.url"),
        ("chain2", lambda v: _set(c2, "source_image_url", v), "source_image_url"),
        ("chain2", lambda v: _set(c2, "image_to_image_params.input_image", v), "image_to_image_params.input_image"),
        (
            "chain2",
            lambda v: _set(c2_flux2, "image_to_image_params.input_image_3", v),
            "image_to_image_params.input_image_3",
        ),
        ("chain2", lambda v: _set(c2_seedream, "image_to_image_params.image", v), "image_to_image_params.image"),
        (
            "chain2",
            lambda v: _set(c2_seedream, "image_to_image_params.image[1]", v),
            "image_to_image_params.image[1]",
        ),
        (
            "chain2",
            lambda v: _seedance_image(_set(c2, "source_image_url", PUBLIC_IMAGE), v),
            "image_to_video_params.content[1].image_url.url",
        ),
        ("chain3", lambda v: _set(c3, "text_to_image_params.input_image", v), "text_to_image_params.input_image"),
        ("chain3", lambda v: _set(c3, "image_to_image_params.input_image", v), "image_to_image_params.input_image"),
        ("chain3", lambda v: _seedance_image(c3, v), "image_to_video_params.content[1].image_url.url"),
    ]


def babysea_body(chain: str) -> dict[str, Any]:
    steps = {
        "chain1": ["text_to_image", "image_to_video"],
        "chain2": ["image_to_image", "image_to_video"],
        "chain3": ["text_to_image", "image_to_image", "image_to_video"],
    }[chain]
    models = {
        "text_to_image": "bfl/flux-2-pro",
        "image_to_image": "bytedance/seedream-4.5",
        "image_to_video": "bytedance/seedance-1.5-pro",
    }
    body: dict[str, Any] = {"input": {"chain_models": {f"{k}_model": models[k] for k in steps}}}
    for key in steps:
        params: dict[str, Any] = {"generation_prompt": "a kite"}
        if key == "image_to_video":
            params["generation_duration"] = 3
        body["input"][f"{key}_params"] = params
    if chain == "chain2":
        body["input"]["source_image_url"] = PUBLIC_IMAGE
    return body


def babysea_cases() -> list[tuple[str, Callable[[Any], dict[str, Any]], str]]:
    cases: list[tuple[str, Callable[[Any], dict[str, Any]], str]] = []
    for chain in ("chain1", "chain2", "chain3"):
        body = babysea_body(chain)
        for step in [k.removesuffix("_params") for k in body["input"] if k.endswith("_params")]:
            field = f"{step}_params.generation_input_file[0]"
            cases.append((chain, lambda v, b=body, f=field: _set(b, f, v), field))
    cases.append(("chain2", lambda v: _set(babysea_body("chain2"), "source_image_url", v), "source_image_url"))
    return cases


def _assert_refused_naming(status: int, data: dict[str, Any], field: str, value: Any) -> None:
    assert status == 400, (value, status, data)
    error = data["error"]
    assert (error["type"], error["code"], error["field"]) == ("invalid_request_error", "invalid_chain_input", field)
    assert error["message"], error


def test_every_media_field_on_every_chain_refuses_bad_values_naming_the_field(local_engine: LocalEngine) -> None:
    for chain, body_with, field in byok_cases():
        values = BAD_VALUES + (URL_ONLY_BAD_VALUES if field == "source_image_url" else [])
        for value in values:
            status, data = create(chain, body_with(value))
            _assert_refused_naming(status, data, f"input.{field}", value)


def test_every_babysea_media_field_refuses_bad_values_and_data_uris(babysea_engine: LocalEngine) -> None:
    for chain, body_with, field in babysea_cases():
        for value in BAD_VALUES + URL_ONLY_BAD_VALUES:
            status, data = create(chain, body_with(value))
            _assert_refused_naming(status, data, f"input.{field}", value)


def test_good_media_inputs_are_accepted_and_stored_as_given(local_engine: LocalEngine) -> None:
    inline = data_uri("image/png", png())
    chain2 = chain_request("chain2", None)
    for body in (
        _set(chain2, "source_image_url", PUBLIC_IMAGE),
        _set(chain2, "image_to_image_params.input_image", inline),  # BFL documents base64 input images
        _set(_with_models(chain2, image_to_image="bytedance/seedream-4.5"), "image_to_image_params.image", [inline]),
    ):
        status, run = create("chain2", body)
        assert status == 202, run
        assert run["input"] == body["input"]  # kept as given
    status, run = create("chain2", _set(chain2, "source_image_url", "http://127.0.0.1:9/files/cat.png"))
    assert status == 202, run  # the development setting keeps loopback files usable


def test_babysea_media_urls_are_accepted(babysea_engine: LocalEngine) -> None:
    status, run = create("chain2", babysea_body("chain2"))
    assert status == 202, run
    assert run["input"]["source_image_url"] == PUBLIC_IMAGE
