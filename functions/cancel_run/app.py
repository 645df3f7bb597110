"""POST /api/v1/chains/cancel/{run_id}: cancel a run in any non-terminal state (terminal runs come back as they are)."""

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from babychain.api.http import caller, json_response, make_resolver
from babychain.api.schemas import ChainRun, RunId, answers, requires
from babychain.engine.runs import cancel_run
from babychain.observability import instrumented

app = make_resolver()


@app.post(
    "/api/v1/chains/cancel/<run_id>",
    summary="Cancel a run",
    description="Cancels a queued or running run (at the provider where it can); a finished run comes back unchanged.",
    tags=["runs"],
    operation_id="cancel_run",
    security=requires("runs:cancel"),
    responses=answers(200, ChainRun, "The run, canceled (or as it was, if it had already ended).", 400, 404),
)
def cancel(run_id: RunId) -> Response[ChainRun]:
    svc, principal = caller(app)
    return json_response(200, cancel_run(svc, principal, run_id))


@instrumented(correlation_paths.API_GATEWAY_HTTP)
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    return app.resolve(event, context)
