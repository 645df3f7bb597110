"""Failure, cancel and retry: failed steps skip the rest, cancel wins over late results, transient errors retry."""

from __future__ import annotations

import time
from collections.abc import Callable

from babychain.local.receiver import WebhookReceiver
from babychain.local.runner import LocalEngine
from tests.conftest import client_for, wait_for_run, wait_until
from tests.integration.requests import chain_request


def test_failing_step_fails_run_skips_later_steps_and_sends_failure_callback(
    make_engine: Callable[..., LocalEngine], receiver: WebhookReceiver
) -> None:
    engine = make_engine(local_provider_fail=("image_to_image",))
    with client_for(engine) as client:
        run_id = client.post("/api/v1/chains/chain3/runs", json=chain_request("chain3", receiver.url)).json()["id"]
        run = wait_for_run(client, run_id)
    assert run["status"] == "failed"
    assert run["current_step_key"] == "failed"
    assert [s["status"] for s in run["steps"]] == ["succeeded", "failed", "skipped"]
    assert run["error"]["code"] == "provider_failed"
    assert run["steps"][1]["error"]["code"] == "provider_failed"
    assert "generation_output_file" not in run["steps"][2]
    deliveries = receiver.wait_for(1, timeout=10)
    assert len(deliveries) == 1 and deliveries[0].verified
    payload = deliveries[0].json()
    assert payload["type"] == "chain_run.failed"
    assert payload["data"]["error"]["code"] == "provider_failed"
    # The video step was never submitted.
    assert [s["step_key"] for s in engine.provider_server.submissions] == ["text_to_image", "image_to_image"]


def test_moderation_is_a_permanent_failure_with_its_own_code(make_engine: Callable[..., LocalEngine]) -> None:
    engine = make_engine(local_provider_fail=("text_to_image:moderated",))
    with client_for(engine) as client:
        run_id = client.post("/api/v1/chains/chain1/runs", json=chain_request("chain1", None)).json()["id"]
        run = wait_for_run(client, run_id)
    assert run["status"] == "failed"
    assert run["steps"][0]["error"]["code"] == "provider_content_moderated"
    assert len(engine.provider_server.submissions) == 1


def test_cancel_mid_run_stops_submissions_and_ignores_the_late_result(
    make_engine: Callable[..., LocalEngine], receiver: WebhookReceiver
) -> None:
    engine = make_engine(local_provider_delay_seconds=1.0)
    with client_for(engine) as client:
        run_id = client.post("/api/v1/chains/chain3/runs", json=chain_request("chain3", receiver.url)).json()["id"]
        wait_until(lambda: engine.provider_server.submissions, timeout=10)
        canceled = client.post(f"/api/v1/chains/cancel/{run_id}")
        assert canceled.status_code == 200
        body = canceled.json()
        assert body["status"] == "canceled"
        assert body["error"]["code"] == "client_canceled"
        assert [s["status"] for s in body["steps"]] == ["canceled", "skipped", "skipped"]
        time.sleep(1.5)  # past the provider's delay: its result is now ready, and must be ignored
        run = client.get(f"/api/v1/chains/get/{run_id}").json()
        again = client.post(f"/api/v1/chains/cancel/{run_id}")
    assert run["status"] == "canceled"
    assert [s["status"] for s in run["steps"]] == ["canceled", "skipped", "skipped"]
    assert "generation_output_file" not in run["steps"][0]
    assert len(engine.provider_server.submissions) == 1
    assert again.status_code == 200 and again.json()["status"] == "canceled"
    deliveries = receiver.wait_for(1, timeout=10)
    time.sleep(0.3)
    assert len(receiver.deliveries) == 1
    assert deliveries[0].json()["type"] == "chain_run.canceled"


def test_transient_submit_error_is_retried_and_the_run_succeeds(make_engine: Callable[..., LocalEngine]) -> None:
    engine = make_engine(local_provider_fail=("text_to_image:submit_503x2",))
    with client_for(engine) as client:
        run_id = client.post("/api/v1/chains/chain1/runs", json=chain_request("chain1", None)).json()["id"]
        run = wait_for_run(client, run_id)
    assert run["status"] == "succeeded"
    assert run["steps"][0]["attempt"] == 3
    # Two refused submits and one accepted: the provider holds exactly one job for the step.
    assert [s["step_key"] for s in engine.provider_server.submissions] == ["text_to_image", "image_to_video"]


def test_transient_errors_past_the_budget_fail_the_step(make_engine: Callable[..., LocalEngine]) -> None:
    engine = make_engine(local_provider_fail=("text_to_image:submit_429",), max_submit_attempts=3)
    with client_for(engine) as client:
        run_id = client.post("/api/v1/chains/chain1/runs", json=chain_request("chain1", None)).json()["id"]
        run = wait_for_run(client, run_id)
    assert run["status"] == "failed"
    assert run["steps"][0]["error"]["code"] == "provider_rate_limited"
    assert run["steps"][0]["attempt"] == 3
    assert run["steps"][1]["status"] == "skipped"
