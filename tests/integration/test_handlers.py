"""The sample events in events/ drive the real handlers (the template itself is checked in test_template.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from babychain.local.lambda_shim import LambdaContext, load_handler
from babychain.local.runner import DEFAULT_API_KEY, LocalEngine

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "events"


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


def test_sample_schedule_event_runs_the_sweeper(make_engine: Callable[..., LocalEngine]) -> None:
    make_engine(workers=False)
    result = load_handler("sweeper")(json.loads((EVENTS / "sweeper.json").read_text()), LambdaContext("sweeper"))
    assert set(result) == {"timed_out_runs", "timed_out_steps", "requeued_steps", "due_steps", "due_callbacks"}
