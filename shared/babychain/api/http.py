"""The HTTP edge shared by every API function: one resolver setup, one error shape, one body reader, and one
prologue per route (`Api`): the caller's key, per-key rate limit and scope, in that order, then the route's typed
parameters and body.

The routes are declared with the light types of `babychain.api.routes` and checked here by small checks that give
pydantic's messages: no API handler imports pydantic to start (Powertools' request validation would, about 60 ms of
each cold start). The same declarations make the OpenAPI document (`babychain.api.openapi`), with Powertools' typed
parameters and the models of `babychain.api.schemas`. The body is read by the strict reader below whatever its
Content-Type (UTF-8 JSON, bounded numbers, no NUL or lone surrogates, within the size limit), and responses go out as
the handler built them (the contract tests check them against the document). A failed check is a 400 in the one error
shape naming the field, and only after the caller's key, rate limit and scope have been checked, as for every other
error.
"""

from __future__ import annotations

import base64
import binascii
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, NamedTuple, get_type_hints
from urllib.parse import parse_qs

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, api_gateway
from aws_lambda_powertools.event_handler.api_gateway import ResponseBuilder, Route
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEventV2

from babychain.api.auth import Principal, admit, identify, require_scope
from babychain.api.routes import Body, Invalid, Param, check_body, check_value, parameter_spec, required_scope
from babychain.errors import ApiError, ConfigurationError
from babychain.json_encoding import one_shot_encoder
from babychain.observability import instrumented
from babychain.security.params import strict_json
from babychain.services import Services, services
from babychain.store.errors import StoreAuthError, StoreUnavailable

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 * 1024
NO_STORE = {"Cache-Control": "no-store"}
# The response body's JSON text from one prebuilt encoder (`json.dumps(body, separators=(",", ":"))`'s text).
_COMPACT = one_shot_encoder(separators=(",", ":"))


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    # A str body: Powertools sends it as it is (it serialises only a body that is not a string yet).
    return Response(
        status_code=status,
        content_type="application/json",
        body=_COMPACT(body),
        headers={**NO_STORE, **headers} if headers else dict(NO_STORE),
    )


def text_response(status: int, text: str, content_type: str, headers: dict[str, str] | None = None) -> Response:
    return Response(status_code=status, content_type=content_type, body=text, headers=headers)


def error_response(error: ApiError) -> Response:
    return json_response(error.status, error.body(), error.headers)


class _Event(APIGatewayProxyEventV2):
    """The request as Powertools wraps it, with its case-insensitive headers built once per request (Powertools
    builds them again at each read: the key check, the body reader, the Idempotency-Key)."""

    @cached_property
    def headers(self) -> Any:
        return super().headers


class _ResponseBuilder(ResponseBuilder[Any]):
    """Powertools' response builder, without the compression check's work when nothing can compress: it read the
    request's headers again (a second case-insensitive dict, each value split at commas) to find `Accept-Encoding`,
    then compressed only if the route or the response asked for it. None of these routes or responses does."""

    @staticmethod
    def _has_compression_enabled(route_compression: bool, response_compression: bool | None, event: Any) -> bool:
        if not route_compression and not response_compression:
            return False  # what Powertools answers for any Accept-Encoding in this case
        return ResponseBuilder._has_compression_enabled(route_compression, response_compression, event)


class EdgeResolver(APIGatewayHttpResolver):
    """The resolver of every API function. `edge_headers` go on whatever response the invocation ends with (the
    route's, an error's, even an unexpected 500): `caller` puts the rate-limit budget there once the key is known."""

    def __init__(self) -> None:
        # No Powertools validation (it needs pydantic): `Api` checks each route's parameters. The OpenAPI document's
        # settings are given where the document is built (`babychain.api.openapi`).
        super().__init__()
        self.edge_headers: dict[str, str] = {}
        # A class, not Powertools' `ResponseBuilder[BaseProxyEvent]` alias (whose every call also sets __orig_class__).
        self._response_builder_class = _ResponseBuilder

    def _to_proxy_event(self, event: dict[str, Any]) -> _Event:
        return _Event(event, self._json_body_deserializer)

    def _call_route(self, route: Route, route_arguments: dict[str, str]) -> ResponseBuilder[Any]:
        """An `Api` route is called as Powertools' middleware stack would call it when the stack holds no middleware
        (its adapter: the route's arguments, no `Request` parameter, no `Depends`), without the stack's frames; its
        errors go to the same exception handlers. Any other route, or any middleware, validation or debug mode, takes
        Powertools' own path."""
        if (
            not getattr(route.func, "direct", False)
            or self._router_middlewares
            or route.middlewares
            or self._debug
            or self._enable_validation
            or route.enable_validation
        ):
            return super()._call_route(route, route_arguments)
        try:
            self._reset_processed_stack()
            self.append_context(_route_args=route_arguments)
            return self._response_builder_class(
                response=self._to_response(route.func(**route_arguments)),  # type: ignore[arg-type]  # as Powertools
                serializer=self._serializer,
                route=route,
            )
        except Exception as exc:
            response_builder = self._call_exception_handler(exc, route)
            if response_builder:
                return response_builder
            api_gateway.logger.exception(exc)
            raise

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


class Caller(NamedTuple):
    """Who a request acts for: a handler parameter annotated `Caller` receives it (its route needs a key)."""

    svc: Services
    principal: Principal


