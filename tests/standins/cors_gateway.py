"""An API Gateway HTTP API with a CORS configuration, in front of a local engine (for the run inspector's tests).

It forwards every request to `upstream` and does what API Gateway does once `CorsConfiguration` is set on the
HTTP API: it answers preflight `OPTIONS` requests itself, and adds `Access-Control-Allow-Origin` to the answers for
an allowed `Origin`. A request from any other origin gets its answer without CORS headers, so the browser withholds
it from the page, as it would from a real deployment without CORS.
"""

from __future__ import annotations

from typing import Any

import httpx

from babychain.local.loopback import LoopbackServer, QuietHandler

ALLOW_HEADERS = "authorization,content-type,idempotency-key"
ALLOW_METHODS = "GET,POST"
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "date", "server"}


class CorsGateway(LoopbackServer):
    def __init__(self, upstream: str, allow_origins: list[str]) -> None:
        self.upstream = upstream
        self.allow_origins = set(allow_origins)
        self.preflights: list[str] = []  # the Origin of each preflight seen
        gateway = self

        class Handler(QuietHandler, keep_alive=True):
            def _cors(self) -> dict[str, str]:
                origin = self.headers.get("Origin")
                return (
                    {"Access-Control-Allow-Origin": origin, "Vary": "Origin"} if origin in gateway.allow_origins else {}
                )

            def do_OPTIONS(self) -> None:
                gateway.preflights.append(self.headers.get("Origin") or "")
                headers = self._cors()
                if headers:
                    headers.update(
                        {
                            "Access-Control-Allow-Headers": ALLOW_HEADERS,
                            "Access-Control-Allow-Methods": ALLOW_METHODS,
                            "Access-Control-Max-Age": "600",
                        }
                    )
                self.send_bytes(204, headers=headers)

            def _forward(self) -> None:
                forwarded = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP | {"host"}}
                response = httpx.request(
                    self.command, gateway.upstream + self.path, headers=forwarded, content=self.read_body(), timeout=30
                )
                headers: dict[str, Any] = {
                    k: v for k, v in response.headers.items() if k.lower() not in HOP_BY_HOP | {"content-type"}
                }
                self.send_bytes(
                    response.status_code,
                    response.content,
                    response.headers.get("content-type"),
                    {**headers, **self._cors()},
                )

            do_GET = _forward
            do_POST = _forward

        super().__init__(Handler, name="cors-gateway")
