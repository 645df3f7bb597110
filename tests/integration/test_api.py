"""The HTTP contract: auth, ownership, idempotency, input errors with the field named, listings."""

from __future__ import annotations

import hashlib
import json
import socket
import uuid
from typing import Any

import httpx
import pytest

from babychain.local.runner import LocalEngine
from tests.conftest import KEY_A, KEY_B, client_for, wait_for_run
from tests.integration.requests import SEED_CHAIN1, chain_request


def _error(response: httpx.Response, status: int, code: str, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    if field is not None:
        assert error["field"] == field
    assert "Traceback" not in response.text
    return error


def test_missing_and_invalid_keys_are_401(engine: LocalEngine) -> None:
    with client_for(engine, key=None) as anonymous:
        _error(anonymous.get("/api/v1/chains"), 401, "missing_api_key")
        _error(anonymous.post("/api/v1/chains/chain1/runs", json=SEED_CHAIN1), 401, "missing_api_key")
    with client_for(engine, key="bc_not_a_real_key_123") as wrong:
        response = wrong.get("/api/v1/chains/runs")
        _error(response, 401, "invalid_api_key")
        assert response.headers["www-authenticate"] == "Bearer"


def test_health_needs_no_key(engine: LocalEngine) -> None:
    response = httpx.get(engine.base_url + "/api/health")
    assert response.status_code == 200 and response.json()["database"] == "ok"


def test_another_callers_run_is_404_for_get_cancel_and_list(client: httpx.Client, engine: LocalEngine) -> None:
    run_id = client.post("/api/v1/chains/chain1/runs", json=SEED_CHAIN1).json()["id"]
    with client_for(engine, key=KEY_B) as other:
        _error(other.get(f"/api/v1/chains/get/{run_id}"), 404, "run_not_found")
        _error(other.post(f"/api/v1/chains/cancel/{run_id}"), 404, "run_not_found")
        assert run_id not in [r["id"] for r in other.get("/api/v1/chains/runs").json()["data"]]
    assert client.get(f"/api/v1/chains/get/{run_id}").status_code == 200


def test_database_key_is_stored_hashed_and_works(engine: LocalEngine) -> None:
    from babychain.auth import create_key
    from babychain.services import services

    key = create_key(services().store, "ci")
    assert engine.store is not None
    with engine.store._pool.connection() as conn:
        stored = conn.execute("select key_hash from api_keys where name = 'ci'").fetchall()
    assert stored and key not in {row[0] for row in stored}
    with client_for(engine, key=key) as db_client:
        run_id = db_client.post("/api/v1/chains/chain1/runs", json=SEED_CHAIN1).json()["id"]
        assert db_client.get(f"/api/v1/chains/get/{run_id}").status_code == 200
    with client_for(engine) as env_client:
        _error(env_client.get(f"/api/v1/chains/get/{run_id}"), 404, "run_not_found")


def test_a_run_stored_by_an_earlier_version_still_replays(engine: LocalEngine, client: httpx.Client) -> None:
    # The request hash as every earlier version computed and stored it: the canonical JSON of chain and body.
    canonical = json.dumps({"chain": "chain1", "body": SEED_CHAIN1}, sort_keys=True, separators=(",", ":"))
    stored = hashlib.sha256(canonical.encode()).hexdigest()
    headers = {"Idempotency-Key": f"stored-before-{uuid.uuid4()}"}
    first = client.post("/api/v1/chains/chain1/runs", json=SEED_CHAIN1, headers=headers)
    assert first.status_code == 202, first.text
    assert engine.store is not None
    with engine.store._pool.connection() as conn:
        conn.execute("update chain_runs set request_hash = %s where id = %s", (stored, first.json()["id"]))
    reordered = json.loads(json.dumps(SEED_CHAIN1), object_pairs_hook=lambda p: dict(reversed(p)))
    replay = client.post("/api/v1/chains/chain1/runs", json=reordered, headers=headers)
    assert replay.status_code == 202, replay.text
    assert replay.headers["idempotency-replayed"] == "true"
    assert replay.json()["id"] == first.json()["id"]


def test_idempotent_replay_and_conflict(engine: LocalEngine, client: httpx.Client) -> None:
    headers = {"Idempotency-Key": f"sky-blue-{uuid.uuid4()}"}  # the database is shared across tests
    first = client.post("/api/v1/chains/chain1/runs", json=SEED_CHAIN1, headers=headers)
    # Same body with keys in another order is the same request.
    reordered = json.loads(json.dumps(SEED_CHAIN1), object_pairs_hook=lambda p: dict(reversed(p)))
    replay = client.post("/api/v1/chains/chain1/runs", json=reordered, headers=headers)
    assert first.status_code == replay.status_code == 202
    assert replay.json()["id"] == first.json()["id"]
    assert replay.headers["idempotency-replayed"] == "true"
    changed = json.loads(json.dumps(SEED_CHAIN1))
    changed["input"]["text_to_image_params"]["seed"] = 594
    error = _error(
        client.post("/api/v1/chains/chain1/runs", json=changed, headers=headers),
        409,
        "idempotency_conflict",
        "Idempotency-Key",
    )
    assert error["details"]["run_id"] == first.json()["id"]
    # Keys are scoped per caller.
    with client_for(engine, key=KEY_B) as other:
        assert (
            other.post("/api/v1/chains/chain1/runs", json=SEED_CHAIN1, headers=headers).json()["id"]
            != first.json()["id"]
        )
    runs = client.get("/api/v1/chains/runs").json()["data"]
    assert [r["id"] for r in runs].count(first.json()["id"]) == 1
    _error(
        client.post("/api/v1/chains/chain1/runs", json=SEED_CHAIN1, headers={"Idempotency-Key": "no spaces"}),
        400,
        "invalid_idempotency_key",
    )


def _with(path: str, value: Any) -> dict[str, Any]:
    body = json.loads(json.dumps(SEED_CHAIN1))
    *parents, last = path.split(".")
    node = body
    for part in parents:
        node = node[part]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return body


_DELETE = object()


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        (
            _with("input.text_to_image_params.prompt", _DELETE),
            400,
            "invalid_chain_input",
            "input.text_to_image_params.prompt",
        ),
        (
            _with("input.chain_models.image_to_video_model", "bfl/flux-2-pro"),
            400,
            "invalid_chain_input",
            "input.chain_models.image_to_video_model",
        ),
        (
            _with("input.chain_models.text_to_image_model", "acme/imaginary-1"),
            400,
            "unsupported_model_identifier",
            "input.chain_models.text_to_image_model",
        ),
        (
            _with("input.text_to_image_params.api_key", "sk-123"),
            400,
            "invalid_chain_input",
            "input.text_to_image_params.api_key",
        ),
        (
            _with("input.text_to_image_params.model", "flux-dev"),
            400,
            "invalid_chain_input",
            "input.text_to_image_params.model",
        ),
        (
            _with("input.text_to_image_params.width", 1000),
            400,
            "invalid_chain_input",
            "input.text_to_image_params.width",
        ),
        (
            _with("input.image_to_video_params.content", [{"type": "text", "text": "x", "token": "t"}]),
            400,
            "invalid_chain_input",
            "input.image_to_video_params.content[0].token",
        ),
        (
            _with(
                "input.image_to_video_params.content",
                [{"type": "image_url", "image_url": {"url": "https://93.184.216.34/c.png"}}],
            ),
            400,
            "invalid_chain_input",
            "input.image_to_video_params.content",
        ),
        (
            _with("input.image_to_video_params.duration", 60),
            400,
            "invalid_chain_input",
            "input.image_to_video_params.duration",
        ),
        (_with("input.extra", 1), 400, "invalid_chain_input", "input.extra"),
        (_with("webhook_url", "http://example.com/hook"), 400, "invalid_callback_url", "webhook_url"),
        (_with("webhook_url", "https://169.254.169.254/latest"), 400, "invalid_callback_url", "webhook_url"),
        (
            _with(
                "input.image_to_video_params.content",
                [
                    {"type": "text", "text": "x"},
                    {"type": "image_url", "image_url": {"url": "https://10.0.0.1/a.png"}, "role": "first_frame"},
                ],
            ),
            400,
            "invalid_chain_input",
            "input.image_to_video_params.content[1].image_url.url",  # the media type names the very field
        ),
        ({"inputs": {}}, 400, "invalid_request", "inputs"),
        ([1, 2], 400, "invalid_request", None),
    ],
)
def test_bad_bodies_get_a_clear_4xx_naming_the_field(
    client: httpx.Client, body: Any, status: int, code: str, field: str | None
) -> None:
    _error(client.post("/api/v1/chains/chain1/runs", json=body), status, code, field)


