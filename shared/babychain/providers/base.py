"""The provider interface every adapter implements (local now; BFL, BytePlus and BabySea in their own issue)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # for annotations only: handlers that never validate do not load the catalog (pydantic)
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
    step_kind: str = "image"  # "image" or "video"
    # The engine's own route for this provider's webhooks (with an unguessable per-step token where the provider
    # signs nothing), or None when webhooks are off; polling works either way.
    webhook_url: str | None = None


@dataclass(frozen=True)
class Submission:
    job_id: str
    metadata: dict[str, Any] = field(default_factory=dict)
    # Synchronous providers (Seedream) answer with the result itself; the step then completes without polling.
    output_urls: list[str] | None = None


JobState = Literal["pending", "succeeded", "failed", "canceled"]


@dataclass(frozen=True)
class JobStatus:
    state: JobState
    output_urls: list[str] = field(default_factory=list)
    error_code: str | None = None
    error_message: str | None = None
    progress: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WebhookNotice:
    """A verified provider webhook: which job it is about, and a per-delivery id for deduplication.

    The engine treats it as a hint to poll the job now; it never trusts the body for the result when the provider
    offers a fetch.
    """

    job_id: str
    receipt_id: str


class WebhookRejected(Exception):
    """A webhook whose signature, timestamp or shape does not check out. Nothing changes."""


class Provider(ABC):
    name: str
    # Whether the result files this provider hands back may be plain HTTP on loopback: only the built-in local
    # provider, which lives on this machine by design (even when the API is served beyond loopback).
    outputs_on_loopback: bool = False

    @abstractmethod
    def submit(self, job: StepJob) -> Submission:
        """Starts a generation. Raises ProviderError (transient or permanent) on failure."""

    @abstractmethod
    def poll(self, job_id: str, metadata: dict[str, Any]) -> JobStatus:
        """Reads the job's state once. Raises ProviderError on failure to ask."""

    @abstractmethod
    def cancel(self, job_id: str, metadata: dict[str, Any]) -> bool:
        """Best effort: True when the provider accepted the cancel. Never raises for 'cannot cancel'."""

    def parse_webhook(self, headers: dict[str, str], body: bytes) -> WebhookNotice | None:
        """Verifies a webhook delivery. Returns None for events that concern no job (e.g. a test ping).

        Raises WebhookRejected when it does not verify.
        """
        raise WebhookRejected(f"{self.name} sends no webhooks")
