"""The Python client for a BabyChain deployment.

    from babychain.client import BabyChain

    with BabyChain("http://127.0.0.1:8080", "bc_local_dev_key_0001") as client:
        run = client.create("chain3", body)
        run = client.wait(run.id, on_progress=lambda r: print(r.status, r.current_step_key))
        print(run.output_files)

It needs only httpx and standardwebhooks: importing it loads none of the engine's server dependencies.
"""

from babychain.client.aio import AsyncBabyChain
from babychain.client.errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BabyChainError,
    BadRequestError,
    ConflictError,
    MissingSettingError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    UnprocessableEntityError,
    WaitTimeoutError,
    WebhookVerificationError,
)
from babychain.client.models import (
    TERMINAL_STATUSES,
    CallbackState,
    ErrorInfo,
    RateLimit,
    Run,
    RunOutput,
    RunPage,
    RunStatus,
    Step,
    StepStatus,
    WebhookEvent,
)
from babychain.client.sync import BabyChain
from babychain.client.webhooks import verify_webhook

__all__ = [
    "TERMINAL_STATUSES",
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AsyncBabyChain",
    "AuthenticationError",
    "BabyChain",
    "BabyChainError",
    "BadRequestError",
    "CallbackState",
    "ConflictError",
    "ErrorInfo",
    "MissingSettingError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimit",
    "RateLimitError",
    "Run",
    "RunOutput",
    "RunPage",
    "RunStatus",
    "ServerError",
    "Step",
    "StepStatus",
    "UnprocessableEntityError",
    "WaitTimeoutError",
    "WebhookEvent",
    "WebhookVerificationError",
    "verify_webhook",
]
