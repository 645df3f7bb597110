"""SQS callback queue → one signed delivery attempt per message."""

import json

from aws_lambda_powertools.utilities.batch import process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from babychain.batch import QueueBatchProcessor
from babychain.engine.callbacks import deliver_callback
from babychain.observability import instrumented, logger
from babychain.services import services

processor = QueueBatchProcessor()


def record_handler(record: SQSRecord) -> str:
    logger.set_correlation_id(None)  # a record that cannot be read must not log under the previous record's run
    body = json.loads(record.body)
    logger.set_correlation_id(body.get("run_id"))
    return deliver_callback(services(), body["run_id"], int(body.get("deferrals", 0)))


@instrumented()
def lambda_handler(event: dict, context: LambdaContext) -> PartialItemFailureResponse:
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
