"""Typed views of the API's resources: the `chain_run` resource with its steps, a page of runs, a verified callback.

Plain frozen dataclasses built from the JSON the API returns (`engine/presenter.py` on the server). Every model keeps
the JSON it came from in `raw`, so a field the server adds later is there before this module learns its name.
Timestamps are timezone-aware `datetime`s.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, cast

RunStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]
StepStatus = Literal["queued", "running", "succeeded", "failed", "canceled", "skipped"]
TERMINAL_STATUSES: tuple[RunStatus, ...] = ("succeeded", "failed", "canceled")


def _time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) and value else None


def _required_time(value: Any) -> datetime:
    parsed = _time(value)
    if parsed is None:
        raise ValueError(f"expected an ISO 8601 timestamp, got {value!r}")
    return parsed


def _strings(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


@dataclass(frozen=True)
class ErrorInfo:
    """Why a run or step failed (`error`), or the last transient error of a step that is still retrying."""

    code: str
    message: str | None

    @classmethod
    def from_dict(cls, data: Any) -> ErrorInfo | None:
        if not isinstance(data, Mapping) or not data.get("code"):
            return None
        return cls(code=str(data["code"]), message=data.get("message"))


@dataclass(frozen=True)
class RateLimit:
    """The key's budget from the `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` headers."""

    limit: int
    remaining: int
    reset_seconds: int

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> RateLimit | None:
        lowered = {k.lower(): v for k, v in headers.items()}
        try:
            return cls(
                int(lowered["ratelimit-limit"]), int(lowered["ratelimit-remaining"]), int(lowered["ratelimit-reset"])
            )
        except (KeyError, ValueError):
            return None


@dataclass(frozen=True)
class Step:
    id: str
    step_index: int
    step_key: str
    step_kind: str  # "image" or "video"
    model_identifier: str
    status: StepStatus
    depends_on: list[str]
    attempt: int  # submissions started
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    generation_input_file: list[str]
    generation_output_file: list[str]
    progress: float | None  # 0..1 while the step runs, when the provider reports it
    error: ErrorInfo | None
    last_error: ErrorInfo | None
    provider: str | None  # the adapter that ran it: local, bfl, byteplus, babysea
    provider_used: str | None  # BabySea's inference provider after its failover
    provider_cancel: str | None  # after a cancel: "accepted", or "not_possible" (the job may still finish)
    cost: Any  # as the provider reported it
    last_frame_url: str | None
    attempts: list[dict[str, Any]]  # one record per submission to a provider
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Step:
        progress = data.get("progress")
        return cls(
            id=str(data["id"]),
            step_index=int(data["step_index"]),
            step_key=str(data["step_key"]),
            step_kind=str(data["step_kind"]),
            model_identifier=str(data["model_identifier"]),
            status=cast(StepStatus, data["status"]),
            depends_on=_strings(data.get("depends_on")),
            attempt=int(data.get("attempt") or 0),
            created_at=_required_time(data["created_at"]),
            updated_at=_required_time(data["updated_at"]),
            started_at=_time(data.get("started_at")),
            completed_at=_time(data.get("completed_at")),
            generation_input_file=_strings(data.get("generation_input_file")),
            generation_output_file=_strings(data.get("generation_output_file")),
            progress=float(progress) if isinstance(progress, int | float) else None,
            error=ErrorInfo.from_dict(data.get("error")),
            last_error=ErrorInfo.from_dict(data.get("last_error")),
            provider=data.get("provider"),
            provider_used=data.get("provider_used"),
            provider_cancel=data.get("provider_cancel"),
            cost=data.get("cost"),
            last_frame_url=data.get("last_frame_url"),
            attempts=[dict(a) for a in data.get("attempts") or [] if isinstance(a, Mapping)],
            raw=dict(data),
        )


@dataclass(frozen=True)
class RunOutput:
    output_files: list[str]
    final_step_key: str | None

    @classmethod
    def from_dict(cls, data: Any) -> RunOutput | None:
        if not isinstance(data, Mapping):
            return None
        return cls(output_files=_strings(data.get("output_files")), final_step_key=data.get("final_step_key"))


@dataclass(frozen=True)
class CallbackState:
    """The run's one callback: its stable event id, delivery status and attempts so far."""

    event_id: str
    status: str | None  # waiting, pending, delivering, delivered, failed
    attempts: int
    next_attempt_at: datetime | None

    @classmethod
    def from_dict(cls, data: Any) -> CallbackState | None:
        if not isinstance(data, Mapping) or not data.get("event_id"):
            return None
        return cls(
            event_id=str(data["event_id"]),
            status=data.get("status"),
            attempts=int(data.get("attempts") or 0),
            next_attempt_at=_time(data.get("next_attempt_at")),
        )


@dataclass(frozen=True)
class Run:
    """The `chain_run` resource."""

    id: str
    chain_slug: str
    chain_version: str
    mode: str  # local, byok or babysea
    status: RunStatus
    input: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    current_step_key: str  # a step key, "processing" before the first starts, "completed" once it succeeded
    steps: list[Step]
    metadata: dict[str, Any]
    error: ErrorInfo | None
    output: RunOutput | None
    estimate: dict[str, Any] | None
    webhook_url: str | None
    callback: CallbackState | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Run:
        if data.get("object") != "chain_run":
            raise ValueError(f"expected a chain_run resource, got object={data.get('object')!r}")
        return cls(
            id=str(data["id"]),
            chain_slug=str(data["chain_slug"]),
            chain_version=str(data["chain_version"]),
            mode=str(data["mode"]),
            status=cast(RunStatus, data["status"]),
            input=dict(data.get("input") or {}),
            created_at=_required_time(data["created_at"]),
            updated_at=_required_time(data["updated_at"]),
            completed_at=_time(data.get("completed_at")),
            current_step_key=str(data.get("current_step_key") or "processing"),
            steps=[Step.from_dict(s) for s in data.get("steps") or []],
            metadata=dict(data.get("metadata") or {}),
            error=ErrorInfo.from_dict(data.get("error")),
            output=RunOutput.from_dict(data.get("output")),
            estimate=data.get("estimate"),
            webhook_url=data.get("webhook_url"),
            callback=CallbackState.from_dict(data.get("callback")),
            raw=dict(data),
        )

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def output_files(self) -> list[str]:
        """The run's final files (the last step's output) once it succeeded; empty before."""
        return list(self.output.output_files) if self.output else []

    def step(self, step_key: str) -> Step:
        for step in self.steps:
            if step.step_key == step_key:
                return step
        raise KeyError(step_key)


@dataclass(frozen=True)
class RunPage:
    """One page of `GET /api/v1/chains/runs`; pass `next_cursor` back for the next one."""

    data: list[Run]
    has_more: bool
    next_cursor: str | None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunPage:
        return cls(
            data=[Run.from_dict(r) for r in data.get("data") or []],
            has_more=bool(data.get("has_more")),
            next_cursor=data.get("next_cursor"),
        )


@dataclass(frozen=True)
class WebhookEvent:
    """A verified callback: `type` is `chain_run.succeeded|failed|canceled`, `run` the run resource as it ended."""

    id: str  # the webhook-id header: evt_<run id>, the same on every attempt
    type: str
    timestamp: datetime | None
    run: Run
    raw: dict[str, Any] = field(repr=False, compare=False)
