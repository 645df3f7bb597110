"""Media downloads through the real engine: the local provider's fetch of an input image and the executor's copy
of a provider's output refuse SVG, HTML, bodies whose bytes contradict their label and media of the wrong kind,
failing the step with a stable code (`input_media_refused`, `output_media_refused`), never crashing it."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from PIL import Image

from babychain.local.loopback import LoopbackServer, QuietHandler
from babychain.local.media import image_to_video, text_to_image
from babychain.local.runner import LocalEngine
from tests.conftest import client_for, wait_for_run
from tests.integration.requests import chain_request
from tests.standins.bfl import BflStandIn
from tests.standins.byteplus import BytePlusStandIn

SVG = b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><rect width="9" height="9"/></svg>'
HTML = b"<!doctype html><html><body><script>document.cookie</script></body></html>"


def png(size: tuple[int, int] = (16, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (30, 140, 200)).save(buf, format="PNG")
    return buf.getvalue()


def data_uri(media_type: str, content: bytes) -> str:
    return f"data:{media_type};base64,{base64.b64encode(content).decode()}"


MEDIA: dict[str, tuple[bytes, str]] = {}


class Origin(QuietHandler):
    """A caller's or a provider's file host on loopback: each path serves fixed bytes with a fixed label."""

    def do_GET(self) -> None:
        content, label = MEDIA.get(self.path, (b"", ""))
        if not label:
            return self.send_bytes(404, b"missing", "text/plain")
        return self.send_bytes(200, content, label)


@pytest.fixture
def origin() -> Iterator[str]:
    MEDIA.clear()
    MEDIA.update(
        {
            "/cat.svg": (SVG, "image/svg+xml"),
            "/cat.html": (HTML, "text/html; charset=utf-8"),
            "/cat-html-as.png": (HTML, "image/png"),  # mislabelled: HTML bytes served as a PNG
            "/cat-svg-as.jpg": (SVG, "image/jpeg"),
            "/cat.mp4": (image_to_video(png((64, 64)), "x", seed=1, duration_seconds=1.0), "video/mp4"),
            "/cat.png": (text_to_image("a cat", seed=3, width=320, height=240), "image/png"),
        }
    )
    with LoopbackServer(Origin) as server:
        yield server.base_url


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("/cat.svg", "image/svg+xml"),
        ("/cat.html", "text/html"),
        ("/cat-html-as.png", "bytes are text/html"),
        ("/cat-svg-as.jpg", "bytes are image/svg+xml"),
        ("/cat.mp4", "video/mp4"),
    ],
)
def test_an_input_image_that_is_not_an_image_fails_the_step_with_its_code(
    make_engine: Callable[..., LocalEngine], origin: str, path: str, why: str
) -> None:
    engine = make_engine()
    with client_for(engine) as client:
        created = client.post("/api/v1/chains/chain2/runs", json=chain_request("chain2", None, origin + path))
        assert created.status_code == 202, created.text
        run = wait_for_run(client, created.json()["id"])
    assert run["status"] == "failed"
    assert [s["status"] for s in run["steps"]] == ["failed", "skipped"]
    error = run["steps"][0]["error"]
    assert error["code"] == "input_media_refused", error
    assert why in error["message"]
    assert run["error"]["code"] == "input_media_refused"


def test_real_images_by_url_and_inline_still_run(make_engine: Callable[..., LocalEngine], origin: str) -> None:
    engine = make_engine()
    inline = data_uri("image/png", png((48, 32)))
    with client_for(engine) as client:
        by_url = chain_request("chain2", None, origin + "/cat.png")
        inline_body = chain_request("chain2", None)
        inline_body["input"]["image_to_image_params"]["input_image"] = inline
        ids = [client.post("/api/v1/chains/chain2/runs", json=b).json()["id"] for b in (by_url, inline_body)]
        runs = [wait_for_run(client, run_id) for run_id in ids]
    for run in runs:
        assert run["status"] == "succeeded", run
        assert run["steps"][-1]["generation_output_file"][0].endswith(".mp4")
    assert runs[1]["steps"][0]["generation_input_file"] == [inline]


@pytest.fixture
def byok_engine(make_engine: Callable[..., LocalEngine]) -> Iterator[tuple[LocalEngine, BflStandIn, BytePlusStandIn]]:
    with BflStandIn(delay_seconds=0.1) as bfl, BytePlusStandIn(delay_seconds=0.2) as byteplus:
        engine = make_engine(
            provider_mode="byok",
            bfl_api_key=bfl.api_key,
            bfl_api_base_url=bfl.api_base,
            ark_api_key=byteplus.api_key,
            ark_api_base_url=byteplus.base_url,
        )
        yield engine, bfl, byteplus


def _run_chain1(engine: LocalEngine) -> dict[str, Any]:
    with client_for(engine) as client:
        created = client.post("/api/v1/chains/chain1/runs", json=chain_request("chain1", None))
        assert created.status_code == 202, created.text
        return wait_for_run(client, created.json()["id"])


@pytest.mark.parametrize(
    ("content", "label", "why"),
    [
        (SVG, "image/svg+xml", "served as image/svg+xml"),
        (HTML, "text/html", "served as text/html"),
        (HTML, "image/jpeg", "bytes are text/html"),  # mislabelled
        (png(), "image/jpeg", "served as image/jpeg but its bytes are image/png"),
    ],
)
def test_an_image_output_that_is_not_the_image_it_claims_fails_the_step(
    byok_engine: tuple[LocalEngine, BflStandIn, BytePlusStandIn], content: bytes, label: str, why: str
) -> None:
    engine, bfl, _ = byok_engine
    bfl.serve_next_sample(content, label)
    run = _run_chain1(engine)
    assert run["status"] == "failed"
    assert [s["status"] for s in run["steps"]] == ["failed", "skipped"]
    error = run["steps"][0]["error"]
    assert error["code"] == "output_media_refused", error
    assert why in error["message"]
    assert "generation_output_file" not in run["steps"][0]  # nothing was copied into the artifact store
    assert not list((engine.home / "artifacts").rglob("output-*"))


@pytest.mark.parametrize(
    ("content", "label", "why"),
    [
        (png(), "video/mp4", "bytes are image/png"),  # an image where the step makes a video
        (png(), "image/png", "served as image/png"),
        (HTML, "video/mp4", "bytes are text/html"),
    ],
)
def test_a_video_output_that_is_not_a_video_fails_the_step(
    byok_engine: tuple[LocalEngine, BflStandIn, BytePlusStandIn], content: bytes, label: str, why: str
) -> None:
    engine, _, byteplus = byok_engine
    byteplus.serve_next_output(content, label)
    run = _run_chain1(engine)
    assert run["status"] == "failed"
    assert [s["status"] for s in run["steps"]] == ["succeeded", "failed"]
    error = run["steps"][1]["error"]
    assert error["code"] == "output_media_refused", error
    assert why in error["message"]
