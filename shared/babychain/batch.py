"""The SQS batch processor of the queue handlers (step executor, callback sender).

Its own module so that the API handlers do not import Powertools' batch utility at cold start.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType
from aws_lambda_powertools.utilities.batch.base import FailureResponse
from aws_lambda_powertools.utilities.batch.exceptions import ExceptionInfo

from babychain.observability import logger


class QueueBatchProcessor(BatchProcessor):
    """Powertools' BatchProcessor, extended as its docs show: a record that fails is logged at ERROR with its message
    id before Powertools reports it in batchItemFailures. Powertools alone logs it at DEBUG, so a poisoned message
    would leave no line at INFO; with Sentry on, the ERROR line is a Sentry event too (its logging integration)."""

    def __init__(self) -> None:
        super().__init__(event_type=EventType.SQS)

    def __call__(self, records: list[dict], handler: Callable, lambda_context: Any = None) -> QueueBatchProcessor:
        # What Powertools' own __call__ sets, with its `inspect.signature` of the record handler (~30 µs, on every
        # invocation) asked once per handler.
        super().__call__(records, handler)
        if lambda_context is not None:
            self.lambda_context = lambda_context
            self._handler_accepts_lambda_context = _takes_lambda_context(handler)
        return self

    def failure_handler(self, record: Any, exception: ExceptionInfo) -> FailureResponse:
        logger.error(
            "queue record failed; SQS delivers it again, then to the dead-letter queue",
            extra={"message_id": record.message_id},
            exc_info=exception[1],
        )
        return super().failure_handler(record, exception)


@functools.lru_cache(maxsize=32)
def _takes_lambda_context(handler: Callable[..., Any]) -> bool:
    return "lambda_context" in inspect.signature(handler).parameters
