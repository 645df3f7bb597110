"""GET /api/v1/chains/get/{run_id}: one run with its steps."""

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from babychain.api.http import caller, json_response, make_resolver
from babychain.api.schemas import ChainRun, RunId, answers, requires
from babychain.engine.runs import get_run
from babychain.observability import instrumented

app = make_resolver()


@app.get(
    "/api/v1/chains/get/<run_id>",
    summary="Get a run",
    description="The run with its steps: `progress` while a step runs, each step's output file once it has one.",
    tags=["runs"],
    operation_id="get_run",
    security=requires("chains:read"),
    responses=answers(200, ChainRun, "The run.", 400, 404),
)
def get(run_id: RunId) -> Response[ChainRun]:
    svc, principal = caller(app)
    return json_response(200, get_run(svc, principal, run_id))


@instrumented(correlation_paths.API_GATEWAY_HTTP)
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    return app.resolve(event, context)
