"""EventBridge schedule → the safety net: deadlines, lost messages, due callbacks."""

from aws_lambda_powertools.utilities.typing import LambdaContext

from babychain.engine.sweeper import sweep
from babychain.observability import logger, metrics, sentry_flush, tracer
from babychain.services import services


@sentry_flush
@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    return sweep(services())
