"""POST /api/v1/webhooks/{provider}[/{step_id}/{token}]: provider webhooks, verified and deduplicated."""

from aws_lambda_powertools.event_handler import Response

from babychain.api.http import Api, json_response, raw_body
from babychain.api.routes import PUBLIC, PathText, answers
from babychain.engine.webhooks import handle_provider_webhook
from babychain.services import services

api = Api()

WEBHOOK_ANSWERS = answers(
    200,
    "WebhookAck",
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


@api.post(
    "/api/v1/webhooks/<provider>",
    summary="Provider webhook (account-level)",
    description=ABOUT,
    tags=["provider webhooks"],
    operation_id="provider_webhook",
    security=PUBLIC,
    responses=WEBHOOK_ANSWERS,
)
def account_webhook(provider: PathText) -> Response:
    outcome = handle_provider_webhook(
        services(), provider, dict(api.app.current_event.headers), raw_body(api.app.current_event)
    )
    return json_response(200, outcome.body())


@api.post(
    "/api/v1/webhooks/<provider>/<step_id>/<token>",
    summary="Provider webhook (per step)",
    description=ABOUT,
    tags=["provider webhooks"],
    operation_id="provider_step_webhook",
    security=PUBLIC,
    responses=WEBHOOK_ANSWERS,
)
def step_webhook(provider: PathText, step_id: PathText, token: PathText) -> Response:
    event = api.app.current_event
    outcome = handle_provider_webhook(
        services(), provider, dict(event.headers), raw_body(event), step_id=step_id, token=token
    )
    return json_response(200, outcome.body())


lambda_handler = api.lambda_handler
