"""Telemetry never carries secrets: Sentry events are scrubbed before they leave, checked against a real receiver."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import jmespath
import pytest
import sentry_sdk
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.batch import process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from sentry_sdk.integrations.aws_lambda import AwsLambdaIntegration

from babychain import observability
from babychain.batch import QueueBatchProcessor
from babychain.local.lambda_shim import LambdaContext
from tests.standins.sentry import SentryIngest

BFL_KEY = "bfl_live_5f0c1d2e3a4b5c6d7e8f"


@pytest.fixture
def sentry_receiver() -> Iterator[list[bytes]]:
    """The first item is the DSN, then each envelope's body once it has been received."""
    with SentryIngest() as ingest:
        ingest.received.append(ingest.dsn.encode())
        yield ingest.received


@pytest.fixture
def slow_sentry_receiver() -> Iterator[list[bytes]]:
    # An event reaches this list only 0.3 s after Sentry's worker thread sent it: seeing it right after a handler
    # returned means the handler waited for the send.
    with SentryIngest(delay_seconds=0.3) as ingest:
        ingest.received.append(ingest.dsn.encode())
        yield ingest.received


@pytest.fixture
def sentry_on(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[list[bytes]], None]]:
    """Starts Sentry through init_sentry() against a receiver, and closes it after the test."""

    def start(receiver: list[bytes]) -> None:
        monkeypatch.setenv("SENTRY_DSN", receiver.pop(0).decode())
        monkeypatch.setattr(observability, "_sentry_started", False)
        assert observability.init_sentry() is True

    yield start
    sentry_sdk.get_client().close()


def test_scrub_replaces_every_secret_value_anywhere() -> None:
    event = {"message": f"auth failed for {BFL_KEY}", "extra": {"nested": [f"x-key: {BFL_KEY}"]}}
    scrubbed = observability.scrub(event, [BFL_KEY])
    assert BFL_KEY not in str(scrubbed)
    assert scrubbed["extra"]["nested"] == ["x-key: [redacted]"]


def test_secret_values_ignore_short_strings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BABYCHAIN_API_KEY", "short,bc_long_enough_key_1")
    assert "bc_long_enough_key_1" in observability.secret_values()
    assert "short" not in observability.secret_values()


def test_sentry_events_leave_without_secrets(monkeypatch: pytest.MonkeyPatch, sentry_receiver: list[bytes]) -> None:
    dsn = sentry_receiver.pop(0).decode()
    monkeypatch.setenv("SENTRY_DSN", dsn)
    monkeypatch.setenv("BFL_API_KEY", BFL_KEY)
    monkeypatch.setattr(observability, "_sentry_started", False)
    try:
        assert observability.init_sentry() is True
        try:
            raise RuntimeError(f"BFL refused the key {BFL_KEY}")
        except RuntimeError as exc:
            sentry_sdk.capture_exception(exc)
        sentry_sdk.flush(timeout=5)
    finally:
        sentry_sdk.get_client().close()
    assert sentry_receiver, "Sentry sent nothing"
    sent = b"".join(sentry_receiver)
    assert b"BFL refused the key" in sent
    assert BFL_KEY.encode() not in sent
    assert b"[redacted]" in sent


def test_sentry_stays_off_without_a_dsn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SENTRY_DSN", raising=False)
    monkeypatch.setattr(observability, "_sentry_started", False)
    assert observability.init_sentry() is False


def test_sentry_runs_with_the_aws_lambda_integration(
    sentry_on: Callable[[list[bytes]], None], sentry_receiver: list[bytes]
) -> None:
    sentry_on(sentry_receiver)
    assert sentry_sdk.get_client().get_integration(AwsLambdaIntegration) is not None


def test_a_wrapped_handler_has_sent_its_sentry_event_when_it_returns(
    monkeypatch: pytest.MonkeyPatch, sentry_on: Callable[[list[bytes]], None], slow_sentry_receiver: list[bytes]
) -> None:
    monkeypatch.setenv("BFL_API_KEY", BFL_KEY)
    sentry_on(slow_sentry_receiver)

    @observability.sentry_flush
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        raise RuntimeError(f"BFL refused the key {BFL_KEY}")

    with pytest.raises(RuntimeError):
        handler({}, None)
    # No flush here: the wrapper's flush is what got the event to the receiver before the handler returned.
    assert slow_sentry_receiver, "the handler returned before Sentry sent its event"
    sent = b"".join(slow_sentry_receiver)
    assert b"BFL refused the key" in sent
    assert BFL_KEY.encode() not in sent


def test_a_wrapped_handler_returns_its_result_with_sentry_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(observability, "_sentry_started", False)
    assert observability.sentry_flush(lambda event, context: {"ok": event["n"]})({"n": 3}, None) == {"ok": 3}


def _sqs_event(*records: tuple[str, str]) -> dict[str, Any]:
    return {
        "Records": [
            {"messageId": message_id, "receiptHandle": f"rh-{message_id}", "body": body, "eventSource": "aws:sqs"}
            for message_id, body in records
        ]
    }


