"""EventBridge schedule → the safety net: deadlines, lost messages, due callbacks."""

from aws_lambda_powertools.utilities.typing import LambdaContext

from babychain.engine.sweeper import sweep
from babychain.observability import instrumented
from babychain.services import services


@instrumented()
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    return sweep(services())
