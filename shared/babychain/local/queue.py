"""An in-process stand-in for SQS with delays, at-least-once redelivery and a dead-letter list.

Messages are delivered to the real handler as SQS batch events; a record the handler reports in
`batchItemFailures` (or a handler crash) is redelivered after the visibility timeout, and after `max_receives`
it lands in `dead_letters`, as with an SQS redrive policy.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from babychain.local.lambda_shim import LambdaContext, sqs_event
from babychain.queues import Queue

log = logging.getLogger(__name__)


class LocalQueue(Queue):
    def __init__(
        self,
        name: str,
        handler: Callable[[dict[str, Any], Any], Any],
        *,
        workers: int = 2,
        visibility_timeout: float = 2.0,
        max_receives: int = 5,
    ) -> None:
        self.name = name
        self.handler = handler
        self.workers = workers
        self.visibility_timeout = visibility_timeout
        self.max_receives = max_receives
        self.dead_letters: list[dict[str, Any]] = []
        self.sent = 0
        self._heap: list[tuple[float, int, str, dict[str, Any], int]] = []
        self._counter = itertools.count()
        self._cond = threading.Condition()
        self._in_flight = 0
        self._stopped = False
        self._threads: list[threading.Thread] = []

    def send(self, body: dict[str, Any], delay_seconds: float = 0) -> None:
        self._push(body, delay_seconds, str(uuid.uuid4()), 0)
        self.sent += 1

    def _push(self, body: dict[str, Any], delay: float, message_id: str, receives: int) -> None:
        with self._cond:
            heapq.heappush(
                self._heap, (time.monotonic() + max(0.0, delay), next(self._counter), message_id, body, receives)
            )
            self._cond.notify()

    def start(self) -> None:
        for i in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"{self.name}-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=5)

    def idle(self) -> bool:
        with self._cond:
            return not self._heap and self._in_flight == 0

    def pending(self) -> int:
        with self._cond:
            return len(self._heap) + self._in_flight

    def _next(self) -> tuple[str, dict[str, Any], int] | None:
        with self._cond:
            while not self._stopped:
                if self._heap and self._heap[0][0] <= time.monotonic():
                    _, _, message_id, body, receives = heapq.heappop(self._heap)
                    self._in_flight += 1
                    return message_id, body, receives + 1
                timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                self._cond.wait(timeout)
            return None

    def take(self, timeout: float = 5.0) -> dict[str, Any] | None:
        """Pops the next message once it is due, without delivering it (for driving handlers by hand)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                now = time.monotonic()
                if self._heap and self._heap[0][0] <= now:
                    return heapq.heappop(self._heap)[3]
                if now >= deadline:
                    return None
                wait = deadline - now if not self._heap else min(deadline, self._heap[0][0]) - now
                self._cond.wait(max(0.0, wait))

    def _work(self) -> None:
        while (item := self._next()) is not None:
            message_id, body, receives = item
            try:
                failed = self._deliver(message_id, body, receives)
            finally:
                with self._cond:
                    self._in_flight -= 1
            if failed:
                if receives >= self.max_receives:
                    log.error(
                        "%s: message %s moved to the dead-letter list after %d receives",
                        self.name,
                        message_id,
                        receives,
                    )
                    self.dead_letters.append(body)
                else:
                    self._push(body, self.visibility_timeout, message_id, receives)

    def _deliver(self, message_id: str, body: dict[str, Any], receives: int) -> bool:
        try:
            response = self.handler(
                sqs_event(self.name, [(message_id, body, receives)]), LambdaContext(function_name=self.name)
            )
        except Exception:
            log.exception("%s: handler crashed", self.name)
            return True
        return bool((response or {}).get("batchItemFailures"))
