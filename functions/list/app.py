"""The read-only listings: chain templates, the caller's runs, the model catalog, health, and the OpenAPI document."""

from aws_lambda_powertools.event_handler import Response

from babychain.api.http import Api, Caller, json_response, text_response
from babychain.api.routes import PUBLIC, ChainFilter, Cursor, Limit, StatusFilter, answers, requires
from babychain.engine.runs import list_chains, list_models, list_runs
from babychain.services import services

api = Api()


@api.get(
    "/api/v1/chains",
    summary="List chain templates",
    description="Each template's steps, the models allowed per step and each model's parameter schema.",
    tags=["chains"],
    operation_id="list_chains",
    security=requires("chains:read"),
    responses=answers(200, "ChainTemplateList", "The chain templates."),
)
def chains(who: Caller) -> Response:
    return json_response(200, list_chains(who.svc))


@api.get(
    "/api/v1/chains/runs",
    summary="List your runs",
    description="Newest first, a page at a time: pass `next_cursor` as `cursor` until `has_more` is false.",
    tags=["runs"],
    operation_id="list_runs",
    security=requires("chains:read"),
    responses=answers(200, "RunList", "A page of your runs.", 400),
)
def runs(
    who: Caller, limit: Limit = 20, cursor: Cursor = None, status: StatusFilter = None, chain_slug: ChainFilter = None
) -> Response:
    page = list_runs(who.svc, who.principal, limit=limit, cursor=cursor, status=status, chain_slug=chain_slug)
    return json_response(200, page)


@api.get(
    "/api/v1/models",
    summary="List the model catalog",
    description="Every model with the steps it can run, the modes it runs in and its parameter schema per mode.",
    tags=["chains"],
    operation_id="list_models",
    security=requires("chains:read"),
    responses=answers(200, "ModelList", "The model catalog."),
)
def models(who: Caller) -> Response:
    return json_response(200, list_models(who.svc))


@api.get(
    "/api/health",
    summary="Health",
    description="Checks the database. No key needed.",
    tags=["service"],
    operation_id="health",
    security=PUBLIC,
    responses=answers(200, "Health", "The service and its database answer.", authenticated=False),
)
def health() -> Response:
    return json_response(200, {"status": "ok", "service": "babychain", **services().store.health()})


@api.get(
    "/api/v1/openapi.json",
    summary="This OpenAPI document",
    tags=["service"],
    operation_id="openapi",
    security=PUBLIC,
    responses=answers(200, "OpenApiDocument", "The OpenAPI 3.1 document of this API.", authenticated=False),
)
def openapi() -> Response:
    # Serving the committed document needs nothing else of the module that generates it, which imports the model
    # catalog and its pydantic families: imported here, not at every cold start of the listings.
    from babychain.api.openapi import published_document

    return text_response(200, published_document(), "application/json", {"Cache-Control": "public, max-age=300"})


lambda_handler = api.lambda_handler
