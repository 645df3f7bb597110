"""The deployment shape: template.yaml names real handlers, and the sample events in events/ drive them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from babychain.local.lambda_shim import FUNCTIONS_DIR, ROUTES, LambdaContext, load_handler
from babychain.local.runner import DEFAULT_API_KEY, LocalEngine

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "events"


class _CfnLoader(yaml.SafeLoader):
    """Reads CloudFormation short tags (!Ref, !GetAtt, !Sub) as plain values."""


_CfnLoader.add_multi_constructor(
    "!",
    lambda loader, suffix, node: (
        loader.construct_scalar(node)
        if isinstance(node, yaml.ScalarNode)
        else loader.construct_sequence(node)
        if isinstance(node, yaml.SequenceNode)
        else loader.construct_mapping(node)
    ),
)


def _template() -> dict[str, Any]:
    return yaml.load((ROOT / "template.yaml").read_text(), Loader=_CfnLoader)


def _functions() -> dict[str, dict[str, Any]]:
    resources = _template()["Resources"]
    return {name: r["Properties"] for name, r in resources.items() if r["Type"] == "AWS::Serverless::Function"}


def test_every_function_in_the_template_resolves_to_a_handler_that_imports() -> None:
    folders = set()
    for props in _functions().values():
        folder = Path(props["CodeUri"].rstrip("/")).name
        module, _, attr = props["Handler"].partition(".")
        assert (ROOT / props["CodeUri"] / f"{module}.py").is_file()
        assert callable(load_handler(folder)) and attr == "lambda_handler"
        folders.add(folder)
    assert folders == {p.name for p in FUNCTIONS_DIR.iterdir() if (p / "app.py").is_file()}
    assert folders == {
        "create_run",
        "get_run",
        "cancel_run",
        "list",
        "step_executor",
        "sweeper",
        "callback_sender",
        "provider_webhook",
    }


def test_template_routes_match_the_local_runner_routes() -> None:
    template_routes = set()
    for props in _functions().values():
        for event in props.get("Events", {}).values():
            if event["Type"] == "HttpApi":
                template_routes.add(
                    (
                        event["Properties"]["Method"],
                        event["Properties"]["Path"],
                        Path(props["CodeUri"].rstrip("/")).name,
                    )
                )
    assert template_routes == set(ROUTES)


def test_queues_have_dead_letter_queues_and_report_batch_item_failures() -> None:
    resources = _template()["Resources"]
    queues = {n: r for n, r in resources.items() if r["Type"] == "AWS::SQS::Queue" and "DeadLetter" not in n}
    assert queues
    for queue in queues.values():
        assert queue["Properties"]["RedrivePolicy"]["maxReceiveCount"] >= 1
    for props in _functions().values():
        for event in props.get("Events", {}).values():
            if event["Type"] == "SQS":
                assert event["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]


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