def caller(app: EdgeResolver, scope: str) -> Caller:
    """A valid key (401), within its rate limit (429), with `scope` (403). From the moment the key is known, every
    response carries the key's budget (`RateLimit-*`) when rate limiting is on."""
    svc = services()
    principal = identify(svc, app.current_event.headers)
    app.edge_headers.update(admit(svc, principal))
    require_scope(principal, scope)
    return Caller(svc, principal)


_ORDER = {"path": 0, "query": 1, "header": 2}  # the order pydantic's errors came in: the first one is reported


@dataclass(frozen=True)
class Declared:
    """One route as its handler declared it: what the OpenAPI document is built from (`babychain.api.openapi`)."""

    method: str
    path: str
    func: Callable[..., Response]
    security: list[dict[str, list[str]]]
    openapi: dict[str, Any]


@dataclass(frozen=True)
class _Input:
    name: str
    annotation: Any
    spec: Param | Body
    default: Any


class Api:
    """An API function: its resolver, its routes and its Lambda handler. Every route gets the same prologue: the
    caller (when its security names a scope), then its parameters and body checked against their declared types; the
    handler function receives them converted (and the `Caller`), as Powertools' validation would pass them."""

    def __init__(self) -> None:
        self.app = make_resolver()
        self.routes: list[Declared] = []
        app = self.app

        def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
            return app.resolve(event, context)

        # Named as before: the tracer's subsegment (`## lambda_handler`) and the logs keep their names.
        self.lambda_handler = instrumented(correlation_paths.API_GATEWAY_HTTP)(lambda_handler)

    def get(self, path: str, **declared: Any) -> Callable[[Callable[..., Response]], Callable[..., Response]]:
        return self.route("GET", path, **declared)

    def post(self, path: str, **declared: Any) -> Callable[[Callable[..., Response]], Callable[..., Response]]:
        return self.route("POST", path, **declared)

    def route(
        self, method: str, path: str, *, security: list[dict[str, list[str]]], **openapi: Any
    ) -> Callable[[Callable[..., Response]], Callable[..., Response]]:
        """`openapi`: the operation's summary, description, tags, operation_id and responses (`routes.answers`)."""

        def register(func: Callable[..., Response]) -> Callable[..., Response]:
            self.routes.append(Declared(method, path, func, security, openapi))
            self.app.route(path, method)(self._endpoint(func, required_scope(security)))
            return func

        return register

    def _endpoint(self, func: Callable[..., Response], scope: str | None) -> Callable[..., Response]:
        hints = get_type_hints(func, include_extras=True)
        inputs: list[_Input] = []
        who: str | None = None
        for name, parameter in inspect.signature(func).parameters.items():
            spec = parameter_spec(hints.get(name))
            if hints.get(name) is Caller:
                who = name
            elif spec is None:
                raise ConfigurationError(f"{func.__name__}({name}): neither a Caller nor a routes parameter type")
            else:
                inputs.append(_Input(name, hints[name], spec, parameter.default))
        inputs.sort(key=lambda i: _ORDER.get(i.spec.where, 3) if isinstance(i.spec, Param) else 3)
        if (who is not None) != (scope is not None):
            raise ConfigurationError(f"{func.__name__}: a Caller parameter goes with a route that needs a key")
        app = self.app

        def endpoint(**path_args: str) -> Response:
            kwargs: dict[str, Any] = {who: caller(app, scope)} if who is not None and scope is not None else {}
            kwargs.update(_checked(app.current_event, inputs, path_args))
            return func(**kwargs)

        endpoint.__name__ = func.__name__
        endpoint.direct = True  # type: ignore[attr-defined]  # EdgeResolver may call it without the middleware stack
        return endpoint


def _checked(event: APIGatewayProxyEventV2, inputs: list[_Input], path_args: dict[str, str]) -> dict[str, Any]:
    """The handler's arguments; the first failed check as a 400 (an unknown body field before any other)."""
    values: dict[str, Any] = {}
    failed: list[Invalid] = []
    body_failed: list[Invalid] = []
    for item in inputs:
        spec = item.spec
        if isinstance(spec, Body):
            values[item.name] = body = read_json_body(event)
            body_failed = check_body(spec, body)
            continue
        name = spec.alias or item.name
        raw = _received(event, spec, name, path_args)
        if raw is None:
            if item.default is inspect.Parameter.empty:
                failed.append(Invalid("Field required", name))
            else:
                values[item.name] = item.default
            continue
        try:
            values[item.name] = check_value(item.annotation.__origin__, spec, raw, name)
        except Invalid as error:
            failed.append(error)
    first = next((e for e in body_failed if e.extra), None) or next(iter(failed + body_failed), None)
    if first is not None:
        raise first.as_api_error(body=first in body_failed)
    return values


def _received(event: APIGatewayProxyEventV2, spec: Param, name: str, path_args: dict[str, str]) -> Any:
    """A parameter's value as received: a string; a list when the query string repeats the name (as Powertools
    passed it to pydantic); None when absent."""
    if spec.where == "path":
        return path_args.get(name)
    if spec.where == "header":
        return event.headers.get(name)
    value = event.query_string_parameters.get(name)
    if value is not None and len(parse_qs(event.raw_query_string or "", keep_blank_values=True).get(name, ())) > 1:
        return value.split(",")
    return value
