"""POST /api/v1/chains/{slug}/runs: create a run (202), with Idempotency-Key replay."""

from typing import Annotated

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Body
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from babychain.api.examples import REQUEST_EXAMPLES, SEED_RESPONSE
from babychain.api.http import caller, json_response, make_resolver
from babychain.api.schemas import ChainRun, CreateRunRequest, IdempotencyKey, Slug, answers, requires
from babychain.engine.create import create_run
from babychain.observability import instrumented

app = make_resolver()

REPLAYED = {
    "Idempotency-Replayed": {
        "description": "`true` when this is the run an earlier request with the same Idempotency-Key created.",
        "schema": {"type": "string", "enum": ["true"]},
    }
}


@app.post(
    "/api/v1/chains/<slug>/runs",
    summary="Create a run",
    tags=["runs"],
    operation_id="create_run",
    security=requires("chains:run"),
    responses=answers(
        202,
        ChainRun,
        "The run, queued (or, replayed, the run this Idempotency-Key created).",
        400,
        404,
        409,
        413,
        headers=REPLAYED,
        example=SEED_RESPONSE,
        links={
            "GetRun": {"operationId": "get_run", "parameters": {"run_id": "$response.body#/id"}},
            "CancelRun": {"operationId": "cancel_run", "parameters": {"run_id": "$response.body#/id"}},
        },
    ),
)
def post_run(
    slug: Slug,
    request: Annotated[CreateRunRequest, Body(openapi_examples=REQUEST_EXAMPLES)],
    idempotency_key: IdempotencyKey = None,
) -> Response[ChainRun]:
    svc, principal = caller(app)
    created = create_run(svc, principal, slug, request.model_dump(exclude_unset=True), idempotency_key)
    return json_response(202, created.run, {"Idempotency-Replayed": "true"} if created.replayed else None)


@instrumented(correlation_paths.API_GATEWAY_HTTP)
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    return app.resolve(event, context)
