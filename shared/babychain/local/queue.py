"""SQS on one machine: durable queues in Postgres (`bc_queue_*` in supabase/migrations), shared by worker processes.

Senders use `PostgresQueue.send` like `SqsQueue.send`. A consumer process receives one message at a time, hands it
to the real handler as an SQS event, and deletes it when the handler reports success, as Lambda's SQS integration
does. A message whose handler failed or crashed comes back after its visibility timeout; one received too often
moves to the dead letters. Consumers hold an advisory lock while they live, so the messages of a consumer that died
are released at once (`release_orphans`) rather than after their visibility timeout.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import psycopg

from babychain.queues import SQS_MAX_DELAY_SECONDS, Queue
from babychain.store.base import Store

# Advisory lock namespace of queue consumers: (RECEIVER_LOCK_CLASS, receiver id) is held while a consumer lives.
RECEIVER_LOCK_CLASS = 7272
STEP_QUEUE = "steps"
CALLBACK_QUEUE = "callbacks"


@dataclass(frozen=True)
class ReceivedMessage:
    id: int
    body: dict[str, Any]
    receive_count: int
    receipt: str
    sent_at: str


class PostgresQueue(Queue):
    def __init__(
        self,
        store: Store,
        name: str,
        *,
        visibility_timeout_seconds: float = 300.0,
        retry_after_failure_seconds: float = 2.0,
        max_receives: int = 5,
    ) -> None:
        self.store = store
        self.name = name
        self.visibility_timeout_seconds = visibility_timeout_seconds
        self.retry_after_failure_seconds = retry_after_failure_seconds
        self.max_receives = max_receives

    @property
    def channel(self) -> str:
        return f"bc_queue_{self.name}"

    def send(self, body: dict[str, Any], delay_seconds: float = 0) -> None:
        self._send([{"body": body, "delay_seconds": min(SQS_MAX_DELAY_SECONDS, max(0.0, delay_seconds))}])

    def send_many(self, bodies: list[dict[str, Any]]) -> None:
        if bodies:
            self._send([{"body": body, "delay_seconds": 0} for body in bodies])

    def _send(self, messages: list[dict[str, Any]]) -> None:
        self.store.call("bc_queue_send", {"queue": self.name, "messages": messages})

    def receive(
        self, receiver: int | None, max_messages: int = 1, *, ack: ReceivedMessage | None = None
    ) -> tuple[list[ReceivedMessage], float | None]:
        """Due messages (now invisible and held by `receiver`), and seconds until the next one becomes visible.

        `ack` deletes a message handled since the last receive in the same statement (as `delete` would). A message
        received without a receiver is never released as an orphan: only its visibility timeout ends it.
        """
        params: dict[str, Any] = {
            "queue": self.name,
            "max_messages": max_messages,
            "visibility_timeout_seconds": self.visibility_timeout_seconds,
            "max_receives": self.max_receives,
            "receiver": receiver,
        }
        if ack is not None:
            params["ack"] = {"id": ack.id, "receipt": ack.receipt}
        answer = self.store.call("bc_queue_receive", params)
        messages = [
            ReceivedMessage(m["id"], m["body"], m["receive_count"], m["receipt"], m["sent_at"])
            for m in answer["messages"]
        ]
        next_in = answer.get("next_visible_in_seconds")
        return messages, None if next_in is None else float(next_in)

    def delete(self, message: ReceivedMessage) -> bool:
        return bool(
            self.store.call("bc_queue_delete", {"queue": self.name, "id": message.id, "receipt": message.receipt})
        )

    def retry_later(self, message: ReceivedMessage) -> bool:
        """A failed message comes back after a short wait instead of the whole visibility timeout."""
        return bool(
            self.store.call(
                "bc_queue_change_visibility",
                {
                    "queue": self.name,
                    "id": message.id,
                    "receipt": message.receipt,
                    "visibility_timeout_seconds": self.retry_after_failure_seconds,
                },
            )
        )

    def take(self, timeout: float = 5.0) -> dict[str, Any] | None:
        """Receives and deletes the next message once it is due (for driving handlers by hand in tests)."""
        deadline = time.monotonic() + timeout
        while True:
            messages, next_in = self.receive(receiver=None)
            if messages:
                self.delete(messages[0])
                return messages[0].body
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            time.sleep(min(remaining, 0.02 if next_in is None else max(0.005, min(next_in, 0.05))))

    def stats(self) -> dict[str, int]:
        answer: dict[str, int] = self.store.call("bc_queue_stats", {"queue": self.name})
        return answer

    def dead_letters(self) -> list[dict[str, Any]]:
        rows = self.store.call("bc_queue_dead_letters", {"queue": self.name})
        return list(rows or [])


def release_orphans(store: Store) -> int:
    """Makes the messages of consumers that died visible again; returns how many."""
    return int(store.call("bc_queue_release_orphans", {}) or 0)


class ConsumerLease:
    """A consumer's own connection: holds its liveness lock and waits for new-message notifications."""

    def __init__(self, dsn: str, receiver: int, queue: PostgresQueue) -> None:
        self.receiver = receiver
        self._conn = psycopg.connect(dsn, autocommit=True, prepare_threshold=None)
        self._conn.execute("select pg_advisory_lock(%s, %s)", (RECEIVER_LOCK_CLASS, receiver))
        self._conn.execute(f'listen "{queue.channel}"')

    def wait(self, timeout: float) -> None:
        """Returns on the next notification on the queue's channel, or after `timeout` seconds."""
        for _ in self._conn.notifies(timeout=max(0.0, timeout), stop_after=1):
            pass

    def close(self) -> None:
        self._conn.close()
