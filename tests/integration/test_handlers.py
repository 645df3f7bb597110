"""The sample events in events/ drive the real handlers (the template itself is checked in test_template.py)."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import sentry_sdk

from babychain import observability
from babychain.local.cli import demo_request
from babychain.local.lambda_shim import LambdaContext, http_event, load_handler, sqs_event
from babychain.local.runner import DEFAULT_API_KEY, LocalEngine
from tests.conftest import TERMINAL
from tests.standins.sentry import SentryIngest

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "events"
ROUTE = "POST /api/v1/chains/{slug}/runs"


@pytest.mark.parametrize(
    ("event_file", "function", "status"),
    [
        ("health.json", "list", 200),
        ("list_chains.json", "list", 200),
        ("list_models.json", "list", 200),
        ("list_runs.json", "list", 200),
        ("create_run.json", "create_run", 202),
        ("get_run.json", "get_run", 404),
        ("cancel_run.json", "cancel_run", 404),
    ],
)
def test_sample_api_events_drive_their_handlers(
    make_engine: Callable[..., LocalEngine], event_file: str, function: str, status: int
) -> None:
    make_engine(workers=False, api_keys=(DEFAULT_API_KEY,))
    event = json.loads((EVENTS / event_file).read_text())
    response = load_handler(function)(event, LambdaContext(function))
    assert response["statusCode"] == status, response["body"]
    json.loads(response["body"])


@pytest.mark.parametrize(
    ("event_file", "function"), [("step_executor.json", "step_executor"), ("callback_sender.json", "callback_sender")]
)
def test_sample_queue_events_are_processed_without_batch_failures(
    make_engine: Callable[..., LocalEngine], event_file: str, function: str
) -> None:
    make_engine(workers=False)
    event = json.loads((EVENTS / event_file).read_text())
    assert load_handler(function)(event, LambdaContext(function)) == {"batchItemFailures": []}


def test_a_poisoned_message_fails_only_itself(make_engine: Callable[..., LocalEngine]) -> None:
    make_engine(workers=False)
    event = json.loads((EVENTS / "step_executor.json").read_text())
    poisoned = dict(event["Records"][0], messageId="poison", body="{not json")
    event["Records"].append(poisoned)
    response = load_handler("step_executor")(event, LambdaContext("step_executor"))
    assert response == {"batchItemFailures": [{"itemIdentifier": "poison"}]}


def test_a_poisoned_message_leaves_an_error_line_and_a_sentry_event_before_the_handler_returns(
    make_engine: Callable[..., LocalEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    make_engine(workers=False)
    event = json.loads((EVENTS / "step_executor.json").read_text())
    event["Records"].append(dict(event["Records"][0], messageId="poison", body="{not json"))
    stream = io.StringIO()
    log_handler = logging.StreamHandler(stream)
    log_handler.setFormatter(observability.logger.registered_formatter)
    logging.getLogger(observability.logger.name).addHandler(log_handler)
    with SentryIngest(delay_seconds=0.2) as ingest:
        monkeypatch.setenv("SENTRY_DSN", ingest.dsn)
        monkeypatch.setattr(observability, "_sentry_started", False)
        try:
            assert observability.init_sentry()
            response = load_handler("step_executor")(event, LambdaContext("step_executor"))
            sent = ingest.body()  # what arrived before the handler returned
        finally:
            sentry_sdk.get_client().close()
            logging.getLogger(observability.logger.name).removeHandler(log_handler)
    assert response == {"batchItemFailures": [{"itemIdentifier": "poison"}]}
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    (error,) = [line for line in lines if line["level"] == "ERROR"]
    assert error["message_id"] == "poison"
    # The good record before it set a run's correlation id; the poisoned one has none of its own.
    assert error.get("correlation_id") is None
    assert b"queue record failed" in sent and b"poison" in sent


def test_sample_schedule_event_runs_the_sweeper(make_engine: Callable[..., LocalEngine]) -> None:
    make_engine(workers=False)
    result = load_handler("sweeper")(json.loads((EVENTS / "sweeper.json").read_text()), LambdaContext("sweeper"))
    assert set(result) == {
        "timed_out_runs",
        "timed_out_steps",
        "requeued_steps",
        "due_steps",
        "due_callbacks",
        "purged_runs",
        "purged_receipts",
        "purge_batches",
    }


def test_sample_provider_webhook_event_is_verified_and_deduplicated(make_engine: Callable[..., LocalEngine]) -> None:
    """events/provider_webhook.json is a BabySea delivery signed with the sample secret `whsec_sample_babysea_secret`.

    Its timestamp is fixed, so the test signs it again for now: BabySea rejects deliveries older than 300 s.
    """
    import hashlib
    import hmac
    import time

    make_engine(
        workers=False,
        babysea_api_key="bye_sample_key_0000000000",
        babysea_api_base_url="http://127.0.0.1:9",
        babysea_webhook_secret="whsec_sample_babysea_secret",
    )
    event = json.loads((EVENTS / "provider_webhook.json").read_text())
    t = str(int(time.time()))
    v1 = hmac.new(b"whsec_sample_babysea_secret", f"{t}.{event['body']}".encode(), hashlib.sha256).hexdigest()
    event["headers"]["x-babysea-signature"] = f"t={t},v1={v1}"
    handler = load_handler("provider_webhook")
    first = handler(event, LambdaContext("provider_webhook"))
    again = handler(event, LambdaContext("provider_webhook"))
    # No step ran generation gen_sample_0001 here: verified, recorded, and ignored; the replay is a duplicate.
    assert (first["statusCode"], json.loads(first["body"])["status"]) == (200, "ignored")
    assert (again["statusCode"], json.loads(again["body"])["status"]) == (200, "duplicate")
    event["headers"]["x-babysea-signature"] = f"t={t},v1={'0' * 64}"
    forged = handler(event, LambdaContext("provider_webhook"))
    assert forged["statusCode"] == 400
    assert json.loads(forged["body"])["error"]["code"] == "invalid_webhook_signature"


def test_each_step_that_succeeds_reports_its_duration_when_metrics_are_on(
    make_engine: Callable[..., LocalEngine], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """StepDuration (per model) and RunsSucceeded in the step handler's EMF output, as CloudWatch reads them."""
    engine = make_engine(workers=False, api_keys=(DEFAULT_API_KEY,), local_provider_delay_seconds=0.0)
    body = demo_request("chain1", "")
    body.pop("webhook_url")
    raw = json.dumps(body).encode()
    headers = {"authorization": f"Bearer {DEFAULT_API_KEY}", "content-type": "application/json"}
    event = http_event("POST", "/api/v1/chains/chain1/runs", "", headers, raw, ROUTE, {"slug": "chain1"})
    created = load_handler("create_run")(event, LambdaContext("create_run"))
    assert created["statusCode"] == 202, created["body"]
    models = [step["model_identifier"] for step in json.loads(created["body"])["steps"]]

    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")  # on, as on AWS
    capsys.readouterr()
    step = load_handler("step_executor")
    run_id = json.loads(created["body"])["id"]
    deadline = time.monotonic() + 30
    while engine.store.get_run(run_id)["status"] not in TERMINAL and time.monotonic() < deadline:  # type: ignore[union-attr,index]
        if (message := engine.step_queue.take(timeout=0.5)) is not None:
            answer = step(sqs_event("local-steps", [("m-1", message, 1)]), LambdaContext("step_executor"))
            assert answer == {"batchItemFailures": []}
    assert engine.store.get_run(run_id)["status"] == "succeeded"  # type: ignore[union-attr,index]
    emitted = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    durations = [(record["model"], record["StepDuration"]) for record in emitted if "StepDuration" in record]
    assert [model for model, _ in durations] == models
    assert all(0 <= value[0] < 60 for _, value in durations)
    assert any("RunsSucceeded" in record for record in emitted)
