"""The queue interface (SQS in AWS, durable Postgres queues on one machine) and the message shapes.

Step messages carry the step's `seq`; a message acts only while that seq is current, so duplicates and late
messages change nothing. Callback messages carry the run id; the callback claim is the guard.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from typing import Any

SQS_MAX_DELAY_SECONDS = 900


STEP_MESSAGE = {"type": "step"}  # and the ids: what bc_create_run_queued completes in SQL


def step_message(run_id: str, step_id: str, seq: int) -> dict[str, Any]:
    return {**STEP_MESSAGE, "run_id": run_id, "step_id": step_id, "seq": seq}


def callback_message(run_id: str, deferrals: int = 0) -> dict[str, Any]:
    """`deferrals`: how often this message found its receiver busy (its next wait grows with it)."""
    body: dict[str, Any] = {"type": "callback", "run_id": run_id}
    if deferrals:
        body["deferrals"] = deferrals
    return body


class Queue(ABC):
    @abstractmethod
    def send(self, body: dict[str, Any], delay_seconds: float = 0) -> None:
        """Enqueues one message, delivered no earlier than `delay_seconds` from now (capped at 15 minutes)."""

    def in_store(self, store: object) -> str | None:
        """This queue's name when its messages are rows in `store`'s own database (a send can join the store's
        statement); None for a queue elsewhere (SQS)."""
        return None

    def send_many(self, bodies: list[dict[str, Any]]) -> None:
        for body in bodies:
            self.send(body)


class SqsQueue(Queue):
    def __init__(self, queue_url: str, client: Any | None = None) -> None:
        import boto3

        self.queue_url = queue_url
        self._client = client or boto3.client("sqs")

    def send(self, body: dict[str, Any], delay_seconds: float = 0) -> None:
        delay = min(SQS_MAX_DELAY_SECONDS, max(0, math.ceil(delay_seconds)))
        self._client.send_message(QueueUrl=self.queue_url, MessageBody=json.dumps(body), DelaySeconds=delay)

    def send_many(self, bodies: list[dict[str, Any]]) -> None:
        # SQS takes ten entries per call; a partial failure is retried once, then raised so nothing is lost silently.
        for start in range(0, len(bodies), 10):
            entries = [{"Id": str(i), "MessageBody": json.dumps(b)} for i, b in enumerate(bodies[start : start + 10])]
            answer = self._client.send_message_batch(QueueUrl=self.queue_url, Entries=entries)
            failed = [e for e in entries if e["Id"] in {f["Id"] for f in answer.get("Failed", [])}]
            if failed:
                answer = self._client.send_message_batch(QueueUrl=self.queue_url, Entries=failed)
                if answer.get("Failed"):
                    raise RuntimeError(f"SQS refused {len(answer['Failed'])} messages: {answer['Failed'][0]}")
