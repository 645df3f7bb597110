"""The provider interface every adapter implements (local now; BFL, BytePlus and BabySea in their own issue)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal

from babychain.chains.catalog import ModelSpec


@dataclass(frozen=True)
class StepJob:
    run_id: str
    step_id: str
    step_key: str
    model: ModelSpec
    mode: str
    params: dict[str, Any]  # the request params as submitted: caller params plus the injected input
    idempotency_key: str  # stable per step attempt; providers that support one dedupe on it


@dataclass(frozen=True)
class Submission:
    job_id: str
    metadata: dict[str, Any] = field(default_factory=dict)


JobState = Literal["pending", "succeeded", "failed", "canceled"]


@dataclass(frozen=True)
class JobStatus:
    state: JobState
    output_urls: list[str] = field(default_factory=list)
    error_code: str | None = None
    error_message: str | None = None
    progress: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


class Provider(ABC):
    name: str

    @abstractmethod
    def submit(self, job: StepJob) -> Submission:
        """Starts a generation. Raises ProviderError (transient or permanent) on failure."""

    @abstractmethod
    def poll(self, job_id: str, metadata: dict[str, Any]) -> JobStatus:
        """Reads the job's state once. Raises ProviderError on failure to ask."""

    @abstractmethod
    def cancel(self, job_id: str, metadata: dict[str, Any]) -> bool:
        """Best effort: True when the provider accepted the cancel. Never raises for 'cannot cancel'."""
