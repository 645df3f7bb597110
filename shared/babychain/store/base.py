"""The store interface: typed calls onto the SQL functions in `supabase/migrations`.

Adapters only implement `call(function, params)`; the psycopg adapter runs `select bc_x($1)` with one jsonb
parameter and the Supabase adapter runs the same function through PostgREST RPC. Everything above this file speaks
in plain dicts shaped like the table rows, and sees failures only as the store's errors (`babychain.store.errors`),
never a driver's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, cast

from babychain.store.rows import (
    ApiKeyListing,
    ApiKeyRow,
    CallbackClaim,
    CanceledRun,
    CreatedRun,
    ListedRunRow,
    PurgeResult,
    RunRow,
    StepCompletion,
    StepFailure,
    StepRow,
    SweepResult,
    TakenStep,
)

Row = dict[str, Any]  # a row without a declared shape (callback deliveries, health)


class Store(ABC):
    @abstractmethod
    def call(self, function: str, params: dict[str, Any]) -> Any:
        """Run one `bc_*` SQL function with a jsonb argument and return its decoded jsonb result.

        Raises `StoreUnavailable`, `StoreAuthError` or `StoreError` (babychain.store.errors) when the call fails.
        """

    def close(self) -> None:  # noqa: B027 - optional for adapters without resources
        pass

    # API keys
    def create_api_key(
        self,
        key_prefix: str,
        key_hash: str,
        name: str,
        scopes: list[str] | None = None,
        expires_at: str | None = None,
        rate_limit_per_minute: int | None = None,
    ) -> ApiKeyRow:
        return self.call(
            "bc_create_api_key",
            {
                "key_prefix": key_prefix,
                "key_hash": key_hash,
                "name": name,
                "scopes": scopes,
                "expires_at": expires_at,
                "rate_limit_per_minute": rate_limit_per_minute,
            },
        )

    def list_api_keys(self) -> list[ApiKeyListing]:
        return self.call("bc_list_api_keys", {})

    def revoke_api_key(self, reference: str) -> ApiKeyRow | None:
        return self.call("bc_revoke_api_key", {"key": reference})

    def rotate_api_key(self, reference: str, key_prefix: str, key_hash: str) -> ApiKeyRow | None:
        return self.call("bc_rotate_api_key", {"key": reference, "key_prefix": key_prefix, "key_hash": key_hash})

    def set_api_key_rate_limit(self, reference: str, rate_limit_per_minute: int | None) -> ApiKeyRow | None:
        """None as the limit: the key follows BABYCHAIN_RATE_LIMIT_PER_MINUTE again."""
        return self.call(
            "bc_set_api_key_rate_limit", {"key": reference, "rate_limit_per_minute": rate_limit_per_minute}
        )

    def authenticate_key(self, key_hash: str) -> ApiKeyRow | None:
        return self.call("bc_authenticate_key", {"key_hash": key_hash})

    # Runs
    def create_run(
        self, run: dict[str, Any], *, queue: str | None = None, message: dict[str, Any] | None = None
    ) -> CreatedRun:
        """With `queue` (a local queue in this database, `PostgresQueue.in_store`): a new run's first step message,
        `message` with the run's and the step's ids and seq, is sent in the same statement."""
        if queue is None:
            return self.call("bc_create_run", run)
        return self.call("bc_create_run_queued", {"run": run, "queue": queue, "message": message or {}})

    def get_run(self, run_id: str, owner_id: str | None = None) -> RunRow | None:
        return self.call("bc_get_run", {"run_id": run_id, "owner_id": owner_id})

    def list_runs(
        self,
        owner_id: str,
        *,
        limit: int,
        status: str | None = None,
        chain_slug: str | None = None,
        cursor: tuple[str, str] | None = None,
    ) -> list[ListedRunRow]:
        page = self.call(
            "bc_list_runs",
            {
                "owner_id": owner_id,
                "limit": limit,
                "status": status,
                "chain_slug": chain_slug,
                "cursor_created_at": cursor[0] if cursor else None,
                "cursor_id": cursor[1] if cursor else None,
            },
        )
        # Each run and step comes as an array of values, their names once per page (bytes and server time a page
        # no longer spends on keys: 20261202040000_list_rows_as_shown.sql); a run's last value is its steps.
        run_fields, step_fields = page["run_fields"], page["step_fields"]
        runs = []
        for values in page["runs"]:
            run = dict(zip(run_fields, values, strict=True))
            run["steps"] = [dict(zip(step_fields, step, strict=True)) for step in run["steps"]]
            runs.append(run)
        return cast(list[ListedRunRow], runs)

    def cancel_run(self, run_id: str) -> CanceledRun:
        return self.call("bc_cancel_run", {"run_id": run_id})

    # Steps
    def take_step(self, run_id: str, step_id: str, seq: int, *, submit_timeout_seconds: float) -> TakenStep | None:
        """What a step message does first, in one statement: claims the step when it is queued (the current seq, an
        active run, its producers done), or returns it to be checked when it is running with a submitted job."""
        return self.call(
            "bc_take_step",
            {"run_id": run_id, "step_id": step_id, "seq": seq, "submit_timeout_seconds": submit_timeout_seconds},
        )

    def record_submission(
        self,
        step_id: str,
        attempt: int,
        provider_job_id: str,
        provider_metadata: dict[str, Any],
        delay_seconds: float,
        *,
        provider: str | None = None,
        request_params: dict[str, Any] | None = None,
        input_files: list[str] | None = None,
    ) -> StepRow | None:
        return self.call(
            "bc_record_submission",
            {
                "step_id": step_id,
                "attempt": attempt,
                "provider_job_id": provider_job_id,
                "provider_metadata": provider_metadata,
                "delay_seconds": delay_seconds,
                "provider": provider,
                "request_params": request_params,
                "input_files": input_files,
            },
        )

    def defer_step(
        self, step_id: str, seq: int, delay_seconds: float, provider_metadata: dict[str, Any] | None = None
    ) -> StepRow | None:
        return self.call(
            "bc_defer_step",
            {"step_id": step_id, "seq": seq, "delay_seconds": delay_seconds, "provider_metadata": provider_metadata},
        )

    def retry_step(
        self,
        step_id: str,
        attempt: int,
        delay_seconds: float,
        error_code: str,
        error_message: str,
        provider_metadata: dict[str, Any] | None = None,
    ) -> StepRow | None:
        return self.call(
            "bc_retry_step",
            {
                "step_id": step_id,
                "attempt": attempt,
                "delay_seconds": delay_seconds,
                "error_code": error_code,
                "error_message": error_message,
                "provider_metadata": provider_metadata,
            },
        )

    def note_step(self, step_id: str, provider_metadata: dict[str, Any]) -> StepRow | None:
        return self.call("bc_note_step", {"step_id": step_id, "provider_metadata": provider_metadata})

    def get_step(self, step_id: str) -> StepRow | None:
        return self.call("bc_get_step", {"step_id": step_id})

    def complete_step(
        self,
        step_id: str,
        attempt: int,
        output_files: list[str],
        provider_metadata: dict[str, Any] | None = None,
        *,
        submission: dict[str, Any] | None = None,
        claim_next_timeout_seconds: float | None = None,
    ) -> StepCompletion | None:
        """`submission` ({provider, provider_job_id, request_params, input_files}): recorded in the same statement,
        for a provider that answered with the result itself. `claim_next_timeout_seconds`: also claim the dependent
        step (for that submit deadline), which the caller then submits."""
        timeout = claim_next_timeout_seconds
        claim_next = None if timeout is None else {"submit_timeout_seconds": timeout}
        return self.call(
            "bc_complete_step",
            {
                "step_id": step_id,
                "attempt": attempt,
                "output_files": output_files,
                "provider_metadata": provider_metadata,
                **(submission or {}),
                "claim_next": claim_next,
            },
        )

    def fail_step(
        self,
        step_id: str,
        error_code: str,
        error_message: str,
        *,
        attempt: int | None = None,
        seq: int | None = None,
        provider_metadata: dict[str, Any] | None = None,
    ) -> StepFailure | None:
        return self.call(
            "bc_fail_step",
            {
                "step_id": step_id,
                "attempt": attempt,
                "seq": seq,
                "error_code": error_code,
                "error_message": error_message,
                "provider_metadata": provider_metadata,
            },
        )

    def find_step_by_job(self, provider: str, provider_job_id: str) -> StepRow | None:
        return self.call("bc_find_step_by_job", {"provider": provider, "provider_job_id": provider_job_id})

    # Callbacks
    def claim_callback(
        self,
        run_id: str,
        *,
        lease_seconds: float,
        max_attempts: int,
        origin_limit: int = 0,
        defer_seconds: float = 1.0,
        holder: str = "",
    ) -> CallbackClaim | None:
        params = {
            "run_id": run_id,
            "stale_seconds": lease_seconds,
            "max_attempts": max_attempts,
            "origin_limit": origin_limit,
            "defer_seconds": defer_seconds,
            "holder": holder,
        }
        return self.call("bc_claim_callback", params)

    def end_callback_leases(self, host: str, live: list[str], max_attempts: int) -> list[str]:
        """Abandons the attempts held on `host` by processes not in `live` (their names as in the holder, after the
        `/`); returns the run ids due again."""
        params = {"host": host, "live_pids": live, "max_attempts": max_attempts}
        return self.call("bc_end_callback_leases", params)

    def record_callback_attempt(self, attempt: dict[str, Any]) -> Row:
        return self.call("bc_record_callback_attempt", attempt)

    def list_callback_deliveries(self, run_id: str) -> list[Row]:
        return self.call("bc_list_callback_deliveries", {"run_id": run_id})

    # Sweeper, webhooks, health
    def sweep(self, params: dict[str, Any]) -> SweepResult:
        return self.call("bc_sweep", params)

    def purge_expired_runs(
        self, retention_days: int, limit: int, receipt_days: int | None = None, *, receipt_limit: int | None = None
    ) -> PurgeResult:
        """Deletes one batch (at most `limit`) of finished runs older than the window, with everything of theirs, and
        of webhook receipts (at most `receipt_limit`, default `limit`) older than `receipt_days` (default: the runs'
        window). A window of 0 deletes nothing."""
        params: dict[str, Any] = {"retention_days": retention_days, "limit": limit}
        if receipt_days is not None:
            params["receipt_days"] = receipt_days
        if receipt_limit is not None:
            params["receipt_limit"] = receipt_limit
        return self.call("bc_purge_expired_runs", params)

    def record_webhook_receipt(self, provider: str, receipt_id: str) -> bool:
        return bool(self.call("bc_record_webhook_receipt", {"provider": provider, "receipt_id": receipt_id})["first"])

    def health(self) -> Row:
        return self.call("bc_health", {})
