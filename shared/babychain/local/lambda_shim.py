"""What the one-machine shape needs to call the real Lambda handlers: loading them, their events, a context."""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.util
import json
import re
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import unquote_plus

FUNCTIONS_DIR = Path(__file__).resolve().parents[3] / "functions"

Handler = Callable[[dict[str, Any], Any], Any]

# Method, route (API Gateway syntax, as in template.yaml), function folder.
ROUTES: tuple[tuple[str, str, str], ...] = (
    ("GET", "/api/health", "list"),
    ("GET", "/api/v1/chains", "list"),
    ("GET", "/api/v1/chains/runs", "list"),
    ("GET", "/api/v1/models", "list"),
    ("GET", "/api/v1/openapi.json", "list"),
    ("POST", "/api/v1/chains/{slug}/runs", "create_run"),
    ("GET", "/api/v1/chains/get/{run_id}", "get_run"),
    ("POST", "/api/v1/chains/cancel/{run_id}", "cancel_run"),
    ("POST", "/api/v1/webhooks/{provider}", "provider_webhook"),
    ("POST", "/api/v1/webhooks/{provider}/{step_id}/{token}", "provider_webhook"),
)


def _route_pattern(route: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", route) + "$")


_COMPILED = [(method, route, function, _route_pattern(route)) for method, route, function in ROUTES]
# Per request, a dict lookup for the routes without parameters, then only the method's templated routes, each with its
# route key built once. The static routes come first in ROUTES, so trying them first keeps its first-match order.
_STATIC = {(method, route): (function, f"{method} {route}") for method, route, function in ROUTES if "{" not in route}
_TEMPLATED: dict[str, list[tuple[re.Pattern[str], str, str]]] = {}
for _method, _route, _function, _pattern in _COMPILED:
    if "{" in _route:
        _TEMPLATED.setdefault(_method, []).append((_pattern, _function, f"{_method} {_route}"))
assert [r for r in ROUTES if "{" not in r[1]] == list(ROUTES[: len(_STATIC)]), "static routes go first in ROUTES"


def match_route(method: str, path: str) -> tuple[str, str, dict[str, str]] | None:
    """Returns (function, route key, path parameters) for a request, like API Gateway's router."""
    static = _STATIC.get((method, path))
    if static is not None:
        return static[0], static[1], {}
    for pattern, function, route_key in _TEMPLATED.get(method, ()):
        m = pattern.match(path)
        if m:
            return function, route_key, m.groupdict()
    return None


def route_methods(path: str) -> list[str]:
    """The methods some route accepts at `path` (for a 405 with its Allow header); empty when no route matches."""
    return sorted({method for method, _route, _function, pattern in _COMPILED if pattern.match(path)})


API_FUNCTIONS = tuple(sorted({function for _method, _route, function in ROUTES}))

_loaded: dict[str, ModuleType] = {}


def load_function(function: str) -> ModuleType:
    """Imports functions/<function>/app.py by path (each Lambda's code is its own folder), once per process."""
    if function not in _loaded:
        path = FUNCTIONS_DIR / function / "app.py"
        name = f"babychain_functions.{function}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"no handler at {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        _loaded[function] = module
    return _loaded[function]


def load_handler(function: str) -> Handler:
    """The Lambda handler of functions/<function>/app.py."""
    handler: Handler = load_function(function).lambda_handler
    return handler


@dataclass
class LambdaContext:
    function_name: str
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = ""
    log_group_name: str = ""
    log_stream_name: str = ""

    def __post_init__(self) -> None:
        self.invoked_function_arn = f"arn:aws:lambda:local:000000000000:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return 300_000


def http_event(
    method: str,
    path: str,
    query: str,
    headers: dict[str, str],
    body: bytes,
    route_key: str,
    path_parameters: dict[str, str],
) -> dict[str, Any]:
    """An API Gateway HTTP API (payload format 2.0) event."""
    lowered = {k.lower(): v for k, v in headers.items()}
    return lowered_http_event(method, path, query, lowered, body, route_key, path_parameters)


def lowered_http_event(
    method: str,
    path: str,
    query: str,
    headers: dict[str, str],
    body: bytes,
    route_key: str,
    path_parameters: dict[str, str],
    source_ip: str = "127.0.0.1",
) -> dict[str, Any]:
    """`http_event` for headers whose names are lower-case already (the HTTP edge's): the dict becomes the event's."""
    if not body:
        text, is_base64 = None, False
    else:
        try:
            text, is_base64 = body.decode(), False
        except UnicodeDecodeError:
            text, is_base64 = base64.b64encode(body).decode(), True
    query_params: dict[str, str] = {}
    if query:
        for part in query.split("&"):
            if part:
                key, _, value = part.partition("=")
                query_params[unquote_plus(key)] = unquote_plus(value)
    now = time.time()
    return {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": path,
        "rawQueryString": query,
        "headers": headers,
        "queryStringParameters": query_params or None,
        "pathParameters": path_parameters or None,
        "requestContext": {
            "accountId": "000000000000",
            "apiId": "local",
            "domainName": "localhost",
            "domainPrefix": "localhost",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": headers.get("user-agent", ""),
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": route_key,
            "stage": "$default",
            "time": _request_time(int(now)),
            "timeEpoch": int(now * 1000),
        },
        "body": text,
        "isBase64Encoded": is_base64,
    }


@functools.lru_cache(maxsize=2)  # the same text for every request within a second
def _request_time(second: int) -> str:
    """API Gateway's `requestContext.time`: `02/Dec/2026:01:10:00 +0000`."""
    return time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(second))


def sqs_event(queue_name: str, messages: list[tuple[str, dict[str, Any], int]]) -> dict[str, Any]:
    """An SQS batch event; each message is (message id, body, receive count)."""
    records = []
    for message_id, body, receive_count in messages:
        text = json.dumps(body)
        records.append(
            {
                "messageId": message_id,
                "receiptHandle": f"local-{message_id}-{receive_count}",
                "body": text,
                "attributes": {
                    "ApproximateReceiveCount": str(receive_count),
                    "SentTimestamp": str(int(time.time() * 1000)),
                    "SenderId": "local",
                    "ApproximateFirstReceiveTimestamp": str(int(time.time() * 1000)),
                },
                "messageAttributes": {},
                "md5OfBody": hashlib.md5(text.encode()).hexdigest(),
                "eventSource": "aws:sqs",
                "eventSourceARN": f"arn:aws:sqs:local:000000000000:{queue_name}",
                "awsRegion": "local",
            }
        )
    return {"Records": records}


def scheduled_event() -> dict[str, Any]:
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "000000000000",
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": "local",
        "resources": ["arn:aws:events:local:000000000000:rule/babychain-sweeper"],
        "detail": {},
    }
