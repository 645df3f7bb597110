"""The real adapters, over real HTTP, against stand-ins that speak BFL's, BytePlus's and BabySea's protocols."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from babychain.local.media import text_to_image
from babychain.local.runner import LocalEngine
from tests.conftest import client_for, wait_for_run
from tests.integration.requests import chain_request
from tests.standins.babysea import BabySeaStandIn
from tests.standins.bfl import BflStandIn
from tests.standins.byteplus import BytePlusStandIn

BFL_WEBHOOK_SECRET = "bfl-webhook-secret-for-tests"
BABYSEA_WEBHOOK_SECRET = "whsec_babysea_test_secret"
PROMPTS = {
    "text_to_image": "a lighthouse at dawn",
    "image_to_image": "as an oil painting",
    "image_to_video": "slow push-in",
}


@dataclass
class StandIns:
    bfl: BflStandIn
    byteplus: BytePlusStandIn
    babysea: BabySeaStandIn


@pytest.fixture
def stand_ins() -> Iterator[StandIns]:
    bfl = BflStandIn(delay_seconds=0.2).start()
    byteplus = BytePlusStandIn(delay_seconds=0.3).start()
    babysea = BabySeaStandIn(delay_seconds=0.2, webhook_secret=BABYSEA_WEBHOOK_SECRET).start()
    yield StandIns(bfl, byteplus, babysea)
    for server in (bfl, byteplus, babysea):
        server.stop()


def _provider_settings(s: StandIns) -> dict[str, Any]:
    return {
        "bfl_api_key": s.bfl.api_key,
        "bfl_api_base_url": s.bfl.api_base,
        "bfl_webhook_secret": BFL_WEBHOOK_SECRET,
        "ark_api_key": s.byteplus.api_key,
        "ark_api_base_url": s.byteplus.base_url,
        "babysea_api_key": s.babysea.api_key,
        "babysea_api_base_url": s.babysea.base_url,
        "babysea_webhook_secret": BABYSEA_WEBHOOK_SECRET,
    }


@pytest.fixture
def engine_for(make_engine: Callable[..., LocalEngine], stand_ins: StandIns) -> Callable[..., LocalEngine]:
    def make(mode: str, **overrides: Any) -> LocalEngine:
        engine = make_engine(provider_mode=mode, **{**_provider_settings(stand_ins), **overrides})
        # BabySea's webhook endpoint is account-level: set once, like in its dashboard.
        stand_ins.babysea.webhook_url = engine.base_url + "/api/v1/webhooks/babysea"
        return engine

    return make


def babysea_request(chain: str, source: str | None = None) -> dict[str, Any]:
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
        params: dict[str, Any] = {"generation_prompt": PROMPTS[key]}
        if key == "image_to_video":
            params["generation_duration"] = 3
        body["input"][f"{key}_params"] = params
    if source:
        body["input"]["source_image_url"] = source
    return body


def seedream_request(chain: str) -> dict[str, Any]:
    body = chain_request(chain, None)
    for key, model in (("text_to_image", "bytedance/seedream-4.5"), ("image_to_image", "bytedance/seedream-4")):
        if f"{key}_params" in body["input"]:
            body["input"]["chain_models"][f"{key}_model"] = model
            body["input"][f"{key}_params"] = {"prompt": PROMPTS[key], "size": "1280x720", "seed": 11}
    return body


def _source(engine: LocalEngine) -> str:
    return engine.artifacts.put("inputs/source.png", text_to_image("kite", seed=3, width=320, height=240), "image/png")


def _run_chain1(engine: LocalEngine) -> dict[str, Any]:
    """Creates the BYOK-shaped chain1 request and waits for the run to end."""
    with client_for(engine) as client:
        run_id = client.post("/api/v1/chains/chain1/runs", json=chain_request("chain1", None)).json()["id"]
        return wait_for_run(client, run_id)


def _assert_chain_succeeded(run: dict[str, Any], engine: LocalEngine) -> None:
    assert run["status"] == "succeeded", json.dumps(run, indent=1)[:3000]
    steps = run["steps"]
    for previous, step in itertools.pairwise(steps):
        assert step["generation_input_file"] == previous["generation_output_file"]
    for step in steps:
        # Every output handed on is the engine's durable copy, never the provider's expiring URL.
        (url,) = step["generation_output_file"]
        assert url.startswith(engine.base_url + "/files/runs/")
        assert httpx.get(url).status_code == 200
    assert steps[-1]["generation_output_file"][0].endswith(".mp4")


@pytest.mark.parametrize("chain", ["chain1", "chain2", "chain3"])
def test_each_chain_in_byok_mode(chain: str, engine_for: Callable[..., LocalEngine], stand_ins: StandIns) -> None:
    engine = engine_for("byok")
    source = _source(engine) if chain == "chain2" else None
    with client_for(engine) as client:
        created = client.post(f"/api/v1/chains/{chain}/runs", json=chain_request(chain, None, source))
        assert created.status_code == 202, created.text
        run = wait_for_run(client, created.json()["id"])
    _assert_chain_succeeded(run, engine)
    assert {s["provider"] for s in run["steps"]} == {"bfl", "byteplus"}
    assert run["mode"] == "byok"
    assert run["estimate"]["currency"] == "USD" and run["estimate"]["total"] > 0
    # The BFL submit carried the handoff as input_image, the Seedance task as a first_frame item.
    tasks = stand_ins.byteplus.requests_for("POST", "/api/v3/contents/generations/tasks")
    # One provider submit per attempt (a loaded machine can turn a first attempt into a transient network error).
    assert len(tasks) == run["steps"][-1]["attempt"], json.dumps(
        [run["steps"][-1].get("attempts"), [(t["headers"].get("x-idempotency-key"), t.get("time")) for t in tasks]]
    )
    task = tasks[-1]
    image_items = [c for c in task["json"]["content"] if c["type"] == "image_url"]
    assert image_items == [
        {
            "type": "image_url",
            "image_url": {"url": run["steps"][-2]["generation_output_file"][0]},
            "role": "first_frame",
        }
    ]


def test_seedream_and_seedance_chain_in_byok_mode(engine_for: Callable[..., LocalEngine], stand_ins: StandIns) -> None:
    engine = engine_for("byok")
    with client_for(engine) as client:
        run = wait_for_run(
            client, client.post("/api/v1/chains/chain3/runs", json=seedream_request("chain3")).json()["id"]
        )
    _assert_chain_succeeded(run, engine)
    assert [s["provider"] for s in run["steps"]] == ["byteplus"] * 3
    edits = stand_ins.byteplus.requests_for("POST", "/api/v3/images/generations")
    assert edits[1]["json"]["image"] == run["steps"][0]["generation_output_file"][0]


@pytest.mark.parametrize("chain", ["chain1", "chain2", "chain3"])
def test_each_chain_in_babysea_mode(chain: str, engine_for: Callable[..., LocalEngine], stand_ins: StandIns) -> None:
    engine = engine_for("babysea")
    source = _source(engine) if chain == "chain2" else None
    with client_for(engine) as client:
        created = client.post(f"/api/v1/chains/{chain}/runs", json=babysea_request(chain, source))
        assert created.status_code == 202, created.text
        run = wait_for_run(client, created.json()["id"])
    _assert_chain_succeeded(run, engine)
    assert {s["provider"] for s in run["steps"]} == {"babysea"}
    assert all(s.get("provider_used") for s in run["steps"])
    assert run["estimate"]["steps"][0]["basis"] != "unavailable"
    generates = stand_ins.babysea.requests_to("POST", "/v1/generate/")
    assert len(generates) == len(run["steps"])
    assert all(r.headers.get("idempotency-key") for r in generates)
    assert generates[1].json["generation_input_file"] == run["steps"][0]["generation_output_file"]


def test_webhooks_advance_steps_without_waiting_for_a_poll(
    engine_for: Callable[..., LocalEngine], stand_ins: StandIns
) -> None:
    # Polls every 60 s: the run can only finish within the wait below if webhooks advance it.
    engine = engine_for("byok", poll_interval_seconds=60.0)
    with client_for(engine) as client:
        run_id = client.post("/api/v1/chains/chain1/runs", json=chain_request("chain1", None)).json()["id"]
        run = wait_for_run(client, run_id, timeout=20)
    _assert_chain_succeeded(run, engine)
    assert stand_ins.bfl.webhook_deliveries and stand_ins.byteplus.callbacks


def test_babysea_webhooks_advance_and_duplicates_have_no_second_effect(
    engine_for: Callable[..., LocalEngine], stand_ins: StandIns
) -> None:
    stand_ins.babysea.duplicate_webhooks = True
    engine = engine_for("babysea", poll_interval_seconds=60.0)
    with client_for(engine) as client:
        run_id = client.post("/api/v1/chains/chain1/runs", json=babysea_request("chain1")).json()["id"]
        run = wait_for_run(client, run_id, timeout=20)
    _assert_chain_succeeded(run, engine)
    answers = [a.status for a in stand_ins.babysea.webhook_attempts]
    assert answers and all(status == 200 for status in answers)
    assert len(stand_ins.babysea.requests_to("POST", "/v1/generate/")) == 2


def _signed_babysea(body: bytes, secret: str = BABYSEA_WEBHOOK_SECRET, delivery: str = "d-1") -> dict[str, str]:
    t = str(int(time.time()))
    v1 = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return {
        "X-BabySea-Signature": f"t={t},v1={v1}",
        "X-BabySea-Delivery-Id": delivery,
        "X-BabySea-Event": "generation.completed",
        "Content-Type": "application/json",
    }


def test_webhook_with_a_bad_signature_is_rejected_and_changes_nothing(
    engine_for: Callable[..., LocalEngine], stand_ins: StandIns
) -> None:
    stand_ins.babysea.hold = True
    engine = engine_for("babysea", poll_interval_seconds=60.0)
    with client_for(engine) as client:
        run_id = client.post("/api/v1/chains/chain1/runs", json=babysea_request("chain1")).json()["id"]
        deadline = time.monotonic() + 10
        while (
            "job_id"
            not in ((step := client.get(f"/api/v1/chains/get/{run_id}").json()["steps"][0]).get("attempts") or [{}])[-1]
        ):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        job_id = step["attempts"][-1]["job_id"]
        body = json.dumps(
            {
                "webhook_event": "generation.completed",
                "webhook_timestamp": "2026-11-21T05:00:00Z",
                "webhook_delivery_id": "d-1",
                "webhook_data": {"generation_id": job_id, "generation_status": "succeeded"},
            }
        ).encode()
        forged = _signed_babysea(body, secret="whsec_wrong")
        answer = httpx.post(engine.base_url + "/api/v1/webhooks/babysea", content=body, headers=forged)
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_webhook_signature"
        # A per-step route with a wrong token is refused too.
        step_id = step["id"]
        wrong = httpx.post(f"{engine.base_url}/api/v1/webhooks/bfl/{step_id}/{'0' * 40}", content=b"{}")
        assert wrong.status_code == 401
        after = client.get(f"/api/v1/chains/get/{run_id}").json()["steps"][0]
        assert (after["status"], after["updated_at"]) == (step["status"], step["updated_at"])
        # A correctly signed delivery is accepted once; the same delivery again is a duplicate.
        good = _signed_babysea(body)
        first = httpx.post(engine.base_url + "/api/v1/webhooks/babysea", content=body, headers=good)
        again = httpx.post(engine.base_url + "/api/v1/webhooks/babysea", content=body, headers=good)
    assert first.json()["status"] == "advanced"
    assert again.json()["status"] == "duplicate"


def test_moderation_fails_the_step_with_a_clear_code(
    engine_for: Callable[..., LocalEngine], stand_ins: StandIns
) -> None:
    stand_ins.bfl.moderate_next("Content Moderated")
    engine = engine_for("byok")
    run = _run_chain1(engine)
    assert run["status"] == "failed"
    assert run["steps"][0]["error"]["code"] == "provider_content_moderated"
    assert [s["status"] for s in run["steps"]] == ["failed", "skipped"]


def test_insufficient_credits_fail_at_once_without_retry(
    engine_for: Callable[..., LocalEngine], stand_ins: StandIns
) -> None:
    stand_ins.bfl.fail_next_submit(402, times=5)
    engine = engine_for("byok")
    run = _run_chain1(engine)
    assert run["status"] == "failed"
    assert run["steps"][0]["error"]["code"] == "provider_quota_exceeded"
    assert len(stand_ins.bfl.submits()) == 1


def test_an_expired_bfl_result_url_never_reaches_the_next_step(make_engine: Callable[..., LocalEngine]) -> None:
    bfl = BflStandIn(delay_seconds=0.1, sample_ttl_seconds=1.0).start()
    byteplus = BytePlusStandIn(delay_seconds=0.2).start()
    try:
        engine = make_engine(
            provider_mode="byok",
            bfl_api_key=bfl.api_key,
            bfl_api_base_url=bfl.api_base,
            ark_api_key=byteplus.api_key,
            ark_api_base_url=byteplus.base_url,
        )
        run = _run_chain1(engine)
        _assert_chain_succeeded(run, engine)
        time.sleep(1.2)
        job = next(iter(bfl.jobs.values()))
        assert job.result is not None
        sample = job.result["sample"]
        durable = run["steps"][0]["generation_output_file"][0]
        assert run["steps"][1]["generation_input_file"] == [durable]
        task = byteplus.requests_for("POST", "/api/v3/contents/generations/tasks")[0]["json"]
        assert bfl.base_url not in json.dumps(task)
        assert sample not in json.dumps(task)
        assert httpx.get(sample).status_code in (403, 404, 410)  # BFL's URL has expired by now
        assert httpx.get(durable).status_code == 200
    finally:
        bfl.stop()
        byteplus.stop()


def test_transient_exhaustion_fails_over_to_the_next_route(
    engine_for: Callable[..., LocalEngine], stand_ins: StandIns
) -> None:
    stand_ins.byteplus.fail_next_submit(503, times=2)  # BytePlus's whole budget for the first step
    engine = engine_for("byok", max_submit_attempts=2, model_routes={"bytedance/seedream-4.5": ["byteplus", "babysea"]})
    body = seedream_request("chain1")
    with client_for(engine) as client:
        run = wait_for_run(client, client.post("/api/v1/chains/chain1/runs", json=body).json()["id"])
    first = run["steps"][0]
    assert run["status"] == "succeeded", json.dumps(run, indent=1)[:4000]
    assert first["provider"] == "babysea"
    assert [(a["provider"], a.get("error_code")) for a in first["attempts"]] == [
        ("byteplus", "provider_unavailable"),
        ("byteplus", "provider_unavailable"),
        ("babysea", None),
    ]
    generate = stand_ins.babysea.requests_to("POST", "/v1/generate/image/bytedance/seedream-4.5")
    assert generate and generate[0].json["generation_prompt"] == PROMPTS["text_to_image"]


def test_cancel_says_when_a_running_seedance_task_cannot_be_stopped(
    engine_for: Callable[..., LocalEngine], stand_ins: StandIns
) -> None:
    stand_ins.byteplus.delay_seconds = 5.0
    engine = engine_for("byok")
    with client_for(engine) as client:
        run_id = client.post("/api/v1/chains/chain1/runs", json=chain_request("chain1", None)).json()["id"]
        deadline = time.monotonic() + 15
        # Wait until the Seedance task has left the queue and is running at the provider.
        while not any(t["status"] == "running" for t in list(stand_ins.byteplus.tasks.values())):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        canceled = client.post(f"/api/v1/chains/cancel/{run_id}").json()
    assert canceled["status"] == "canceled"
    assert canceled["steps"][1]["status"] == "canceled"
    assert canceled["steps"][1]["provider_cancel"] == "not_possible"


def test_byok_mode_without_the_models_key_is_refused_at_create(
    make_engine: Callable[..., LocalEngine], stand_ins: StandIns
) -> None:
    engine = make_engine(
        provider_mode="byok", ark_api_key=stand_ins.byteplus.api_key, ark_api_base_url=stand_ins.byteplus.base_url
    )
    with client_for(engine) as client:
        answer = client.post("/api/v1/chains/chain1/runs", json=chain_request("chain1", None))
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "byok_credentials_missing"
    assert answer.json()["error"]["field"] == "input.chain_models.text_to_image_model"