def test_invalid_json_unknown_chain_and_oversized_body(client: httpx.Client) -> None:
    _error(
        client.post("/api/v1/chains/chain1/runs", content=b"{not json", headers={"Content-Type": "application/json"}),
        400,
        "invalid_json",
    )
    _error(client.post("/api/v1/chains/chain9/runs", json=SEED_CHAIN1), 404, "chain_not_found")
    big = _with("input.text_to_image_params.prompt", "x" * (300 * 1024))
    _error(client.post("/api/v1/chains/chain1/runs", json=big), 413, "payload_too_large")
    _error(client.get("/api/v1/chains/get/not-a-uuid"), 400, "invalid_run_id")
    _error(client.get("/api/v1/nothing/here"), 404, "route_not_found")


def test_chain2_needs_a_source_image_and_downstream_steps_refuse_caller_inputs(client: httpx.Client) -> None:
    body = chain_request("chain2", None)
    _error(
        client.post("/api/v1/chains/chain2/runs", json=body),
        400,
        "invalid_chain_input",
        "input.image_to_image_params.input_image",
    )
    body = chain_request("chain3", None)
    body["input"]["image_to_image_params"]["input_image"] = "https://93.184.216.34/x.png"
    _error(
        client.post("/api/v1/chains/chain3/runs", json=body),
        400,
        "invalid_chain_input",
        "input.image_to_image_params.input_image",
    )


