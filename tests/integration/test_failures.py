"""Failures: a failed step fails the run and skips the rest, moderation has its own code, transient errors past the
budget fail the step. (Transient errors that pass, and cancel against a late result, are scenarios of the fault
suite, test_fault_suite.py.)"""

from __future__ import annotations

from collections.abc import Callable

from babychain.local.receiver import WebhookReceiver
from babychain.local.runner import LocalEngine
from tests.conftest import client_for, wait_for_run
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


def test_transient_errors_past_the_budget_fail_the_step(make_engine: Callable[..., LocalEngine]) -> None:
    engine = make_engine(local_provider_fail=("text_to_image:submit_429",), max_submit_attempts=3)
    with client_for(engine) as client:
        run_id = client.post("/api/v1/chains/chain1/runs", json=chain_request("chain1", None)).json()["id"]
        run = wait_for_run(client, run_id)
    assert run["status"] == "failed"
    assert run["steps"][0]["error"]["code"] == "provider_rate_limited"
    assert run["steps"][0]["attempt"] == 3
    assert run["steps"][1]["status"] == "skipped"
