"""The HTTP edge shared by every API function: one resolver setup, one error shape, one body reader, and the caller:
key, per-key rate limit and scope, in that order."""

from __future__ import annotations

import base64
import binascii
import json
import logging
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response

from babychain.api.auth import Principal, admit, identify, require_scope
from babychain.errors import ApiError, ConfigurationError
from babychain.security.params import strict_json
from babychain.services import Services, services
from babychain.store.errors import StoreAuthError, StoreUnavailable

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 * 1024
NO_STORE = {"Cache-Control": "no-store"}


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(
        status_code=status,
        content_type="application/json",
        body=json.dumps(body, separators=(",", ":")),
        headers={**NO_STORE, **(headers or {})},
    )


def error_response(error: ApiError) -> Response:
    return json_response(error.status, error.body(), error.headers)


class EdgeResolver(APIGatewayHttpResolver):
    """The resolver of every API function. `edge_headers` go on whatever response the invocation ends with (the
    route's, an error's, even an unexpected 500): `caller` puts the rate-limit budget there once the key is known."""

    def __init__(self) -> None:
        super().__init__()
        self.edge_headers: dict[str, str] = {}

    def resolve(self, event: Any, context: Any) -> dict[str, Any]:
        self.edge_headers = {}
        try:
            response = super().resolve(event, context)
            if self.edge_headers:
                response["headers"] = {**(response.get("headers") or {}), **self.edge_headers}
            return response
        finally:
            self.edge_headers = {}


def make_resolver() -> EdgeResolver:
    app = EdgeResolver()

    @app.exception_handler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return error_response(exc)

    @app.exception_handler(Exception)
    def _unexpected(exc: Exception) -> Response:
        # Every store adapter raises the store's own errors, whatever its driver (babychain.store.errors).
        if isinstance(exc, StoreUnavailable):
            log.error("database unreachable: %s", type(exc).__name__)
            return error_response(ApiError(503, "database_unreachable", "The database is unreachable; retry soon."))
        if isinstance(exc, ConfigurationError | StoreAuthError):
            log.error("configuration error: %s", exc)
            return error_response(ApiError(500, "configuration_error", "The server is misconfigured."))
        log.exception("unhandled error")
        return error_response(ApiError(500, "internal_error", "Internal server error."))

    @app.not_found
    def _no_route(exc: Exception) -> Response:
        return error_response(ApiError(404, "route_not_found", "No such route."))

    return app


def read_json_body(app: APIGatewayHttpResolver) -> Any:
    """The request's JSON body, decoded strictly (`security.params.strict_json`) within the size limit."""
    event = app.current_event
    declared = event.headers.get("content-length")
    if (declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES) or len(event.body or "") > (
        MAX_BODY_BYTES * 4 // 3 + 4
    ):
        raise ApiError(413, "payload_too_large", f"Request body is larger than {MAX_BODY_BYTES} bytes.")
    try:
        raw = raw_body(app)
    except (ValueError, binascii.Error):
        raise ApiError(400, "invalid_json", "Request body is not valid base64.") from None
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, "payload_too_large", f"Request body is larger than {MAX_BODY_BYTES} bytes.")
    if not raw.strip():
        raise ApiError(400, "invalid_json", "Request body must be a JSON object.")
    return strict_json(raw)


def raw_body(app: APIGatewayHttpResolver) -> bytes:
    """The request body exactly as received (webhook signatures are over these bytes)."""
    event = app.current_event
    body = event.body or ""
    return base64.b64decode(body) if event.is_base64_encoded else body.encode()


def caller(app: EdgeResolver, scope: str) -> tuple[Services, Principal]:
    """Who the request acts for: a valid key (401), within its rate limit (429), with the route's scope (403). From
    the moment the key is known, every response carries the key's budget (`RateLimit-*`) when rate limiting is on."""
    svc = services()
    principal = identify(svc, app.current_event.headers)
    app.edge_headers.update(admit(svc, principal))
    require_scope(principal, scope)
    return svc, principal