def test_list_runs_newest_first_with_cursor_and_filters(engine: LocalEngine) -> None:
    from babychain.auth import create_key
    from babychain.services import services

    # A fresh caller: the database is shared by the whole test session.
    with client_for(engine, key=create_key(services().store, "lister")) as client:
        ids = [client.post("/api/v1/chains/chain1/runs", json=SEED_CHAIN1).json()["id"] for _ in range(3)]
        third = client.post("/api/v1/chains/chain3/runs", json=chain_request("chain3", None)).json()["id"]
        client.post(f"/api/v1/chains/cancel/{ids[0]}")
        page1 = client.get("/api/v1/chains/runs", params={"limit": 2}).json()
        assert [r["id"] for r in page1["data"]] == [third, ids[2]]
        assert page1["has_more"] is True
        page2 = client.get("/api/v1/chains/runs", params={"limit": 2, "cursor": page1["next_cursor"]}).json()
        assert [r["id"] for r in page2["data"]] == [ids[1], ids[0]]
        assert page2["has_more"] is False and page2["next_cursor"] is None
        canceled = client.get("/api/v1/chains/runs", params={"status": "canceled"}).json()["data"]
        assert [r["id"] for r in canceled] == [ids[0]]
        chain3 = client.get("/api/v1/chains/runs", params={"chain_slug": "chain303"}).json()["data"]
        assert [r["id"] for r in chain3] == [third]
        _error(client.get("/api/v1/chains/runs", params={"limit": 0}), 400, "invalid_request", "limit")
        _error(client.get("/api/v1/chains/runs", params={"cursor": "garbage"}), 400, "invalid_request", "cursor")
        for run_id in [*ids[1:], third]:
            wait_for_run(client, run_id)


