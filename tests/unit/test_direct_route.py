"""`EdgeResolver` calls an `Api` route without Powertools' middleware stack: every answer (a route's response, an
`ApiError`, an unexpected error, a parameter that fails its check, no route at all) is the one the stack gives."""

from __future__ import annotations

from typing import Any

import pytest
from aws_lambda_powertools.event_handler import Response

from babychain.api.http import Api, json_response
from babychain.api.routes import PathText, RunId
from babychain.errors import ApiError
from babychain.local.lambda_shim import LambdaContext, http_event

api = Api()
calls: list[str] = []


@api.get("/api/v1/things/<run_id>", security=[], summary="a thing")
def get_thing(run_id: RunId) -> Response:
    calls.append(run_id)
    return json_response(200, {"id": run_id, "object": "thing"}, {"X-Extra": "1"})


@api.post("/api/v1/things/<name>/fail", security=[], summary="fails")
def fail(name: PathText) -> Response:
    calls.append(name)
    if name == "api":
        raise ApiError(409, "conflict", "Taken.", field="name", details={"name": name})
    raise RuntimeError("boom")


RUN_ID = "0b7f3c0e-2f6c-4d3a-9d7e-3a1f0c2b4d5e"
CASES = [
    ("GET", f"/api/v1/things/{RUN_ID}", "GET /api/v1/things/{run_id}", {"run_id": RUN_ID}),
    ("GET", "/api/v1/things/not-a-uuid", "GET /api/v1/things/{run_id}", {"run_id": "not-a-uuid"}),
    ("POST", "/api/v1/things/api/fail", "POST /api/v1/things/{name}/fail", {"name": "api"}),
    ("POST", "/api/v1/things/other/fail", "POST /api/v1/things/{name}/fail", {"name": "other"}),
    ("GET", "/api/v1/nothing", "$default", {}),
    ("DELETE", f"/api/v1/things/{RUN_ID}", "$default", {}),
]


def _answer(method: str, path: str, route_key: str, params: dict[str, str]) -> dict[str, Any]:
    event = http_event(method, path, "", {"user-agent": "t"}, b"", route_key, params)
    answer: dict[str, Any] = api.lambda_handler(event, LambdaContext(function_name="things"))
    return answer


@pytest.mark.parametrize(("method", "path", "route_key", "params"), CASES)
def test_a_direct_call_answers_as_the_middleware_stack(
    method: str, path: str, route_key: str, params: dict[str, str]
) -> None:
    routes = api.app._static_routes + api.app._dynamic_routes
    assert routes and all(getattr(r.func, "direct", False) for r in routes)
    calls.clear()
    direct = _answer(method, path, route_key, params)
    direct_calls = list(calls)
    for route in routes:
        route.func.direct = False  # Powertools' own path: the middleware stack and its adapter
    try:
        calls.clear()
        stacked = _answer(method, path, route_key, params)
    finally:
        for route in routes:
            route.func.direct = True
    assert direct == stacked
    assert direct_calls == calls
    assert direct["statusCode"] in (200, 400, 404, 405, 409, 500)


def test_the_direct_call_is_taken() -> None:
    """Without it the comparison above compares Powertools with itself: the middleware frames are not entered."""
    frames: list[str] = []
    api.app._push_processed_stack_frame = frames.append  # type: ignore[method-assign]
    try:
        assert _answer(*CASES[0])["statusCode"] == 200
        assert frames == []
        api.app._dynamic_routes[0].func.direct = False
        assert _answer(*CASES[0])["statusCode"] == 200
        assert frames  # the stack's frames, when the route is not called directly
    finally:
        api.app._dynamic_routes[0].func.direct = True
        del api.app._push_processed_stack_frame
