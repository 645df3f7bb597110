"""The API's typed contract for the OpenAPI document: the request and response models (pydantic).

The handlers in `functions/` name these models in their declared answers and body (`babychain.api.routes`, which
checks requests at run time without pydantic); `babychain.api.openapi` generates the OpenAPI document from them with
Powertools' event handler. The responses are documentation: the handlers return the presenter's dicts, and the
contract tests check every answer against these schemas. `CreateRunRequest` is the envelope `routes.create_body`
checks (tests/unit/test_route_checks.py holds the two to the same answers).

`input` is validated by the engine itself (`chains.requests.plan_run`, mode-aware, naming the exact field); its schema
in the document is generated from the model catalog (`ChainInput`, added by `babychain.api.openapi`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from babychain.api.routes import Mode, RunStatus, StepStatus
from babychain.chains.templates import TEMPLATES
from babychain.security.urls import MAX_URL_LENGTH

COMPONENTS = "#/components/schemas/"


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")


# -------------------------------------------------------------------------------------------------------- errors


ErrorType = Literal[
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "conflict_error",
    "rate_limit_error",
    "api_error",
]


class ErrorDetail(BaseModel):
    type: ErrorType = Field(description="The class of error; `api_error` for 5xx.")
    code: str = Field(description="Stable machine-readable code, e.g. `invalid_chain_input`, `run_not_found`.")
    message: str = Field(description="For people; never a stack trace or a secret.")
    field: str | None = Field(
        None, description="The offending field where there is one, e.g. `input.text_to_image_params.prompt`."
    )
    details: dict[str, Any] | None = Field(None, description="Extra facts, e.g. the rate limit or the existing run id.")


class Error(BaseModel):
    """The one error shape of every answer that is not a success."""

    error: ErrorDetail


# -------------------------------------------------------------------------------------------------------- requests


class CreateRunRequest(BaseModel):
    """Create a run. `input` is checked by the engine against the chain and the selected models (400s name the exact
    field); its schema lists what each chain takes."""

    model_config = ConfigDict(extra="forbid", strict=True)

    input: Annotated[
        dict[str, Any],
        WithJsonSchema({"anyOf": [{"$ref": f"{COMPONENTS}{t.slug.capitalize()}Input"} for t in TEMPLATES]}),
    ] = Field(description="The models and each step's parameters (the schema of the chain named in the path).")
    webhook_url: Annotated[str, Field(max_length=MAX_URL_LENGTH, json_schema_extra={"format": "uri"})] | None = Field(
        None, description="HTTPS URL that receives the one signed callback when the run ends (Standard Webhooks)."
    )
    metadata: dict[str, Any] | None = Field(
        None, description="Your own JSON (at most 16 KiB), echoed on the run and in the callback. No credentials."
    )


# -------------------------------------------------------------------------------------------------------- runs


class StepError(BaseModel):
    code: str
    message: str | None = None


class ChainStep(_Model):
    """One step of a run."""

    id: str = Field(json_schema_extra={"format": "uuid"})
    object: Literal["chain_step"]
    step_index: int
    step_key: Literal["text_to_image", "image_to_image", "image_to_video"]
    step_kind: Literal["image", "video"]
    model_identifier: str
    status: StepStatus
    depends_on: list[str]
    attempt: int = Field(description="Provider submissions started.")
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    generation_input_file: list[str] | None = Field(None, description="The file this step started from.")
    generation_output_file: list[str] | None = Field(None, description="This step's output (a durable URL).")
    provider: str | None = Field(None, description="The route that ran it: `bfl`, `byteplus`, `babysea`, `local`.")
    provider_used: str | None = Field(None, description="BabySea: the inference provider it failed over to.")
    cost: Any = Field(None, description="What the provider reported the step cost.")
    provider_cancel: Literal["accepted", "not_possible"] | None = None
    last_frame_url: str | None = None
    attempts: list[dict[str, Any]] | None = Field(None, description="Earlier attempts and why they ended.")
    progress: float | None = Field(None, ge=0, le=1, description="While running, where the provider reports it.")
    last_error: StepError | None = Field(None, description="While queued or running: the error being retried.")
    error: StepError | None = Field(None, description="Why the step failed.")


class RunOutput(_Model):
    output_files: list[str] = Field(description="The last step's output files (durable URLs).")


class EstimateItem(_Model):
    step_key: str
    model_identifier: str
    amount: float | None
    basis: str | None = None


class Estimate(_Model):
    currency: Literal["USD"]
    total: float | None
    steps: list[EstimateItem]


class CallbackState(BaseModel):
    event_id: str
    status: Literal["waiting", "pending", "delivering", "delivered", "failed"] | None
    attempts: int
    next_attempt_at: datetime | None


class ChainRun(_Model):
    """The run resource."""

    id: str = Field(json_schema_extra={"format": "uuid"})
    object: Literal["chain_run"]
    chain_slug: Literal["chain1", "chain2", "chain3"]
    chain_version: str
    mode: Mode
    status: RunStatus
    input: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    current_step_key: str = Field(description="The running step's key, `processing`, or `completed` at the end.")
    steps: list[ChainStep]
    metadata: dict[str, Any] | None = None
    error: StepError | None = Field(None, description="Why the run failed.")
    output: RunOutput | None = None
    estimate: Estimate | None = None
    webhook_url: str | None = None
    callback: CallbackState | None = None


class RunList(BaseModel):
    object: Literal["list"]
    url: Literal["/api/v1/chains/runs"]
    data: list[ChainRun]
    has_more: bool
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last.")


# -------------------------------------------------------------------------------------------------------- listings


class TemplateStep(_Model):
    key: str
    kind: Literal["image", "video"]
    depends_on: list[str]
    model_field: str
    params_field: str
    allowed_models: list[str]
    params_schemas: dict[str, dict[str, Any]] = Field(description="Each allowed model's parameter JSON Schema.")


class ChainTemplate(_Model):
    object: Literal["chain_template"]
    slug: str
    alias: str
    version: str
    title: str
    steps: list[TemplateStep]
    input_fields: list[dict[str, Any]]


class ChainTemplateList(BaseModel):
    object: Literal["list"]
    url: Literal["/api/v1/chains"]
    has_more: bool
    data: list[ChainTemplate]


class Model(_Model):
    object: Literal["model"]
    id: str
    title: str
    provider: str
    provider_model: str
    kind: Literal["image", "video"]
    step_kinds: list[str]
    modes: list[Mode]
    schemas: dict[str, dict[str, Any]] = Field(description="The parameter JSON Schema per mode (`byok`, `babysea`).")


class ModelList(BaseModel):
    object: Literal["list"]
    url: Literal["/api/v1/models"]
    has_more: bool
    mode: Mode
    data: list[Model]


class Health(_Model):
    status: Literal["ok"]
    service: Literal["babychain"]
    database: Literal["ok"]


class OpenApiDocument(_Model):
    openapi: str
    info: dict[str, Any]
    paths: dict[str, Any]


class WebhookAck(BaseModel):
    received: Literal[True]
    status: Literal["advanced", "duplicate", "ignored"]
