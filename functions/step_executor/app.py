"""SQS step queue → one action per message. A failing message fails only itself (partial batch response)."""

import json

from aws_lambda_powertools.utilities.batch import process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from babychain.batch import QueueBatchProcessor
from babychain.engine.executor import handle_step_message
from babychain.observability import instrumented, logger
from babychain.services import services

processor = QueueBatchProcessor()


def record_handler(record: SQSRecord, lambda_context: LambdaContext | None = None) -> str:
    logger.set_correlation_id(None)  # a record that cannot be read must not log under the previous record's run
    body = json.loads(record.body)
    logger.set_correlation_id(body.get("run_id"))
    # The executor goes on to the next step in this invocation only while a whole submit and download still fit.
    time_left = (lambda: lambda_context.get_remaining_time_in_millis() / 1000) if lambda_context else None
    return handle_step_message(services(), body, time_left)


@instrumented()
def lambda_handler(event: dict, context: LambdaContext) -> PartialItemFailureResponse:
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
