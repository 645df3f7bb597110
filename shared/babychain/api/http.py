"""The HTTP edge shared by every API function: one resolver setup, one error shape, one body reader, and the caller:
key, per-key rate limit and scope, in that order.

Powertools validates each route's typed parameters and the create body's envelope (`babychain.api.schemas`), with two
changes: the body is read by the strict reader below whatever its Content-Type (UTF-8 JSON, bounded numbers, no NUL or
lone surrogates, within the size limit), and responses go out as the handler built them (the contract tests check
them against the document). A validation error is a 400 in the one error shape naming the field, and only after the
caller's key, rate limit and scope have been checked (once per request), as for every other error.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Sequence
from functools import cached_property
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.event_handler.middlewares import NextMiddleware
from aws_lambda_powertools.event_handler.middlewares.openapi_validation import (
    OpenAPIRequestValidationMiddleware,
    OpenAPIResponseValidationMiddleware,
)
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEventV2

from babychain.api.auth import Principal, admit, identify, require_scope
from babychain.api.schemas import SECURITY_SCHEME
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


def text_response(status: int, text: str, content_type: str, headers: dict[str, str] | None = None) -> Response:
    return Response(status_code=status, content_type=content_type, body=text, headers=headers)


def error_response(error: ApiError) -> Response:
    return json_response(error.status, error.body(), error.headers)


class StrictHttpEvent(APIGatewayProxyEventV2):
    """The API Gateway HTTP API event, whose JSON body is read by the strict reader (Powertools' validation reads it
    from here)."""

    @cached_property
    def json_body(self) -> Any:
        return read_json_body(self)


class CallerThenValidation(OpenAPIRequestValidationMiddleware):
    """Powertools' request validation, after the caller's key, rate limit and scope (a request without a valid key is
    a 401 whatever else is wrong with it), reading the body as JSON whatever its Content-Type (as the API always has).
    """

    def handler(self, app: Any, next_middleware: NextMiddleware) -> Response:
        if route_scope(app) is not None:
            caller(app)
        return super().handler(app, next_middleware)

    def _get_body(self, app: Any) -> Any:
        return app.current_event.json_body


class ResponsesAsBuilt(OpenAPIResponseValidationMiddleware):
    """In place of Powertools' response validation: the handler's response goes out as it built it."""

    def handler(self, app: Any, next_middleware: NextMiddleware) -> Response:
        return next_middleware(app)


# The fields whose errors have their own code (the rest are `invalid_request`).
_FIELD_CODES = {
    "run_id": "invalid_run_id",
    "Idempotency-Key": "invalid_idempotency_key",
    "input": "invalid_chain_input",
    "webhook_url": "invalid_callback_url",
}


def validation_error(errors: Sequence[Any]) -> ApiError:
    """The first of Powertools' validation errors as a 400 naming the field (`limit`, `Idempotency-Key`,
    `input.chain_models`, …)."""
    # An unknown field first (as the engine's own checks do): it often explains the missing one (`inputs`).
    first = min(errors, key=lambda e: e.get("type") != "extra_forbidden") if errors else {}
    where, *path = tuple(first.get("loc") or ("body",))
    if where == "header" and path:
        path = ["-".join(part.capitalize() for part in str(path[0]).split("-"))]
    field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".") or None
    message = str(first.get("msg") or "Invalid request").removeprefix("Value error, ")
    code = _FIELD_CODES.get(str(path[0]), "invalid_request") if path else "invalid_request"
    if field is None:
        return ApiError(400, code, f"Request body: {message}." if where == "body" else f"{message}.")
    return ApiError(400, code, f"{field}: {message}.", field=field)


def route_scope(app: APIGatewayHttpResolver) -> str | None:
    """The scope the current route's security requirement names (`schemas.requires`); None on a public route."""
    route = app.context.get("_route")
    for requirement in getattr(route, "security", None) or []:
        for scope in requirement.get(SECURITY_SCHEME, []):
            return str(scope)
    return None


class EdgeResolver(APIGatewayHttpResolver):
    """The resolver of every API function. `edge_headers` go on whatever response the invocation ends with (the
    route's, an error's, even an unexpected 500): `caller` puts the rate-limit budget there once the key is known."""

    def __init__(self) -> None:
        super().__init__(enable_validation=True)
        self._request_validation_middleware = CallerThenValidation()
        self._response_validation_middleware = ResponsesAsBuilt()
        # The OpenAPI document's settings (the security scheme) are given where the document is built
        # (`babychain.api.openapi`): Powertools' OpenAPI models take about 50 ms to import, which serving needs not.
        self.edge_headers: dict[str, str] = {}

    def _to_proxy_event(self, event: dict) -> StrictHttpEvent:
        return StrictHttpEvent(event)

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

    @app.exception_handler(RequestValidationError)
    def _invalid(exc: RequestValidationError) -> Response:
        return error_response(validation_error(exc.errors()))

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


def read_json_body(event: APIGatewayProxyEventV2) -> Any:
    """The request's JSON body, decoded strictly (`security.params.strict_json`) within the size limit."""
    declared = event.headers.get("content-length")
    if (declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES) or len(event.body or "") > (
        MAX_BODY_BYTES * 4 // 3 + 4
    ):
        raise ApiError(413, "payload_too_large", f"Request body is larger than {MAX_BODY_BYTES} bytes.")
    try:
        raw = raw_body(event)
    except (ValueError, binascii.Error):
        raise ApiError(400, "invalid_json", "Request body is not valid base64.") from None
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, "payload_too_large", f"Request body is larger than {MAX_BODY_BYTES} bytes.")
    if not raw.strip():
        raise ApiError(400, "invalid_json", "Request body must be a JSON object.")
    return strict_json(raw)


def raw_body(event: APIGatewayProxyEventV2) -> bytes:
    """The request body exactly as received (webhook signatures are over these bytes)."""
    body = event.body or ""
    return base64.b64decode(body) if event.is_base64_encoded else body.encode()


_CALLER = "babychain_caller"


def caller(app: EdgeResolver) -> tuple[Services, Principal]:
    """Who the request acts for: a valid key (401), within its rate limit (429), with the scope the route's security
    requirement names (403). From the moment the key is known, every response carries the key's budget
    (`RateLimit-*`) when rate limiting is on."""
    known: tuple[Services, Principal] | None = app.context.get(_CALLER)
    if known is not None:  # checked once per request (the validation step asks first)
        return known
    scope = route_scope(app)
    if scope is None:
        raise ConfigurationError("caller() on a route without a security requirement")
    svc = services()
    principal = identify(svc, app.current_event.headers)
    app.edge_headers.update(admit(svc, principal))
    require_scope(principal, scope)
    app.append_context(**{_CALLER: (svc, principal)})
    return svc, principal
