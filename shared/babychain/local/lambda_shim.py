"""What the one-machine shape needs to call the real Lambda handlers: loading them, their events, a context."""

from __future__ import annotations

import base64
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


def match_route(method: str, path: str) -> tuple[str, str, dict[str, str]] | None:
    """Returns (function, route key, path parameters) for a request, like API Gateway's router."""
    for route_method, route, function, pattern in _COMPILED:
        m = pattern.match(path)
        if m and route_method == method:
            return function, f"{method} {route}", m.groupdict()
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
    try:
        text, is_base64 = body.decode(), False
    except UnicodeDecodeError:
        text, is_base64 = base64.b64encode(body).decode(), True
    query_params: dict[str, str] = {}
    for part in filter(None, query.split("&")):
        key, _, value = part.partition("=")
        from urllib.parse import unquote_plus

        query_params[unquote_plus(key)] = unquote_plus(value)
    now = datetime.now(UTC)
    return {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": path,
        "rawQueryString": query,
        "headers": {k.lower(): v for k, v in headers.items()},
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
                "sourceIp": "127.0.0.1",
                "userAgent": headers.get("user-agent", ""),
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": route_key,
            "stage": "$default",
            "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "timeEpoch": int(now.timestamp() * 1000),
        },
        "body": text if body else None,
        "isBase64Encoded": is_base64,
    }


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
