"""A loopback webhook receiver that verifies Standard Webhooks signatures: the caller's side of the callback."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from babychain.security.webhooks import verify


@dataclass(frozen=True)
class Delivery:
    headers: dict[str, str]
    body: bytes
    verified: bool
    answered: int

    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


class WebhookReceiver:
    """Records every delivery. `answers` scripts the HTTP status of the first deliveries (e.g. [500, 500])."""

    def __init__(
        self,
        secret: str,
        *,
        answers: list[int] | None = None,
        host: str = "127.0.0.1",
        on_delivery: Callable[[Delivery], None] | None = None,
    ) -> None:
        self.secret = secret
        self.on_delivery = on_delivery
        self.answers = list(answers or [])
        self.deliveries: list[Delivery] = []
        self._arrived = threading.Condition()
        self._httpd = ThreadingHTTPServer((host, 0), self._handler_class())
        self._httpd.daemon_threads = True

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}/hooks/babychain"

    def start(self) -> WebhookReceiver:
        threading.Thread(target=self._httpd.serve_forever, name="webhook-receiver", daemon=True).start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def wait_for(self, count: int, timeout: float) -> list[Delivery]:
        with self._arrived:
            self._arrived.wait_for(lambda: len(self.deliveries) >= count, timeout)
            return list(self.deliveries)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver._arrived:
                    status = receiver.answers.pop(0) if receiver.answers else 204
                    delivery = Delivery(headers, body, verify(receiver.secret, headers, body), status)
                    receiver.deliveries.append(delivery)
                    receiver._arrived.notify_all()
                if receiver.on_delivery is not None:
                    receiver.on_delivery(delivery)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        return Handler
