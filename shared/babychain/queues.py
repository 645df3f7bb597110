"""The queue interface (SQS in AWS, an in-process delayed queue on one machine) and the message shapes.

Step messages carry the step's `seq`; a message acts only while that seq is current, so duplicates and late
messages change nothing. Callback messages carry the run id; the callback claim is the guard.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from typing import Any

SQS_MAX_DELAY_SECONDS = 900


def step_message(run_id: str, step_id: str, seq: int) -> dict[str, Any]:
    return {"type": "step", "run_id": run_id, "step_id": step_id, "seq": seq}


def callback_message(run_id: str) -> dict[str, Any]:
    return {"type": "callback", "run_id": run_id}


class Queue(ABC):
    @abstractmethod
    def send(self, body: dict[str, Any], delay_seconds: float = 0) -> None:
        """Enqueues one message, delivered no earlier than `delay_seconds` from now (capped at 15 minutes)."""


class SqsQueue(Queue):
    def __init__(self, queue_url: str, client: Any | None = None) -> None:
        import boto3

        self.queue_url = queue_url
        self._client = client or boto3.client("sqs")

    def send(self, body: dict[str, Any], delay_seconds: float = 0) -> None:
        delay = min(SQS_MAX_DELAY_SECONDS, max(0, math.ceil(delay_seconds)))
        self._client.send_message(QueueUrl=self.queue_url, MessageBody=json.dumps(body), DelaySeconds=delay)
