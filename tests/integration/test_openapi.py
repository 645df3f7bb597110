"""The OpenAPI document: generated from the code, committed without drift, complete, served, and browsable at /docs."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from babychain.api.examples import REQUEST_EXAMPLES, SEED_RESPONSE
from babychain.api.openapi import build, render
from babychain.api.routes import SECURITY_SCHEME
from babychain.local.lambda_shim import ROUTES
from babychain.local.runner import LocalEngine
from tests.conftest import KEY_A, client_for, wait_for_run
from tests.integration.requests import chain_request

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "docs" / "openapi.json"
SCOPES = {"chains:run", "chains:read", "runs:cancel"}
PUBLIC_ROUTES = {"/api/health", "/api/v1/openapi.json", "/api/v1/webhooks/{provider}"}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return build()


def _validator(document: dict[str, Any], name: str) -> Draft202012Validator:
    """A JSON Schema validator for one component, resolving `#/components/...` references in the document."""
    resource = DRAFT202012.create_resource(document)
    registry: Registry[Any] = Registry().with_resource("urn:openapi", resource)
    return Draft202012Validator({"$ref": f"urn:openapi#/components/schemas/{name}"}, registry=registry)


def test_the_committed_document_is_what_the_code_generates(document: dict[str, Any]) -> None:
    # Regenerate with: python -m babychain.api.openapi > docs/openapi.json (or make openapi)
    assert COMMITTED.read_text(encoding="utf-8") == render(document), "docs/openapi.json is stale: run `make openapi`"


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1")
    validate_openapi(document)


def test_every_route_is_documented_with_its_method_and_nothing_else(document: dict[str, Any]) -> None:
    documented = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    assert documented == {(method, route) for method, route, _function in ROUTES}


def test_every_operation_names_its_security_and_answers_in_the_one_error_shape(document: dict[str, Any]) -> None:
    schemes = document["components"]["securitySchemes"]
    assert schemes[SECURITY_SCHEME] == {
        "type": "http",
        "scheme": "bearer",
        "description": schemes[SECURITY_SCHEME]["description"],
    }
    for path, item in document["paths"].items():
        for method, operation in item.items():
            where = f"{method.upper()} {path}"
            public = path in PUBLIC_ROUTES or path.startswith("/api/v1/webhooks/")
            if public:
                assert operation["security"] == [{}], where
            else:
                [requirement] = operation["security"]
                assert set(requirement) == {SECURITY_SCHEME} and set(requirement[SECURITY_SCHEME]) <= SCOPES, where
                for status in ("401", "403", "429"):
                    assert status in operation["responses"], where
                assert set(operation["responses"]["429"]["headers"]) >= {"Retry-After", "RateLimit-Reset"}, where
                success = next(a for s, a in operation["responses"].items() if s.startswith("2"))
                assert set(success["headers"]) >= {"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"}
            assert "422" not in operation["responses"], where  # validation errors are 400s here
            for status, answer in operation["responses"].items():
                schema = answer["content"]["application/json"]["schema"]
                if not status.startswith("2"):
                    assert schema == {"$ref": "#/components/schemas/Error"}, (where, status)


def test_create_documents_the_idempotency_key_the_body_and_the_seed_examples(document: dict[str, Any]) -> None:
    create = document["paths"]["/api/v1/chains/{slug}/runs"]["post"]
    [header] = [p for p in create["parameters"] if p["in"] == "header"]
    assert header["name"].lower() == "idempotency-key" and header["schema"]["pattern"]
    body = create["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/CreateRunRequest"}
    requests = _validator(document, "CreateRunRequest")
    for name, example in body["examples"].items():
        assert example == REQUEST_EXAMPLES[name]
        requests.validate(example["value"])
    assert create["responses"]["202"]["content"]["application/json"]["example"] == SEED_RESPONSE
    _validator(document, "ChainRun").validate(SEED_RESPONSE)
    assert set(create["responses"]["202"]["links"]) == {"GetRun", "CancelRun"}


def test_the_chain_inputs_come_from_the_model_catalog(document: dict[str, Any]) -> None:
    from babychain.chains.catalog import models_for

    schemas = document["components"]["schemas"]
    chain3 = schemas["Chain3Input"]
    assert chain3["required"] == [
        "chain_models",
        "text_to_image_params",
        "image_to_image_params",
        "image_to_video_params",
    ]
    allowed = chain3["properties"]["chain_models"]["properties"]["image_to_video_model"]["enum"]
    assert allowed == sorted(m.id for m in models_for("image_to_video", "byok"))
    refs = {r["$ref"].rsplit("/", 1)[1] for r in chain3["properties"]["text_to_image_params"]["anyOf"]}
    assert {"Flux2Params", "Flux2FlexParams", "Flux1Params", "SeedreamParams", "BabySeaImageParams"} <= refs
    # The media fields are typed as URLs in the generated schemas (as GET /api/v1/chains shows them).
    assert schemas["Flux2Params"]["properties"]["input_image"]["anyOf"][0]["format"] == "uri"
    assert "source_image_url" in schemas["Chain2Input"]["properties"]
    assert "source_image_url" not in chain3["properties"]
    invalid = {"input": {"chain_models": {"text_to_image_model": "bfl/flux-2-flex"}}}
    assert list(_validator(document, "CreateRunRequest").iter_errors(invalid))


def test_the_document_is_served_and_the_reference_page_loads_only_local_assets(engine: LocalEngine) -> None:
    with client_for(engine, key=None) as client:
        served = client.get("/api/v1/openapi.json")
        assert served.status_code == 200 and served.headers["content-type"] == "application/json"
        assert served.text == COMMITTED.read_text(encoding="utf-8")
        page = client.get("/docs")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        references = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert len(references) == 4, references
        for url in references:
            assert url.startswith("/docs/assets/"), url  # nothing from outside the machine
            asset = client.get(url)
            assert asset.status_code == 200 and asset.content, url
        init = client.get("/docs/assets/init.js").text
        assert '"/api/v1/openapi.json"' in init and "validatorUrl: null" in init
        assert client.get("/docs/assets/swagger-ui-bundle.js").headers["content-type"].startswith("text/javascript")
        assert client.get("/docs/assets/nothing.js").status_code == 404
        assert client.post("/docs").status_code == 405


def test_validation_errors_are_400s_in_the_one_shape_after_the_key_is_checked(engine: LocalEngine) -> None:
    with client_for(engine, key=None) as anonymous:
        answer = anonymous.get("/api/v1/chains/runs", params={"limit": "many"})
        assert answer.status_code == 401 and answer.json()["error"]["code"] == "missing_api_key"
        for body in (b"{not json", b"x" * (300 * 1024), b'{"inputs": 1}'):  # the key first, then the body
            answer = anonymous.post("/api/v1/chains/chain1/runs", content=body)
            assert answer.status_code == 401, answer.text
    with client_for(engine, key=KEY_A) as client:
        for params, field in (({"limit": "many"}, "limit"), ({"status": "done"}, "status"), ({"limit": 101}, "limit")):
            answer = client.get("/api/v1/chains/runs", params=params)
            assert answer.status_code == 400, answer.text
            error = answer.json()["error"]
            assert error["code"] == "invalid_request" and error["field"] == field and error["message"]
        answer = client.post("/api/v1/chains/chain1/runs", json={"input": {}, "webhook_url": 5})
        assert answer.json()["error"] == {
            "type": "invalid_request_error",
            "code": "invalid_callback_url",
            "message": "webhook_url: Input should be a valid string.",
            "field": "webhook_url",
        }
        # The body is JSON whatever its label, as before (the strict reader decides).
        answer = client.post(
            "/api/v1/chains/chain1/runs",
            content=json.dumps(REQUEST_EXAMPLES["seed"]["value"] | {"webhook_url": None}),
            headers={"Content-Type": "text/plain"},
        )
        assert answer.status_code == 202, answer.text
        answer = client.post(
            "/api/v1/chains/chain1/runs",
            content=b"input=1",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_json"


def test_a_response_is_sent_as_the_handler_built_it(engine: LocalEngine) -> None:
    # Powertools' response validation is off: the presenter's dict goes out unchanged (no nulls added for absent
    # optional fields).
    with client_for(engine) as client:
        answer = client.post("/api/v1/chains/chain3/runs", json=REQUEST_EXAMPLES["chain3"]["value"])
        assert answer.status_code == 202, answer.text
        run = answer.json()
        assert "metadata" not in run and "webhook_url" not in run and "callback" not in run, run


def test_every_secured_operation_refuses_a_request_without_a_key(document: dict[str, Any], engine: LocalEngine) -> None:
    run_id = "12345678-1234-5678-1234-567812345678"
    with client_for(engine, key=None) as client:
        for path, item in document["paths"].items():
            for method, operation in item.items():
                if operation["security"] == [{}]:
                    continue
                url = path.replace("{slug}", "chain1").replace("{run_id}", run_id)
                answer = client.request(method.upper(), url, json={} if method == "post" else None)
                assert answer.status_code == 401, (method, path, answer.text)
                assert answer.headers["www-authenticate"] == "Bearer"
                _validator(document, "Error").validate(answer.json())


def test_a_finished_run_and_the_listings_match_their_schemas(
    document: dict[str, Any], make_engine: Callable[..., LocalEngine]
) -> None:
    # The fuzzer's engine runs no steps; here a chain3 runs to the end on the local provider.
    engine = make_engine()
    with client_for(engine) as client:
        created = client.post("/api/v1/chains/chain3/runs", json=chain_request("chain3", None))
        assert created.status_code == 202, created.text
        run = wait_for_run(client, created.json()["id"], timeout=60)
        assert run["status"] == "succeeded", run
        assert run["output"]["output_files"] and run["steps"][2]["generation_output_file"]
        _validator(document, "ChainRun").validate(run)
        _validator(document, "RunList").validate(client.get("/api/v1/chains/runs").json())
        _validator(document, "ChainTemplateList").validate(client.get("/api/v1/chains").json())
        _validator(document, "ModelList").validate(client.get("/api/v1/models").json())
        _validator(document, "Health").validate(client.get("/api/health").json())
