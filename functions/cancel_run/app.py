"""POST /api/v1/chains/cancel/{run_id}: cancel a run in any non-terminal state (terminal runs come back as they are)."""

from aws_lambda_powertools.event_handler import Response

from babychain.api.http import Api, Caller, json_response
from babychain.api.routes import RunId, answers, requires
from babychain.engine.runs import cancel_run

api = Api()


@api.post(
    "/api/v1/chains/cancel/<run_id>",
    summary="Cancel a run",
    description="Cancels a queued or running run (at the provider where it can); a finished run comes back unchanged.",
    tags=["runs"],
    operation_id="cancel_run",
    security=requires("runs:cancel"),
    responses=answers(200, "ChainRun", "The run, canceled (or as it was, if it had already ended).", 400, 404),
)
def cancel(who: Caller, run_id: RunId) -> Response:
    return json_response(200, cancel_run(who.svc, who.principal, run_id))


lambda_handler = api.lambda_handler
