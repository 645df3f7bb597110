"""The shapes of what the store's SQL functions return (`to_jsonb` of the table rows, and small envelopes).

They mirror `supabase/migrations`: a column added there is added here, so mypy checks every `step["seq"]`-style read
in the engine. Timestamps arrive as ISO 8601 strings, ids as UUID strings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, TypedDict

if TYPE_CHECKING:  # only read by type checkers (these annotations are never evaluated)
    from typing_extensions import ReadOnly

RunStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]
StepStatus = Literal["queued", "running", "succeeded", "failed", "canceled", "skipped"]


class StepRow(TypedDict):
    id: str
    run_id: str
    step_index: int
    step_key: str
    step_kind: Literal["image", "video"]
    model_identifier: str
    depends_on: list[str]
    status: StepStatus
    params: dict[str, Any]
    request_params: dict[str, Any] | None  # what was submitted (params + injected input)
    input_files: list[str] | None
    output_files: list[str] | None
    provider: str | None
    provider_job_id: str | None
    provider_metadata: dict[str, Any]
    attempt: int  # submissions started
    seq: int  # a queue message acts only while it carries the current seq
    next_check_at: str | None
    error_code: str | None
    error_message: str | None
    started_at: str | None
    completed_at: str | None
    created_at: str
    updated_at: str


class RunRow(TypedDict):
    id: str
    owner_id: str
    chain_slug: str
    chain_version: str
    mode: Literal["local", "byok", "babysea"]
    status: RunStatus
    input: dict[str, Any]
    metadata: dict[str, Any]
    webhook_url: str | None
    idempotency_key: str | None
    request_hash: str
    current_step_key: str | None
    output: dict[str, Any] | None
    error_code: str | None
    error_message: str | None
    deadline_at: str
    callback_event_id: str
    callback_status: Literal["waiting", "pending", "delivering", "delivered", "failed"] | None
    callback_attempts: int
    callback_next_at: str | None
    callback_claimed_at: str | None
    callback_claimed_by: str | None
    created_at: str
    updated_at: str
    completed_at: str | None
    estimate: dict[str, Any] | None
    steps: list[StepRow]


class ListedStepRow(TypedDict):
    """A step as a list page carries it: what the API's resource shows (engine/presenter.py). Read-only, so that a
    full StepRow is one too."""

    id: ReadOnly[str]
    step_index: ReadOnly[int]
    step_key: ReadOnly[str]
    step_kind: ReadOnly[Literal["image", "video"]]
    model_identifier: ReadOnly[str]
    depends_on: ReadOnly[list[str]]
    status: ReadOnly[StepStatus]
    input_files: ReadOnly[list[str] | None]
    output_files: ReadOnly[list[str] | None]
    provider: ReadOnly[str | None]
    provider_metadata: ReadOnly[dict[str, Any]]
    attempt: ReadOnly[int]
    error_code: ReadOnly[str | None]
    error_message: ReadOnly[str | None]
    started_at: ReadOnly[str | None]
    completed_at: ReadOnly[str | None]
    created_at: ReadOnly[str]
    updated_at: ReadOnly[str]


class ListedRunRow(TypedDict):
    """A run as a list page carries it (bc_list_runs): what the API's resource and the list's cursor read, the same
    values as the run read alone. A full RunRow is one too."""

    id: ReadOnly[str]
    chain_slug: ReadOnly[str]
    chain_version: ReadOnly[str]
    mode: ReadOnly[Literal["local", "byok", "babysea"]]
    status: ReadOnly[RunStatus]
    input: ReadOnly[dict[str, Any]]
    metadata: ReadOnly[dict[str, Any]]
    webhook_url: ReadOnly[str | None]
    current_step_key: ReadOnly[str | None]
    output: ReadOnly[dict[str, Any] | None]
    error_code: ReadOnly[str | None]
    error_message: ReadOnly[str | None]
    callback_event_id: ReadOnly[str]
    callback_status: ReadOnly[Literal["waiting", "pending", "delivering", "delivered", "failed"] | None]
    callback_attempts: ReadOnly[int]
    callback_next_at: ReadOnly[str | None]
    created_at: ReadOnly[str]
    updated_at: ReadOnly[str]
    completed_at: ReadOnly[str | None]
    estimate: ReadOnly[dict[str, Any] | None]
    steps: ReadOnly[Sequence[ListedStepRow]]


class ApiKeyRow(TypedDict):
    id: str
    key_prefix: str
    name: str
    scopes: list[str]
    rate_limit_per_minute: int | None  # None: the default (BABYCHAIN_RATE_LIMIT_PER_MINUTE)


class ApiKeyListing(ApiKeyRow):
    is_active: bool
    expires_at: str | None
    last_used_at: str | None
    created_at: str


class CreatedRun(TypedDict):
    run: RunRow
    created: bool  # false: an earlier run with the same idempotency key


class CanceledRun(TypedDict):
    run: RunRow
    canceled: bool
    steps: list[StepRow]  # the steps that were running, to cancel at their providers


class StepRun(TypedDict):
    """The run fields a step message needs besides its step."""

    id: str
    mode: Literal["local", "byok", "babysea"]
    status: RunStatus
    webhook_url: str | None


class WorkStep(TypedDict):
    """A step as the transitions hand it to the step executor (bc_take_step, bc_complete_step's next step): the fields
    it reads, not the whole row (20261202071000_lean_transition_answers.sql). Read-only, so that a full StepRow is one
    too."""

    id: ReadOnly[str]
    step_key: ReadOnly[str]
    step_kind: ReadOnly[Literal["image", "video"]]
    model_identifier: ReadOnly[str]
    depends_on: ReadOnly[list[str]]
    status: ReadOnly[StepStatus]
    params: ReadOnly[dict[str, Any]]
    input_files: ReadOnly[list[str] | None]
    provider: ReadOnly[str | None]
    provider_job_id: ReadOnly[str | None]
    provider_metadata: ReadOnly[dict[str, Any]]
    attempt: ReadOnly[int]
    seq: ReadOnly[int]
    started_at: ReadOnly[str | None]


class TakenStep(TypedDict):
    """A step message's step: just claimed for a submit, or running with a job to check."""

    action: Literal["claimed", "check"]
    step: WorkStep
    run: StepRun


class StepCompletion(TypedDict):
    run_status: RunStatus
    next_step: WorkStep | None
    next_claimed: bool  # the next step was claimed by this completion: its caller submits it


class StepFailure(TypedDict):
    run_status: RunStatus
    step: StepRow


class CallbackClaim(TypedDict, total=False):
    """Claimed (`run`, `attempt`), or `busy`: "attempt" (one is in flight; `retry_in` seconds) or "origin"."""

    run: RunRow
    attempt: int
    busy: Literal["attempt", "origin"]
    retry_in: float


class TimedOutStep(TypedDict):
    id: str
    provider: str | None
    model_identifier: str
    provider_job_id: str | None
    provider_metadata: dict[str, Any]


class DueStep(TypedDict):
    run_id: str
    step_id: str
    seq: int


class SweepResult(TypedDict):
    timed_out_runs: list[str]
    timed_out_steps: list[TimedOutStep]
    requeued_steps: list[DueStep]  # whose message was lost (claimed by a submitter that died, or never sent)
    due_steps: list[DueStep]  # whose poll or retry is overdue
    due_callbacks: list[str]


class PurgeResult(TypedDict):
    run_ids: list[str]  # the runs deleted (with their steps and callback attempts): their local artifacts go next
    receipts: int  # provider webhook receipts deleted
    busy: bool  # a row the batch needed stayed locked past the lock timeout: nothing was deleted
