"""POST /api/v1/webhooks/{provider}[/{step_id}/{token}]: provider webhooks, verified and deduplicated."""

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from babychain.api.http import json_response, make_resolver, raw_body
from babychain.engine.webhooks import handle_provider_webhook
from babychain.observability import instrumented
from babychain.services import services

app = make_resolver()


@app.post("/api/v1/webhooks/<provider>")
def account_webhook(provider: str) -> Response:
    outcome = handle_provider_webhook(services(), provider, dict(app.current_event.headers), raw_body(app))
    return json_response(200, outcome.body())


@app.post("/api/v1/webhooks/<provider>/<step_id>/<token>")
def step_webhook(provider: str, step_id: str, token: str) -> Response:
    outcome = handle_provider_webhook(
        services(), provider, dict(app.current_event.headers), raw_body(app), step_id=step_id, token=token
    )
    return json_response(200, outcome.body())


@instrumented(correlation_paths.API_GATEWAY_HTTP)
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    return app.resolve(event, context)
