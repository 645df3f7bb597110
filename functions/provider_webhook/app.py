"""POST /api/v1/webhooks/{provider}[/{step_id}/{token}]: provider webhooks, verified and deduplicated."""

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from babychain.api.http import json_response, make_resolver, raw_body
from babychain.api.schemas import PUBLIC, WebhookAck, answers
from babychain.engine.webhooks import handle_provider_webhook
from babychain.observability import instrumented
from babychain.services import services

app = make_resolver()

WEBHOOK_ANSWERS = answers(
    200,
    WebhookAck,
    "Verified; the step is polled at once (or the notice was a duplicate, or not about a step).",
    400,
    401,
    404,
    413,
    authenticated=False,
)
ABOUT = (
    "For the providers, not for callers: each provider signs its notices (BFL and BabySea with their webhook "
    "secrets; BytePlus through the per-step token in the URL). The body is the provider's own JSON, checked against "
    "its signature byte for byte."
)


@app.post(
    "/api/v1/webhooks/<provider>",
    summary="Provider webhook (account-level)",
    description=ABOUT,
    tags=["provider webhooks"],
    operation_id="provider_webhook",
    security=PUBLIC,
    responses=WEBHOOK_ANSWERS,
)
def account_webhook(provider: str) -> Response[WebhookAck]:
    outcome = handle_provider_webhook(
        services(), provider, dict(app.current_event.headers), raw_body(app.current_event)
    )
    return json_response(200, outcome.body())


@app.post(
    "/api/v1/webhooks/<provider>/<step_id>/<token>",
    summary="Provider webhook (per step)",
    description=ABOUT,
    tags=["provider webhooks"],
    operation_id="provider_step_webhook",
    security=PUBLIC,
    responses=WEBHOOK_ANSWERS,
)
def step_webhook(provider: str, step_id: str, token: str) -> Response[WebhookAck]:
    event = app.current_event
    outcome = handle_provider_webhook(
        services(), provider, dict(event.headers), raw_body(event), step_id=step_id, token=token
    )
    return json_response(200, outcome.body())


@instrumented(correlation_paths.API_GATEWAY_HTTP)
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    return app.resolve(event, context)
