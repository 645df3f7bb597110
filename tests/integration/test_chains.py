"""All three chains, end to end through the real handlers, queues, Postgres and the local provider over HTTP."""

from __future__ import annotations

import io
import itertools
import uuid
from typing import Any

import av
import httpx
import pytest
from PIL import Image
from standardwebhooks.webhooks import Webhook

from babychain.local.media import text_to_image
from babychain.local.receiver import WebhookReceiver
from babychain.local.runner import LocalEngine
from tests.conftest import CALLBACK_SECRET, wait_for_run
from tests.integration.requests import SEED_CHAIN1, chain_request


def _fetch(url: str) -> bytes:
    response = httpx.get(url, timeout=10)
    response.raise_for_status()
    return response.content


def _assert_image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.width >= 64 and image.height >= 64
    return image


def _assert_video(data: bytes) -> None:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = [f.to_image().convert("L").tobytes() for f in container.decode(stream)]
    assert stream.codec_context.name == "h264"
    assert len(frames) >= 24  # three seconds of motion
    assert frames[0] != frames[-1]


@pytest.mark.parametrize("chain", ["chain1", "chain2", "chain3"])
def test_chain_runs_to_success_with_handoff_and_signed_callback(
    chain: str, engine: LocalEngine, client: httpx.Client, receiver: WebhookReceiver
) -> None:
    source = None
    if chain == "chain2":
        source = engine.artifacts.put(
            "inputs/source.png", text_to_image("kite", seed=3, width=320, height=240), "image/png"
        )
    response = client.post(f"/api/v1/chains/{chain}/runs", json=chain_request(chain, receiver.url, source))
    assert response.status_code == 202, response.text
    run = wait_for_run(client, response.json()["id"])

    assert run["status"] == "succeeded", run
    assert run["current_step_key"] == "completed"
    steps = run["steps"]
    assert [s["status"] for s in steps] == ["succeeded"] * len(steps)
    for previous, step in itertools.pairwise(steps):
        assert step["generation_input_file"] == previous["generation_output_file"]
        assert step["started_at"] >= previous["completed_at"]
    if chain == "chain2":
        assert steps[0]["generation_input_file"] == [source]
    for step in steps[:-1]:
        _assert_image(_fetch(step["generation_output_file"][0]))
    _assert_video(_fetch(steps[-1]["generation_output_file"][0]))
    assert run["output"]["output_files"] == steps[-1]["generation_output_file"]

    deliveries = receiver.wait_for(1, timeout=10)
    assert len(deliveries) == 1
    delivery = deliveries[0]
    # An independent Standard Webhooks implementation accepts the signature.
    payload: dict[str, Any] = Webhook(CALLBACK_SECRET).verify(delivery.body, delivery.headers)
    assert payload["type"] == "chain_run.succeeded"
    assert payload["data"]["id"] == run["id"]
    assert delivery.headers["webhook-id"] == f"evt_{run['id']}"
    final = client.get(f"/api/v1/chains/get/{run['id']}").json()
    assert final["callback"]["status"] == "delivered" and final["callback"]["attempts"] == 1


def test_seed_chain1_request_gets_the_seed_resource_shape(
    engine: LocalEngine, client: httpx.Client, receiver: WebhookReceiver
) -> None:
    body = {**SEED_CHAIN1, "webhook_url": receiver.url}
    response = client.post(
        "/api/v1/chains/chain1/runs", json=body, headers={"Idempotency-Key": f"sky-blue-{uuid.uuid4()}"}
    )
    assert response.status_code == 202
    created = response.json()
    for field in (
        "id",
        "object",
        "chain_slug",
        "chain_version",
        "mode",
        "status",
        "input",
        "created_at",
        "updated_at",
        "current_step_key",
        "steps",
    ):
        assert field in created
    assert created["object"] == "chain_run"
    assert created["chain_slug"] == "chain1"
    assert created["chain_version"] == "2026-05-23"
    assert created["mode"] == "local"
    assert created["status"] == "queued"
    assert created["current_step_key"] == "processing"
    assert created["input"] == SEED_CHAIN1["input"]
    first, second = created["steps"]
    assert (first["step_key"], first["step_kind"], first["depends_on"], first["status"]) == (
        "text_to_image",
        "image",
        [],
        "queued",
    )
    assert (second["step_key"], second["step_kind"], second["depends_on"], second["status"]) == (
        "image_to_video",
        "video",
        ["text_to_image"],
        "queued",
    )
    for step in created["steps"]:
        for field in ("id", "step_index", "model_identifier", "started_at", "completed_at"):
            assert field in step
    assert first["model_identifier"] == "bfl/flux-2-flex"

    run = wait_for_run(client, created["id"])
    assert run["status"] == "succeeded"
    assert run["current_step_key"] == "completed"
    first, second = run["steps"]
    assert first["started_at"] and first["completed_at"] and second["started_at"] and second["completed_at"]
    assert len(first["generation_output_file"]) == 1
    assert second["generation_input_file"] == first["generation_output_file"]
    assert second["generation_output_file"][0].endswith(".mp4")
    assert _assert_image(_fetch(first["generation_output_file"][0])).format == "JPEG"


def test_alias_slug_creates_the_canonical_chain(client: httpx.Client) -> None:
    response = client.post("/api/v1/chains/chain303/runs", json=chain_request("chain3", None))
    assert response.status_code == 202
    assert response.json()["chain_slug"] == "chain3"
    assert [s["step_key"] for s in response.json()["steps"]] == ["text_to_image", "image_to_image", "image_to_video"]
