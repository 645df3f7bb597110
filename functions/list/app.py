"""The read-only listings: chain templates, the caller's runs, the model catalog, health, and the OpenAPI document."""

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from babychain.api.http import caller, json_response, make_resolver, text_response
from babychain.api.schemas import (
    PUBLIC,
    ChainFilter,
    ChainTemplateList,
    Cursor,
    Health,
    Limit,
    ModelList,
    OpenApiDocument,
    RunList,
    StatusFilter,
    answers,
    requires,
)
from babychain.engine.runs import list_chains, list_models, list_runs
from babychain.observability import instrumented
from babychain.services import services

app = make_resolver()


@app.get(
    "/api/v1/chains",
    summary="List chain templates",
    description="Each template's steps, the models allowed per step and each model's parameter schema.",
    tags=["chains"],
    operation_id="list_chains",
    security=requires("chains:read"),
    responses=answers(200, ChainTemplateList, "The chain templates."),
)
def chains() -> Response[ChainTemplateList]:
    svc, _ = caller(app)
    return json_response(200, list_chains(svc))


@app.get(
    "/api/v1/chains/runs",
    summary="List your runs",
    description="Newest first, a page at a time: pass `next_cursor` as `cursor` until `has_more` is false.",
    tags=["runs"],
    operation_id="list_runs",
    security=requires("chains:read"),
    responses=answers(200, RunList, "A page of your runs.", 400),
)
def runs(
    limit: Limit = 20, cursor: Cursor = None, status: StatusFilter = None, chain_slug: ChainFilter = None
) -> Response[RunList]:
    svc, principal = caller(app)
    return json_response(
        200, list_runs(svc, principal, limit=limit, cursor=cursor, status=status, chain_slug=chain_slug)
    )


@app.get(
    "/api/v1/models",
    summary="List the model catalog",
    description="Every model with the steps it can run, the modes it runs in and its parameter schema per mode.",
    tags=["chains"],
    operation_id="list_models",
    security=requires("chains:read"),
    responses=answers(200, ModelList, "The model catalog."),
)
def models() -> Response[ModelList]:
    svc, _ = caller(app)
    return json_response(200, list_models(svc))


@app.get(
    "/api/health",
    summary="Health",
    description="Checks the database. No key needed.",
    tags=["service"],
    operation_id="health",
    security=PUBLIC,
    responses=answers(200, Health, "The service and its database answer.", authenticated=False),
)
def health() -> Response[Health]:
    return json_response(200, {"status": "ok", "service": "babychain", **services().store.health()})


@app.get(
    "/api/v1/openapi.json",
    summary="This OpenAPI document",
    tags=["service"],
    operation_id="openapi",
    security=PUBLIC,
    responses=answers(200, OpenApiDocument, "The OpenAPI 3.1 document of this API.", authenticated=False),
)
def openapi() -> Response[OpenApiDocument]:
    # Serving the committed document needs nothing else of the module that generates it, which imports the model
    # catalog and its pydantic families: imported here, not at every cold start of the listings.
    from babychain.api.openapi import published_document

    return text_response(200, published_document(), "application/json", {"Cache-Control": "public, max-age=300"})


@instrumented(correlation_paths.API_GATEWAY_HTTP)
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    return app.resolve(event, context)