@pytest.fixture
def json_log_lines() -> Iterator[io.StringIO]:
    """What the Powertools logger writes, as its JSON lines."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(observability.logger.registered_formatter)
    logging.getLogger(observability.logger.name).addHandler(handler)
    yield stream
    logging.getLogger(observability.logger.name).removeHandler(handler)


def test_a_record_that_fails_is_logged_at_error_with_its_message_id(json_log_lines: io.StringIO) -> None:
    def record_handler(record: SQSRecord) -> str:
        return json.loads(record.body)["run_id"]

    event = _sqs_event(("good-1", '{"run_id": "r1"}'), ("poison-2", "{not json"))
    response = process_partial_response(event=event, record_handler=record_handler, processor=QueueBatchProcessor())
    assert response == {"batchItemFailures": [{"itemIdentifier": "poison-2"}]}
    lines = [json.loads(line) for line in json_log_lines.getvalue().splitlines()]
    (error,) = [line for line in lines if line["level"] == "ERROR"]
    assert error["message_id"] == "poison-2"
    assert "JSONDecodeError" in error["exception_name"]
    assert "Expecting property name" in error["exception"]


@pytest.mark.parametrize(
    ("path", "event"),
    [
        (correlation_paths.API_GATEWAY_HTTP, {"requestContext": {"requestId": "req-1"}}),
        (correlation_paths.API_GATEWAY_HTTP, {"requestContext": {}}),
        (correlation_paths.API_GATEWAY_HTTP, {"requestContext": "not an object"}),
        (correlation_paths.API_GATEWAY_HTTP, {}),
        ('headers."x-request-id"', {"headers": {"x-request-id": "hdr-7"}}),  # not plain names: JMESPath's reading
    ],
)
def test_a_wrapped_handler_logs_the_correlation_id_powertools_would(
    json_log_lines: io.StringIO, path: str, event: dict[str, Any]
) -> None:
    """`instrumented` reads the correlation id itself (no JMESPath search per request): the log line carries the same
    keys as under Powertools' own `inject_lambda_context(correlation_id_path=...)`."""

    def handler(event: Any, context: Any) -> None:
        observability.logger.warning("inside")  # at the level the service logs by default

    context = LambdaContext("get_run")
    observability.logger.set_correlation_id("left over from an earlier invocation")
    observability.instrumented(path)(handler)(event, context)
    observability.logger.set_correlation_id("left over from an earlier invocation")
    observability.logger.inject_lambda_context(handler, correlation_id_path=path)(event, context)
    ours, powertools = (json.loads(line) for line in json_log_lines.getvalue().splitlines())
    for line in (ours, powertools):
        line.pop("timestamp"), line.pop("location"), line.pop("cold_start")
    assert ours == powertools
    assert ours.get("correlation_id") == jmespath.search(path, event)
    assert ours["function_request_id"] == context.aws_request_id


def test_the_engines_own_requests_are_x_ray_subsegments_without_their_query() -> None:
    """On AWS (tracing on), each lean_http request is a `remote` subsegment, as the X-Ray HTTP patches record one."""
    import aws_xray_sdk
    from aws_xray_sdk.core import xray_recorder

    from babychain.local.loopback import LoopbackServer, QuietHandler
    from babychain.security import lean_http

    class Handler(QuietHandler, keep_alive=True):
        def do_GET(self) -> None:
            self.send_json(200, {"ok": True})

    enabled = aws_xray_sdk.global_sdk_config.sdk_enabled()
    aws_xray_sdk.global_sdk_config.set_sdk_enabled(True)
    lean_http.trace_requests(observability._xray_request)
    try:
        with LoopbackServer(Handler) as server:
            segment = xray_recorder.begin_segment("test", sampling=1)
            try:
                lean_http.fetch("GET", f"{server.base_url}/v1/jobs/1?sig=secret", timeout=5)
            finally:
                xray_recorder.end_segment()
    finally:
        lean_http.trace_requests(None)
        aws_xray_sdk.global_sdk_config.set_sdk_enabled(enabled)
    [subsegment] = segment.subsegments
    assert (subsegment.name, subsegment.namespace) == ("127.0.0.1", "remote")
    assert subsegment.http == {
        "request": {"method": "GET", "url": f"{server.base_url}/v1/jobs/1"},
        "response": {"status": 200},
    }


def test_the_batch_processor_hands_the_lambda_context_to_a_handler_that_takes_it() -> None:
    """Powertools' rule (a record handler with a `lambda_context` parameter gets the invocation's context), kept
    with the signature asked once per handler."""
    seen: list[Any] = []

    def with_context(record: SQSRecord, lambda_context: Any = None) -> str:
        seen.append(lambda_context)
        return "ok"

    def without_context(record: SQSRecord) -> str:
        seen.append("none")
        return "ok"

    context = LambdaContext(function_name="step_executor")
    processor = QueueBatchProcessor()
    for _ in range(2):
        event = _sqs_event(("m-1", '{"run_id": "r1"}'))
        assert process_partial_response(event, with_context, processor, context) == {"batchItemFailures": []}
        assert process_partial_response(event, without_context, processor, context) == {"batchItemFailures": []}
        assert process_partial_response(event, with_context, processor) == {"batchItemFailures": []}
    assert seen == [context, "none", None] * 2


def test_whether_metrics_are_on_is_asked_once_per_invocation(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A handler's metrics follow POWERTOOLS_METRICS_DISABLED as it was when the invocation began (read once, not per
    metric); outside an invocation each metric reads it."""
    asked: list[bool] = []
    real = observability.is_metrics_disabled

    def counted() -> bool:
        asked.append(True)
        return real()

    monkeypatch.setattr(observability, "is_metrics_disabled", counted)
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")

    @observability.instrumented()
    def handler(event: dict[str, Any], context: Any) -> int:
        for i in range(3):
            observability.duration("StepDuration", 0.5 + i, model="local/test")
        monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")  # read when the invocation began, not now
        observability.duration("StepDuration", 9.0, model="local/test")
        return len(asked)

    capsys.readouterr()
    assert handler({}, LambdaContext(function_name="metrics_test")) == 1
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    assert [record["StepDuration"] for record in printed] == [[0.5], [1.5], [2.5], [9.0]]
    asked.clear()
    observability.duration("StepDuration", 1.0, model="local/test")  # outside: asked, and now off
    observability.count("RunsSucceeded")
    assert len(asked) == 2 and '"_aws"' not in capsys.readouterr().out
