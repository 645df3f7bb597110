"""The AWS shape, wired right, without AWS: moto's server on loopback plays SQS, S3 and Secrets Manager.

The handlers are invoked the way Lambda's event source mappings would: messages received from the queue become an
SQS event; those the handler does not report in batchItemFailures are deleted; the rest come back after their
visibility timeout and, after maxReceiveCount receives, land in the dead-letter queue.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer

from babychain.local.lambda_shim import LambdaContext, load_handler
from babychain.local.provider_server import LocalProviderServer
from babychain.local.receiver import WebhookReceiver
from babychain.services import from_environment, install
from tests.conftest import CALLBACK_SECRET
from tests.integration.requests import SEED_CHAIN1

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "bc_aws_test_key_000001"
MAX_RECEIVES = 3


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, database_url: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    httpx.post(f"{endpoint}/moto-api/reset")  # moto's backends are per process, not per server
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }.items():
        monkeypatch.setenv(name, value)
    sqs, s3, secrets = (boto3.client(n) for n in ("sqs", "s3", "secretsmanager"))
    queues = {}
    for name in ("step", "callback"):
        dlq = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        queues[name] = sqs.create_queue(
            QueueName=name,
            Attributes={
                "VisibilityTimeout": "1",
                "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(MAX_RECEIVES)}),
            },
        )["QueueUrl"]
        queues[f"{name}-dlq"] = dlq
    s3.create_bucket(Bucket="babychain-artifacts")
    secrets.create_secret(
        Name="babychain/test",
        SecretString=json.dumps(
            {
                "BABYCHAIN_API_KEY": API_KEY,
                "BABYCHAIN_CALLBACK_SECRET": CALLBACK_SECRET,
                "DATABASE_URL": database_url,
            }
        ),
    )
    provider = LocalProviderServer(tmp_path / "provider", delay_seconds=0.2)
    provider_url = provider.start().base_url
    for name, value in {
        "BABYCHAIN_SECRETS_ID": "babychain/test",
        "BABYCHAIN_STEP_QUEUE_URL": queues["step"],
        "BABYCHAIN_CALLBACK_QUEUE_URL": queues["callback"],
        "BABYCHAIN_ARTIFACT_BUCKET": "babychain-artifacts",
        "BABYCHAIN_PROVIDER_MODE": "local",
        "BABYCHAIN_LOCAL_PROVIDER_URL": provider_url,
        "BABYCHAIN_POLL_INTERVAL_SECONDS": "1",
        "BABYCHAIN_DEV_ALLOW_LOOPBACK_HTTP": "1",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("BABYCHAIN_API_KEY", "BABYCHAIN_CALLBACK_SECRET", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)  # they must come from Secrets Manager
    services = from_environment()
    install(services)
    yield {"sqs": sqs, "s3": s3, "queues": queues, "services": services}
    for name in ("BABYCHAIN_API_KEY", "BABYCHAIN_CALLBACK_SECRET", "DATABASE_URL"):
        os.environ.pop(name, None)  # written by the secrets loader; monkeypatch then restores what was there before
    install(None)
    services.store.close()
    provider.stop()
    server.stop()


def _records(messages: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "Records": [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": m.get("Attributes", {}),
                "messageAttributes": {},
                "md5OfBody": m["MD5OfBody"],
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:queue",
                "awsRegion": "us-east-1",
            }
            for m in messages
        ]
    }


def poll_once(sqs: Any, queue_url: str, function: str) -> tuple[int, list[str]]:
    """One event-source-mapping cycle: receive a batch, invoke, delete what succeeded. Returns (batch, failed ids)."""
    messages = sqs.receive_message(
        QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0, AttributeNames=["All"]
    ).get("Messages", [])
    if not messages:
        return 0, []
    try:
        response = load_handler(function)(_records(messages), LambdaContext(function))
        failed = [f["itemIdentifier"] for f in response["batchItemFailures"]]
    except Exception:  # Powertools raises when every record failed: Lambda then returns the whole batch
        failed = [m["MessageId"] for m in messages]
    for m in messages:
        if m["MessageId"] not in failed:
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])
    return len(messages), failed


def _api(function: str, event_file: str, **changes: Any) -> dict[str, Any]:
    event = json.loads((ROOT / "events" / event_file).read_text())
    event["headers"]["authorization"] = f"Bearer {API_KEY}"
    event.update(changes)
    response: dict[str, Any] = load_handler(function)(event, LambdaContext(function))
    return response


def test_run_flows_from_api_through_sqs_and_s3_to_a_signed_callback(aws: dict[str, Any]) -> None:
    sqs, queues = aws["sqs"], aws["queues"]
    receiver = WebhookReceiver(CALLBACK_SECRET).start()
    try:
        body = {**SEED_CHAIN1, "webhook_url": receiver.url}
        created = _api("create_run", "create_run.json", body=json.dumps(body))
        assert created["statusCode"] == 202, created["body"]
        run_id = json.loads(created["body"])["id"]
        deadline = time.monotonic() + 60
        while not receiver.deliveries:
            assert time.monotonic() < deadline, "no callback within 60 s"
            poll_once(sqs, queues["step"], "step_executor")
            poll_once(sqs, queues["callback"], "callback_sender")
            time.sleep(0.1)
        delivery = receiver.deliveries[0]
    finally:
        receiver.stop()
    assert delivery.verified
    payload = delivery.json()
    assert payload["type"] == "chain_run.succeeded"
    steps = payload["data"]["steps"]
    # Outputs live in the private bucket; callers get presigned URLs that work.
    keys = [o["Key"] for o in aws["s3"].list_objects_v2(Bucket="babychain-artifacts")["Contents"]]
    assert sorted(keys) == sorted(
        [f"runs/{run_id}/text_to_image/output-0.jpg", f"runs/{run_id}/image_to_video/output-0.mp4"]
    )
    for step in steps:
        url = step["generation_output_file"][0]
        assert "X-Amz-Signature" in url
        assert httpx.get(url).status_code == 200
    got = _api("get_run", "get_run.json", rawPath=f"/api/v1/chains/get/{run_id}", pathParameters={"run_id": run_id})
    assert json.loads(got["body"])["status"] == "succeeded"
    assert aws["services"].store.list_callback_deliveries(run_id)[0]["outcome"] == "delivered"


def test_a_poisoned_message_fails_alone_and_lands_in_the_dead_letter_queue(aws: dict[str, Any]) -> None:
    sqs, queues = aws["sqs"], aws["queues"]
    sqs.send_message(QueueUrl=queues["step"], MessageBody="{not json")
    good = {
        "type": "step",
        "run_id": "6f1c1c3e-2b2c-4c53-9a63-0c3f6f6a8b10",
        "step_id": "0b5d8a52-4c1e-4f7e-9e55-7d1b2c3a4f60",
        "seq": 0,
    }
    sqs.send_message(QueueUrl=queues["step"], MessageBody=json.dumps(good))
    batch, failed = poll_once(sqs, queues["step"], "step_executor")
    assert batch == 2 and len(failed) == 1  # the good message was processed and deleted
    deadline = time.monotonic() + 20
    while True:
        dead = sqs.receive_message(QueueUrl=queues["step-dlq"], WaitTimeSeconds=0).get("Messages", [])
        if dead:
            break
        assert time.monotonic() < deadline, "the poisoned message never reached the DLQ"
        time.sleep(1.1)  # the visibility timeout
        poll_once(sqs, queues["step"], "step_executor")
    assert [m["Body"] for m in dead] == ["{not json"]
    assert sqs.receive_message(QueueUrl=queues["step"], WaitTimeSeconds=0).get("Messages", []) == []


def test_secrets_come_from_secrets_manager_and_never_reach_responses(aws: dict[str, Any]) -> None:
    settings = aws["services"].settings
    assert settings.api_keys == (API_KEY,) and settings.callback_secret == CALLBACK_SECRET
    listed = _api("list", "list_chains.json")
    assert listed["statusCode"] == 200
    assert API_KEY not in listed["body"] and CALLBACK_SECRET not in listed["body"]


def test_sweeper_batch_sends_due_work_to_sqs(aws: dict[str, Any]) -> None:
    sqs, queues = aws["sqs"], aws["queues"]
    bodies = [{"type": "callback", "run_id": f"00000000-0000-4000-8000-{i:012d}"} for i in range(23)]
    aws["services"].callback_queue.send_many(bodies)
    seen = []
    for _ in range(10):
        messages = sqs.receive_message(QueueUrl=queues["callback"], MaxNumberOfMessages=10).get("Messages", [])
        seen += [json.loads(m["Body"]) for m in messages]
        for m in messages:
            sqs.delete_message(QueueUrl=queues["callback"], ReceiptHandle=m["ReceiptHandle"])
        if len(seen) == len(bodies):
            break
    assert sorted(b["run_id"] for b in seen) == sorted(b["run_id"] for b in bodies)
