"""POST /api/v1/chains/{slug}/runs: create a run (202), with Idempotency-Key replay."""

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from babychain.api.http import caller, json_response, make_resolver, read_json_body
from babychain.engine.create import create_run
from babychain.observability import instrumented

app = make_resolver()


@app.post("/api/v1/chains/<slug>/runs")
def post_run(slug: str) -> Response:
    svc, principal = caller(app, "chains:run")
    created = create_run(svc, principal, slug, read_json_body(app), app.current_event.headers.get("idempotency-key"))
    return json_response(202, created.run, {"Idempotency-Replayed": "true"} if created.replayed else None)


@instrumented(correlation_paths.API_GATEWAY_HTTP)
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    return app.resolve(event, context)
