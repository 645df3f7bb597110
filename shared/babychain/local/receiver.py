"""A loopback webhook receiver that verifies Standard Webhooks signatures: the caller's side of the callback."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from babychain.local.loopback import LoopbackServer, QuietHandler
from babychain.security.webhooks import verify


@dataclass(frozen=True)
class Delivery:
    headers: dict[str, str]
    body: bytes
    verified: bool
    answered: int
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


class WebhookReceiver(LoopbackServer):
    """Records every delivery. `answers` scripts the HTTP status of the first deliveries (e.g. [500, 500]); a 3xx
    answer carries `Location: <location>` when one is given."""

    def __init__(
        self,
        secret: str,
        *,
        answers: list[int] | None = None,
        location: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        on_delivery: Callable[[Delivery], None] | None = None,
    ) -> None:
        self.secret = secret
        self.on_delivery = on_delivery
        self.answers = list(answers or [])
        self.location = location
        self.deliveries: list[Delivery] = []
        self._arrived = threading.Condition()
        super().__init__(self._handler_class(), host=host, port=port, name="webhook-receiver")

    @property
    def url(self) -> str:
        return self.base_url + "/hooks/babychain"

    def wait_for(self, count: int, timeout: float) -> list[Delivery]:
        with self._arrived:
            self._arrived.wait_for(lambda: len(self.deliveries) >= count, timeout)
            return list(self.deliveries)

    def _handler_class(self) -> type[QuietHandler]:
        receiver = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                body = self.read_body()
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver._arrived:
                    status = receiver.answers.pop(0) if receiver.answers else 204
                    delivery = Delivery(headers, body, verify(receiver.secret, headers, body), status)
                    if receiver.on_delivery is not None:
                        # Before waiters see the delivery: what it writes is there once `wait_for` returns.
                        receiver.on_delivery(delivery)
                    receiver.deliveries.append(delivery)
                    receiver._arrived.notify_all()
                redirect = 300 <= status < 400 and receiver.location is not None
                self.send_bytes(status, headers={"Location": str(receiver.location)} if redirect else None)

        return Handler
