"""POST /api/v1/chains/{slug}/runs: create a run (202), with Idempotency-Key replay."""

from typing import Annotated, Any

from aws_lambda_powertools.event_handler import Response

from babychain.api.examples import REQUEST_EXAMPLES, SEED_RESPONSE
from babychain.api.http import Api, Caller, json_response
from babychain.api.routes import IdempotencyKey, Slug, answers, create_body, requires
from babychain.engine.create import create_run

api = Api()

REPLAYED = {
    "Idempotency-Replayed": {
        "description": "`true` when this is the run an earlier request with the same Idempotency-Key created.",
        "schema": {"type": "string", "enum": ["true"]},
    }
}


@api.post(
    "/api/v1/chains/<slug>/runs",
    summary="Create a run",
    tags=["runs"],
    operation_id="create_run",
    security=requires("chains:run"),
    responses=answers(
        202,
        "ChainRun",
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
    who: Caller,
    slug: Slug,
    request: Annotated[dict[str, Any], create_body(REQUEST_EXAMPLES)],
    idempotency_key: IdempotencyKey = None,
) -> Response:
    created = create_run(who.svc, who.principal, slug, request, idempotency_key)
    return json_response(202, created.run, {"Idempotency-Replayed": "true"} if created.replayed else None)


lambda_handler = api.lambda_handler
