"""GET /api/v1/chains/get/{run_id}: one run with its steps."""

from aws_lambda_powertools.event_handler import Response

from babychain.api.http import Api, Caller, json_response
from babychain.api.routes import RunId, answers, requires
from babychain.engine.runs import get_run

api = Api()


@api.get(
    "/api/v1/chains/get/<run_id>",
    summary="Get a run",
    description="The run with its steps: `progress` while a step runs, each step's output file once it has one.",
    tags=["runs"],
    operation_id="get_run",
    security=requires("chains:read"),
    responses=answers(200, "ChainRun", "The run.", 400, 404),
)
def get(who: Caller, run_id: RunId) -> Response:
    return json_response(200, get_run(who.svc, who.principal, run_id))


lambda_handler = api.lambda_handler