def test_chains_and_models_listings(client: httpx.Client) -> None:
    chains = client.get("/api/v1/chains").json()
    assert chains["object"] == "list"
    by_slug = {c["slug"]: c for c in chains["data"]}
    assert set(by_slug) == {"chain1", "chain2", "chain3"}
    assert by_slug["chain3"]["alias"] == "chain303"
    assert by_slug["chain3"]["version"] == "2026-05-23"
    steps = by_slug["chain3"]["steps"]
    assert [s["key"] for s in steps] == ["text_to_image", "image_to_image", "image_to_video"]
    assert steps[2]["depends_on"] == ["image_to_image"]
    assert "bytedance/seedance-1.5-pro" in steps[2]["allowed_models"]
    assert "bfl/flux-1.1-pro" not in steps[1]["allowed_models"]
    assert "prompt" in steps[0]["params_schemas"]["bfl/flux-2-flex"]["properties"]
    models = client.get("/api/v1/models").json()["data"]
    by_id = {m["id"]: m for m in models}
    assert by_id["bytedance/seedance-1.5-pro"]["kind"] == "video"
    assert set(by_id["bfl/flux-2-pro"]["schemas"]) == {"byok", "babysea"}


def test_an_unreachable_database_is_a_503_without_details(engine: LocalEngine) -> None:
    import dataclasses

    from babychain.local.lambda_shim import LambdaContext, http_event, load_handler
    from babychain.services import install, services
    from babychain.store.supabase import SupabaseStore

    # The list handler, invoked as Lambda would, with a Supabase store whose gateway is gone (nothing on port 9).
    working = services()
    install(dataclasses.replace(working, store=SupabaseStore("http://127.0.0.1:9", "service-role-key-123456")))
    try:
        event = http_event(
            "GET", "/api/v1/chains/runs", "", {"authorization": f"Bearer {KEY_A}"}, b"", "GET /api/v1/chains/runs", {}
        )
        response = load_handler("list")(event, LambdaContext(function_name="list"))
    finally:
        install(working)
    assert response["statusCode"] == 503, response
    error = json.loads(response["body"])["error"]
    assert error["code"] == "database_unreachable"
    assert "service-role-key" not in response["body"] and "9" not in error["message"]


def test_store_errors_from_postgres_are_a_503_and_a_500(engine: LocalEngine, password_role: dict[str, str]) -> None:
    import dataclasses

    from babychain.local.lambda_shim import LambdaContext, http_event, load_handler
    from babychain.services import install, services
    from babychain.store.postgres import PostgresStore

    def list_runs_with(store: PostgresStore) -> dict[str, Any]:
        working = services()
        install(dataclasses.replace(working, store=store))
        try:
            event = http_event(
                "GET",
                "/api/v1/chains/runs",
                "",
                {"authorization": f"Bearer {KEY_A}"},
                b"",
                "GET /api/v1/chains/runs",
                {},
            )
            response: dict[str, Any] = load_handler("list")(event, LambdaContext(function_name="list"))
            return response
        finally:
            install(working)
            store.close()

    # Nothing listens on the port: unreachable, retry later.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    down = list_runs_with(PostgresStore(f"postgresql://babychain:pw-4567@127.0.0.1:{port}/babychain", timeout=1.0))
    assert down["statusCode"] == 503, down
    assert json.loads(down["body"])["error"]["code"] == "database_unreachable"

    # The server refuses the password: a configuration error, and no detail of it in the answer.
    refused = list_runs_with(PostgresStore(password_role["dsn_wrong"], timeout=1.0))
    assert refused["statusCode"] == 500, refused
    error = json.loads(refused["body"])["error"]
    assert error["code"] == "configuration_error"
    assert password_role["user"] not in refused["body"] and "password" not in error["message"]
